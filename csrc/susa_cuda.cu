// Fused SUSA on CUDA (SPEC.md §3): raw-pointer kernels and a raw-pointer host launcher, no torch headers, so plain
// nvcc compiles this file (CI compile-checks it for sm_90). The torch glue is csrc/susa_cuda_glue.cpp.
//
// Rows r carry the gate, stripe positions s the softmax: H-wise r = h, s = w; W-wise r = w, s = h.
//   susa_stripe_kernel, one block per (n, c): the [R, S] plane goes to shared memory (first read of x),
//       q[s] = softmax_s(mean_w[c] * sum_r x[r, s] g[r] / R + mean_b[c]), a[r] = sum_s x[r, s] q[s] -> scratch.
//   susa_gate_kernel, one block per (n, r): z = conv_w @ a[:, r] + conv_b (a warp per output channel),
//       LayerNorm over C (eps 1e-5) and sigmoid, or z itself without LN; written over the scratch in place.
//   susa_apply_kernel, elementwise in x's memory order: out[n, out_index[c], h, w] = x * gate (second read of x);
//       an out_index[c] outside [0, C_out) is skipped (a device-side bound: no host sync, no out-of-bounds write).
// All arithmetic is fp32; x and out may have any strides (channel slices, channels-last).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace {

constexpr int kStripeThreads = 256;
constexpr int kGateThreads = 128;
constexpr int kApplyThreads = 256;
constexpr float kLnEps = 1e-5f;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block; every thread gets the result. `red` holds one float per warp.
__device__ float block_sum(float v, float* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // red may still be read from a previous call
  if (lane == 0) red[warp] = v;
  __syncthreads();
  float t = lane < nwarps ? red[lane] : 0.0f;
  return warp_sum(t);
}

template <typename T>
__global__ void susa_stripe_kernel(const T* __restrict__ x, const float* __restrict__ gw,
                                   const float* __restrict__ mw, const float* __restrict__ mb,
                                   float* __restrict__ a, int C, int H, int W, long long sxn, long long sxc,
                                   long long sxh, long long sxw, bool h_wise) {
  extern __shared__ float smem[];
  const int R = h_wise ? H : W, S = h_wise ? W : H;
  float* plane = smem;        // [R, S]
  float* q = smem + R * S;    // [S]
  const long long nc = blockIdx.x;
  const long long n = nc / C, c = nc % C;
  const T* xp = x + n * sxn + c * sxc;
  // Read in (h, w) order, w fastest: coalesced for NCHW in both directions.
  for (int i = threadIdx.x; i < H * W; i += blockDim.x) {
    const int h = i / W, w = i % W;
    const float v = to_float(xp[h * sxh + w * sxw]);
    plane[h_wise ? h * S + w : w * S + h] = v;
  }
  __syncthreads();
  const float scale = mw[c] / static_cast<float>(R), shift = mb[c];
  for (int s = threadIdx.x; s < S; s += blockDim.x) {
    float acc = 0.0f;
    for (int r = 0; r < R; ++r) acc += plane[r * S + s] * gw[r];
    q[s] = acc * scale + shift;
  }
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  if (warp == 0) {  // softmax over S (<= 128) by one warp
    float m = -INFINITY;
    for (int s = lane; s < S; s += 32) m = fmaxf(m, q[s]);
    m = warp_max(m);
    float sum = 0.0f;
    for (int s = lane; s < S; s += 32) {
      const float e = __expf(q[s] - m);
      q[s] = e;
      sum += e;
    }
    sum = warp_sum(sum);
    const float inv = 1.0f / sum;
    __syncwarp();
    for (int s = lane; s < S; s += 32) q[s] *= inv;
  }
  __syncthreads();
  for (int r = warp; r < R; r += nwarps) {  // a warp per row
    float acc = 0.0f;
    for (int s = lane; s < S; s += 32) acc += plane[r * S + s] * q[s];
    acc = warp_sum(acc);
    if (lane == 0) a[nc * R + r] = acc;
  }
}

__global__ void susa_gate_kernel(float* __restrict__ a, const float* __restrict__ cw, const float* __restrict__ cb,
                                 const float* __restrict__ lw, const float* __restrict__ lb, int C, int R) {
  extern __shared__ float smem[];
  float* col = smem;      // [C]
  float* z = smem + C;    // [C]
  float* red = smem + 2 * C;  // [32]
  const long long n = blockIdx.x / R;
  const int r = blockIdx.x % R;
  float* ap = a + n * C * R + r;
  for (int c = threadIdx.x; c < C; c += blockDim.x) col[c] = ap[static_cast<long long>(c) * R];
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  for (int d = warp; d < C; d += nwarps) {  // a warp per output channel: coalesced rows of conv_w
    const float* wrow = cw + static_cast<long long>(d) * C;
    float acc = 0.0f;
    for (int c = lane; c < C; c += 32) acc += wrow[c] * col[c];
    acc = warp_sum(acc);
    if (lane == 0) z[d] = acc + cb[d];
  }
  __syncthreads();
  if (lw != nullptr) {
    float part = 0.0f;
    for (int d = threadIdx.x; d < C; d += blockDim.x) part += z[d];
    const float mu = block_sum(part, red) / static_cast<float>(C);
    part = 0.0f;
    for (int d = threadIdx.x; d < C; d += blockDim.x) part += (z[d] - mu) * (z[d] - mu);
    const float rstd = rsqrtf(block_sum(part, red) / static_cast<float>(C) + kLnEps);
    for (int d = threadIdx.x; d < C; d += blockDim.x) {
      const float y = (z[d] - mu) * rstd * lw[d] + lb[d];
      ap[static_cast<long long>(d) * R] = 1.0f / (1.0f + __expf(-y));
    }
  } else {
    for (int d = threadIdx.x; d < C; d += blockDim.x) ap[static_cast<long long>(d) * R] = z[d];
  }
}

