// CUDA-on-CPU stand-in for <cuda_runtime_api.h> (tools/cuda_emu/README.md).
#pragma once
#include "../cuda_emu.h"
