// Kernels that misuse barriers and launch limits on purpose: tests/cuda_emu/test_cuda_emulated.py checks that the emulator
// turns each into a clear error (and neither hangs nor passes). Valid CUDA syntax, built through rewrite.py like
// the csrc/*.cu files.
#include <cuda_runtime.h>

namespace {

__global__ void early_exit_before_barrier(float* out) {  // half the block returns, the rest waits forever
  if (threadIdx.x >= 64) return;
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

__global__ void divergent_barriers(float* out) {  // two different __syncthreads in divergent code
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

__global__ void partial_warp_shuffle(float* out) {  // lanes 16..31 are named in the mask but never call
  float v = static_cast<float>(threadIdx.x);
  if ((threadIdx.x & 31) < 16) v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

__global__ void shuffle_sum(float* out) {  // a correct warp reduction (xor butterfly), then a block barrier
  __shared__ float part[32];
  float v = static_cast<float>(threadIdx.x);
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const float down = __shfl_down_sync(0xffffffffu, static_cast<float>(threadIdx.x), 1);
  const float bcast = __shfl_sync(0xffffffffu, static_cast<float>(threadIdx.x), 3);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  out[threadIdx.x] = part[threadIdx.x >> 5] + 1000.f * down + 1e6f * bcast;
}

__global__ void dynamic_smem(float* out, int n) {  // writes and reads back its dynamic shared memory
  extern __shared__ float buf[];
  for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = static_cast<float>(i + blockIdx.x);
  __syncthreads();
  out[blockIdx.x] = buf[n - 1];
}

}  // namespace

// which: 0 early exit, 1 divergent barriers, 2 partial-warp shuffle, 3 shuffle_sum (valid), 4 1025 threads,
// 5 49 KiB of dynamic shared memory without the opt-in, 6 the same with it (valid), 7 a zero grid.
// out needs 1024 floats. Returns the launch error.
int emu_selftest_launch(int which, float* out) {
  switch (which) {
    case 0: early_exit_before_barrier<<<1, 128>>>(out); break;
    case 1: divergent_barriers<<<1, 64>>>(out); break;
    case 2: partial_warp_shuffle<<<1, 64>>>(out); break;
    case 3: shuffle_sum<<<1, 64>>>(out); break;
    case 4: shuffle_sum<<<1, 1025>>>(out); break;
    case 5: dynamic_smem<<<2, 128, 49 * 1024>>>(out, 49 * 256); break;
    case 6:
      cudaFuncSetAttribute(dynamic_smem, cudaFuncAttributeMaxDynamicSharedMemorySize, 49 * 1024);
      dynamic_smem<<<2, 128, 49 * 1024>>>(out, 49 * 256);
      break;
    case 7: shuffle_sum<<<0, 64>>>(out); break;
    default: return static_cast<int>(cudaErrorInvalidValue);
  }
  return static_cast<int>(cudaGetLastError());
}