template <typename T>
__global__ void susa_apply_kernel(const T* __restrict__ x, const float* __restrict__ gate, T* __restrict__ out,
                                  const int32_t* __restrict__ out_index, long long total, int C, int C_out, int H,
                                  int W,
                                  long long sxn, long long sxc, long long sxh, long long sxw, long long son,
                                  long long soc, long long soh, long long sow, bool h_wise, bool channels_last) {
  const int R = h_wise ? H : W;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    long long n, c, h, w;
    if (channels_last) {  // walk x in its memory order
      c = i % C;
      w = (i / C) % W;
      h = (i / (static_cast<long long>(C) * W)) % H;
      n = i / (static_cast<long long>(C) * W * H);
    } else {
      w = i % W;
      h = (i / W) % H;
      c = (i / (static_cast<long long>(W) * H)) % C;
      n = i / (static_cast<long long>(W) * H * C);
    }
    // Device-side bound: an out_index outside [0, C_out) is skipped, never written out of bounds (the host checks
    // the range only for CPU tensors: a check here would need a host sync). Skipped, not clamped: clamping would
    // overwrite another channel's result.
    const int oc = out_index[c];
    if (oc < 0 || oc >= C_out) continue;
    const float g = gate[(n * C + c) * R + (h_wise ? h : w)];
    const float v = to_float(x[n * sxn + c * sxc + h * sxh + w * sxw]) * g;
    out[n * son + static_cast<long long>(oc) * soc + h * soh + w * sow] = from_float<T>(v);
  }
}

template <typename T>
cudaError_t launch(const void* x, void* out, const int32_t* out_index, const float* gw, const float* mw,
                   const float* mb, const float* cw, const float* cb, const float* lw, const float* lb,
                   float* scratch, long long N, long long C, long long C_out, long long H, long long W,
                   const long long* xs,
                   const long long* os, bool h_wise, bool channels_last, cudaStream_t stream) {
  const long long R = h_wise ? H : W;
  const size_t stripe_smem = static_cast<size_t>(H * W + (h_wise ? W : H)) * sizeof(float);
  if (stripe_smem > 48 * 1024) {
    const cudaError_t err = cudaFuncSetAttribute(susa_stripe_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                 static_cast<int>(stripe_smem));
    if (err != cudaSuccess) return err;
  }
  susa_stripe_kernel<T><<<static_cast<unsigned>(N * C), kStripeThreads, stripe_smem, stream>>>(
      static_cast<const T*>(x), gw, mw, mb, scratch, static_cast<int>(C), static_cast<int>(H), static_cast<int>(W),
      xs[0], xs[1], xs[2], xs[3], h_wise);
  const size_t gate_smem = static_cast<size_t>(2 * C + 32) * sizeof(float);
  if (gate_smem > 48 * 1024) {
    const cudaError_t err =
        cudaFuncSetAttribute(susa_gate_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(gate_smem));
    if (err != cudaSuccess) return err;
  }
  susa_gate_kernel<<<static_cast<unsigned>(N * R), kGateThreads, gate_smem, stream>>>(
      scratch, cw, cb, lw, lb, static_cast<int>(C), static_cast<int>(R));
  const long long total = N * C * H * W;
  long long blocks = (total + kApplyThreads - 1) / kApplyThreads;
  if (blocks > 65535LL * 32) blocks = 65535LL * 32;  // grid-stride loop covers the rest
  susa_apply_kernel<T><<<static_cast<unsigned>(blocks), kApplyThreads, 0, stream>>>(
      static_cast<const T*>(x), scratch, static_cast<T*>(out), out_index, total, static_cast<int>(C),
      static_cast<int>(C_out), static_cast<int>(H), static_cast<int>(W), xs[0], xs[1], xs[2], xs[3], os[0], os[1],
      os[2], os[3], h_wise, channels_last);
  return cudaGetLastError();
}

}  // namespace

// Raw-pointer host launcher. dtype: 0 float32, 1 float16, 2 bfloat16 (x and out); params fp32 contiguous
// (conv_w [C, C]; lw = lb = nullptr: LN off); scratch fp32 [N, C, R]; out has C_out channels (an out_index
// element outside [0, C_out) is skipped); xs / os: the 4 strides of x / out in elements; stream: a cudaStream_t.
// Preconditions (checked by the caller): N*C and N*R fit a grid, H * W + max(H, W) floats fit in shared memory.
// Returns the cudaError_t of the launches (0 on success).
int susa_cuda_launch(int dtype, const void* x, void* out, const int32_t* out_index, const float* gw,
                     const float* mw, const float* mb, const float* cw, const float* cb, const float* lw,
                     const float* lb, float* scratch, long long N, long long C, long long C_out, long long H,
                     long long W, const long long* xs, const long long* os, bool h_wise, bool channels_last,
                     void* stream) {
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case 0:
      return launch<float>(x, out, out_index, gw, mw, mb, cw, cb, lw, lb, scratch, N, C, C_out, H, W, xs, os,
                           h_wise, channels_last, st);
    case 1:
      return launch<__half>(x, out, out_index, gw, mw, mb, cw, cb, lw, lb, scratch, N, C, C_out, H, W, xs, os,
                            h_wise, channels_last, st);
    case 2:
      return launch<__nv_bfloat16>(x, out, out_index, gw, mw, mb, cw, cb, lw, lb, scratch, N, C, C_out, H, W, xs,
                                   os, h_wise, channels_last, st);
    default:
      return static_cast<int>(cudaErrorInvalidValue);
  }
}
