#!/usr/bin/env bash
# Builds kernels/ascendc for the NPU with CANN's toolchain (CMakeLists.txt) and installs
# libqwen3_ascendc_kernels.so under OUT/lib. Usage: build-atlas.sh [OUT]  (default
# kernels/build-atlas); SOC_VERSION picks the chip (default Ascend910B2). Needs CANN's
# set_env.sh sourced (ASCEND_TOOLKIT_HOME); an Atlas machine only.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-$here/build-atlas}
: "${ASCEND_TOOLKIT_HOME:?is unset: source set_env.sh from CANN first}"
cmake -S "$here" -B "$out/build" \
  -DSOC_VERSION="${SOC_VERSION:-Ascend910B2}" \
  -DASCEND_CANN_PACKAGE_PATH="$ASCEND_TOOLKIT_HOME" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_INSTALL_PREFIX="$out"
cmake --build "$out/build" -j "$(nproc)"
cmake --install "$out/build"
echo "built $out/lib/libqwen3_ascendc_kernels.so"
