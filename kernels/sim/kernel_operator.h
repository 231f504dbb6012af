// The AscendC API subset our kernels use, implemented on the CPU (the sim). Kernels include
// "kernel_operator.h" as they do under CANN; this directory is on the include path only for
// the CPU build, never for bisheng.
#pragma once

#include "sim_core.h"
#include "sim_memory.h"
#include "sim_ops.h"
