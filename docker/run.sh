#!/usr/bin/env bash
# Runs the NPU image with the Ascend device and driver mounts of the deployment guide.
#   ASCEND_RT_VISIBLE_DEVICES=0,1,2,3 docker/run.sh /data/models/Qwen3-30B \
#       --served-model-name Qwen3-30B --tensor-parallel-size 4 --max-model-len 256000 ...
# Environment: IMAGE (default qwen3-serve:npu), MODELS_DIR (default /data/models),
# ASCEND_RT_VISIBLE_DEVICES (default 0-7).
set -euo pipefail

image="${IMAGE:-qwen3-serve:npu}"
models="${MODELS_DIR:-/data/models}"
visible="${ASCEND_RT_VISIBLE_DEVICES:-0,1,2,3,4,5,6,7}"

devices=(--device /dev/davinci_manager --device /dev/devmm_svm --device /dev/hisi_hdc)
IFS=',' read -r -a cards <<<"$visible"
for card in "${cards[@]}"; do
    devices+=(--device "/dev/davinci${card}")
done

exec docker run --rm -it --net=host \
    "${devices[@]}" \
    -v /usr/local/dcmi:/usr/local/dcmi \
    -v /usr/local/bin/npu-smi:/usr/local/bin/npu-smi \
    -v /usr/local/Ascend/driver/lib64/:/usr/local/Ascend/driver/lib64/ \
    -v /usr/local/Ascend/driver/version.info:/usr/local/Ascend/driver/version.info \
    -v /etc/ascend_install.info:/etc/ascend_install.info \
    -v "${models}:${models}" \
    -e ASCEND_RT_VISIBLE_DEVICES="$visible" \
    "$image" "$@"
