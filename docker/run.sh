#!/usr/bin/env bash
# Runs the NPU image (docker/Dockerfile) with the device and driver mounts of the Ascend
# deployment guide; every argument goes to qwen3-serve.
#
#   ASCEND_RT_VISIBLE_DEVICES=0,1,2,3 docker/run.sh /data/models/Qwen3-30B \
#       --served-model-name Qwen3-30B --tensor-parallel-size 4 --max-model-len 40960
#   ASCEND_RT_VISIBLE_DEVICES=4-7 docker/run.sh /data/models/Qwen3-32B \
#       --config /usr/local/share/qwen3-serve/configs/qwen3-32b-910b.toml
#
# Environment:
#   ASCEND_RT_VISIBLE_DEVICES  host NPUs to give the container: a list of ids and ranges
#                              ("0,1,2,3", "4-7", "0-1,6"), default 0-7
#   IMAGE                      default qwen3-serve:npu
#   MODELS_DIR                 host directory mounted at the same path, default /data/models
#   NAME                       container name (default: docker picks one)
#   DOCKER                     the client to run, default docker
#   DOCKER_RUN_ARGS            extra `docker run` arguments, split on spaces (e.g. "-d")
#   CONTAINER_VISIBLE_DEVICES  ASCEND_RT_VISIBLE_DEVICES inside the container, see below
#
# Device numbering: a container that is given /dev/davinci4 and /dev/davinci5 sees them as NPUs
# 0 and 1 (in host order), so the host's ids would name devices the container does not have.
# Inside, ASCEND_RT_VISIBLE_DEVICES is therefore 0..N-1 for the N cards given (override with
# CONTAINER_VISIBLE_DEVICES where a driver numbers them otherwise).
set -euo pipefail

image="${IMAGE:-qwen3-serve:npu}"
models="${MODELS_DIR:-/data/models}"
docker_bin="${DOCKER:-docker}"
visible="${ASCEND_RT_VISIBLE_DEVICES:-0-7}"

# Host card ids from the list, ranges expanded, sorted, each once.
cards=()
IFS=',' read -r -a parts <<<"${visible// /}"
for part in "${parts[@]}"; do
    if [[ $part =~ ^([0-9]+)-([0-9]+)$ ]]; then
        for ((i = 10#${BASH_REMATCH[1]}; i <= 10#${BASH_REMATCH[2]}; i++)); do cards+=("$i"); done
    elif [[ $part =~ ^[0-9]+$ ]]; then
        cards+=("$((10#$part))")
    else
        echo "run.sh: ASCEND_RT_VISIBLE_DEVICES=$visible: '$part' is not a card id or a range" >&2
        exit 2
    fi
done
if [ "${#cards[@]}" -eq 0 ]; then
    echo "run.sh: ASCEND_RT_VISIBLE_DEVICES=$visible names no card" >&2
    exit 2
fi
mapfile -t cards < <(printf '%s\n' "${cards[@]}" | sort -n -u)

devices=(--device /dev/davinci_manager --device /dev/devmm_svm --device /dev/hisi_hdc)
inside=()
for i in "${!cards[@]}"; do
    devices+=(--device "/dev/davinci${cards[$i]}")
    inside+=("$i")
done
inside_list="$(
    IFS=,
    echo "${inside[*]}"
)"
inside_list="${CONTAINER_VISIBLE_DEVICES:-$inside_list}"

opts=(--rm --init --net=host)
# Interactive only with a terminal (CI, systemd and pipes have none, and -t fails there).
if [ -t 0 ] && [ -t 1 ]; then
    opts+=(-it)
fi
if [ -n "${NAME-}" ]; then
    opts+=(--name "$NAME")
fi
# The device nodes belong to the host's HwHiAiUser group: let the image's non-root user in
# whatever GID the image was built with.
if command -v getent >/dev/null && gid="$(getent group HwHiAiUser | cut -d: -f3)" && [ -n "$gid" ]; then
    opts+=(--group-add "$gid")
fi
# Hub downloads, auth and logging settings pass through when set (by name: values stay out of
# the process list).
for var in HF_TOKEN HF_ENDPOINT HF_HUB_OFFLINE VLLM_USE_MODELSCOPE MODELSCOPE_ENDPOINT VLLM_API_KEY RUST_LOG; do
    if [ -n "${!var+set}" ]; then
        opts+=(-e "$var")
    fi
done
extra=()
if [ -n "${DOCKER_RUN_ARGS-}" ]; then
    read -r -a extra <<<"$DOCKER_RUN_ARGS"
fi

exec "$docker_bin" run "${opts[@]}" \
    "${devices[@]}" \
    -v /usr/local/dcmi:/usr/local/dcmi \
    -v /usr/local/bin/npu-smi:/usr/local/bin/npu-smi \
    -v /usr/local/Ascend/driver/lib64/:/usr/local/Ascend/driver/lib64/ \
    -v /usr/local/Ascend/driver/version.info:/usr/local/Ascend/driver/version.info \
    -v /etc/ascend_install.info:/etc/ascend_install.info \
    -v "${models}:${models}" \
    -e ASCEND_RT_VISIBLE_DEVICES="$inside_list" \
    ${extra[@]+"${extra[@]}"} \
    "$image" "$@"
