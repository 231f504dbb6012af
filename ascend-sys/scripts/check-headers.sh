#!/usr/bin/env bash
# Cross-checks ascend-sys's hand-written ACL and HCCL declarations against real CANN
# headers with bindgen (`cargo test -p ascend-sys --features bindgen`).
#
# The headers come from the PyPI `torch-npu` wheel, which ships CANN's acl/*.h and
# hccl/*.h (not the aclnn operator headers: those are compared where CANN is installed,
# with ASCEND_TOOLKIT_HOME set and no ASCEND_SYS_HEADERS). They are extracted into a
# temporary directory that is deleted on exit: CANN's headers are under a licence that
# forbids copying them into this repository.
#
# Usage: ascend-sys/scripts/check-headers.sh        (TORCH_NPU_VERSION=2.14.0 by default)
set -euo pipefail

TORCH_NPU_VERSION="${TORCH_NPU_VERSION:-2.14.0}"
crate_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# bindgen needs libclang (and clang's builtin headers, which libclang-dev pulls in).
have_libclang() {
    [ -n "${LIBCLANG_PATH:-}" ] && return 0
    # libclang itself, not libclang-cpp (another package some tools pull in, no use to bindgen).
    local d
    for d in /usr/lib/llvm-*/lib /usr/lib/*-linux-gnu; do
        compgen -G "$d/libclang.so*" >/dev/null && return 0
        compgen -G "$d/libclang-[0-9]*.so*" >/dev/null && return 0
    done
    return 1
}
if ! have_libclang; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "== installing libclang-dev (bindgen needs libclang)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-dev >/dev/null
    else
        echo "error: bindgen needs libclang: install libclang-dev (Debian/Ubuntu) or set LIBCLANG_PATH" >&2
        exit 1
    fi
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# Headers are platform-independent: pin one wheel so the result does not depend on the
# host's Python or architecture.
echo "== downloading torch-npu==${TORCH_NPU_VERSION} (headers only are used)"
python3 -m pip download --quiet --no-deps --only-binary=:all: \
    --platform manylinux_2_28_x86_64 --python-version 3.11 \
    -d "$tmp/wheel" "torch-npu==${TORCH_NPU_VERSION}"
wheel="$(ls "$tmp"/wheel/torch_npu-*.whl)"

echo "== extracting acl/*.h and hccl/*.h into $tmp/include-root"
python3 - "$wheel" "$tmp/include-root" <<'PY'
import sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
keep = ("torch_npu/include/acl/", "torch_npu/include/third_party/hccl/inc/hccl/")
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.startswith(keep) and n.endswith(".h")]
    if not names:
        sys.exit("no ACL/HCCL headers in " + wheel)
    z.extractall(dest, names)
print(f"{len(names)} headers")
PY

# The wheel's hccl.h includes "third_party/hccl/inc/hccl/hccl_types.h" and <acl/acl.h>,
# so the include root is torch_npu/include.
export ASCEND_SYS_HEADERS="$tmp/include-root/torch_npu/include"
echo "== cargo test -p ascend-sys --features bindgen (ASCEND_SYS_HEADERS=$ASCEND_SYS_HEADERS)"
cargo test --manifest-path "$crate_dir/Cargo.toml" -p ascend-sys --features bindgen -- --nocapture
