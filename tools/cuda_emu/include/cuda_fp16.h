// CUDA-on-CPU stand-in for <cuda_fp16.h> (tools/cuda_emu/README.md).
#pragma once
#include "../cuda_emu.h"
