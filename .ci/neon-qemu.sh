#!/usr/bin/env bash
# The CPU backend's NEON kernels (Kunpeng hosts of Atlas servers) against their scalar twins,
# cross-built for aarch64 and run under qemu-user. Needs the rust aarch64 target, a cross gcc
# (linker) and qemu; installs the last two from Debian when it can, else says why it skips.
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    echo "skipped: the rust target $target is not installed"
    exit 0
fi
if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        pkgs="qemu-user gcc-aarch64-linux-gnu libc6-dev-arm64-cross"
        # A fresh container may have no package lists yet; a failed install means a skip.
        apt-get install -y -q $pkgs >/dev/null 2>&1 ||
            { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q $pkgs >/dev/null 2>&1; } ||
            true
    fi
fi
if ! command -v qemu-aarch64 >/dev/null || ! command -v aarch64-linux-gnu-gcc >/dev/null; then
    echo "skipped: qemu-aarch64 or aarch64-linux-gnu-gcc is missing and could not be installed"
    exit 0
fi
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu"
cargo clippy -p qwen3-backend --all-targets --locked --target "$target" -- -D warnings
# The backend's unit tests check every level the CPU has (NEON and scalar here) on odd sizes.
cargo test -p qwen3-backend --lib --locked --target "$target"
