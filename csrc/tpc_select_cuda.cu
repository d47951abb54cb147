// DPC-kNN token selection on CUDA: the "cuda" implementation of pyengine::tpc_select (SPEC.md §2, TPC).
// Raw-pointer kernels and a raw-pointer host launcher, no torch headers (plain nvcc compiles this file; the torch
// glue is csrc/tpc_select_cuda_glue.cpp). Same algorithm and arithmetic as csrc/tpc_select_cpu.cpp and
// kernels/tpc_select.py, so the three return identical indices:
//   1. distance_kernel, grid (B, T, T) of 16 x 16 token-pair tiles (tiles below the diagonal exit): one pair per
//      thread, D_ij = sqrt(sum_c (x_ic - x_jc)^2) / sqrt(C) from direct differences, with 16 fp32 partial sums
//      (lane l takes the channels c = l mod 16, in order), the C mod 16 tail channels summed in fp64, the lanes
//      added to it in lane order in fp64, sqrt and the 1/sqrt(C) scale in fp64, rounded to fp32; stored at (i, j)
//      and, off the diagonal tiles, mirrored at (j, i), so D is symmetric bit for bit and D_ii == 0. Explicit
//      __f*_rn / __d*_rn intrinsics keep nvcc from contracting into FMAs (the C++ build uses -ffp-contract=off).
//   2. select_kernel, one block per sample (F <= kMaxTokens): rho_i = exp(-mean of the k smallest D_i.^2) (+ noise)
//      one warp per row; the sample's largest distance; delta_i = min over denser j of D_ij (else that maximum),
//      score = delta * rho (NaN -> -inf); rank by counting (higher score first, equal scores: lower index), the kept
//      flags, and each kept token written at its position in the ascending output (the number of kept before it).
// Non-finite features (docs/tpc.md): a NaN distance is stored as +inf (D_ii stays 0), a NaN score as -inf, so every
// comparison below is on numbers and the result is the same as the C++ / Triton / reference.
// The host launcher runs the batch in chunks of `scratch_batch` samples that share one [scratch_batch, F, F]
// distance scratch (the stream orders the chunks, so the scratch is reused safely).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

constexpr int kLanes = 16;    // partial sums per distance (csrc/tpc_select_cpu.cpp kLanes)
constexpr int kTile = 16;     // kTile x kTile token pairs per block, one per thread
constexpr int kChunk = 64;    // channels staged in shared memory per step (a multiple of kLanes)
constexpr int kMaxTokens = 1024;
constexpr int kSelectThreads = 256;
constexpr int kWarps = kSelectThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;

__global__ void __launch_bounds__(kTile * kTile) distance_kernel(const float* __restrict__ x, float* __restrict__ dist,
                                                                 int F, int C, double inv_sqrt_c) {
  const int b = blockIdx.x, ti = blockIdx.y, tj = blockIdx.z;
  if (tj < ti) return;  // upper triangle of tiles only; results are mirrored
  __shared__ float xi_s[kTile][kChunk + 1];  // +1: conflict-free column reads
  __shared__ float xj_s[kTile][kChunk + 1];
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kTile + tx;
  const int i = ti * kTile + ty, j = tj * kTile + tx;
  const float* xb = x + static_cast<size_t>(b) * F * C;
  float lane[kLanes];
#pragma unroll
  for (int l = 0; l < kLanes; ++l) lane[l] = 0.f;
  const int c_main = C - C % kLanes;
  for (int c0 = 0; c0 < c_main; c0 += kChunk) {
    const int width = min(kChunk, c_main - c0);  // a multiple of kLanes
    for (int e = tid; e < kTile * kChunk; e += kTile * kTile) {
      const int r = e / kChunk, c = e % kChunk;
      const int gi = ti * kTile + r, gj = tj * kTile + r;
      xi_s[r][c] = (gi < F && c < width) ? xb[static_cast<size_t>(gi) * C + c0 + c] : 0.f;
      xj_s[r][c] = (gj < F && c < width) ? xb[static_cast<size_t>(gj) * C + c0 + c] : 0.f;
    }
    __syncthreads();
    for (int c = 0; c < width; c += kLanes) {
#pragma unroll
      for (int l = 0; l < kLanes; ++l) {
        const float d = __fsub_rn(xi_s[ty][c + l], xj_s[tx][c + l]);
        lane[l] = __fadd_rn(lane[l], __fmul_rn(d, d));
      }
    }
    __syncthreads();
  }
  if (i >= F || j >= F) return;
  double acc = 0.0;
  for (int c = c_main; c < C; ++c) {  // tail channels first, in fp64 (as the C++)
    const double d = __dsub_rn(static_cast<double>(xb[static_cast<size_t>(i) * C + c]),
                               static_cast<double>(xb[static_cast<size_t>(j) * C + c]));
    acc = __dadd_rn(acc, __dmul_rn(d, d));
  }
#pragma unroll
  for (int l = 0; l < kLanes; ++l) acc = __dadd_rn(acc, static_cast<double>(lane[l]));
  float dij = static_cast<float>(__dmul_rn(__dsqrt_rn(acc), inv_sqrt_c));
  if (dij != dij) dij = INFINITY;  // NaN (a NaN feature, inf - inf): infinitely far (docs/tpc.md, non-finite)
  if (i == j) dij = 0.f;           // D_ii == 0 even for a non-finite token (as the C++)
  float* db = dist + static_cast<size_t>(b) * F * F;
  db[static_cast<size_t>(i) * F + j] = dij;
  // The mirror: a diagonal tile (ti == tj) computes (j, i) itself, bit for bit the same, so writing the mirror
  // there would store each element twice from two threads (a benign race, but one sanitizers report).
  if (ti != tj) db[static_cast<size_t>(j) * F + i] = dij;
}

// Lexicographic (value, index) minimum across a warp.
__device__ void warp_argmin(float& v, int& idx) {
  for (int off = 16; off > 0; off >>= 1) {
    const float ov = __shfl_xor_sync(kFullMask, v, off);
    const int oi = __shfl_xor_sync(kFullMask, idx, off);
    if (ov < v || (ov == v && oi < idx)) {
      v = ov;
      idx = oi;
    }
  }
}

__device__ float warp_min(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fminf(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}

__device__ float warp_max(float v) {
  for (int off = 16; off > 0; off >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}

__global__ void __launch_bounds__(kSelectThreads) select_kernel(const float* __restrict__ dist,
                                                                const float* __restrict__ noise,
                                                                int64_t* __restrict__ out, int F, int keep,
                                                                int n_rank, int k, int center, int index_ties) {
  __shared__ float rho_s[kMaxTokens];
  __shared__ float score_s[kMaxTokens];
  __shared__ int kept_s[kMaxTokens];
  __shared__ float max_s[kWarps];
  const int b = blockIdx.x;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const float* D = dist + static_cast<size_t>(b) * F * F;

  // 1. density, one warp per row: the k smallest distances, in ascending order, found as the successive
  //    lexicographic (value, index) minima above the previous pick; and the row maxima.
  float row_max = 0.f;
  for (int i = warp; i < F; i += kWarps) {
    const float* row = D + static_cast<size_t>(i) * F;
    float prev_v = -1.f;  // distances are >= 0
    int prev_j = -1;
    double mean_sq = 0.0;
    for (int t = 0; t < k; ++t) {
      float best_v = INFINITY;
      int best_j = kMaxTokens;
      for (int j = lane; j < F; j += 32) {
        const float v = row[j];
        const bool after_prev = v > prev_v || (v == prev_v && j > prev_j);
        if (after_prev && (v < best_v || (v == best_v && j < best_j))) {
          best_v = v;
          best_j = j;
        }
      }
      warp_argmin(best_v, best_j);
      const double m = static_cast<double>(best_v);
      mean_sq = __dadd_rn(mean_sq, __dmul_rn(m, m));
      prev_v = best_v;
      prev_j = best_j;
    }
    for (int j = lane; j < F; j += 32) row_max = fmaxf(row_max, row[j]);
    if (lane == 0) {
      float r = static_cast<float>(exp(-__ddiv_rn(mean_sq, static_cast<double>(k))));
      if (noise != nullptr) r = __fadd_rn(r, noise[static_cast<size_t>(b) * F + i]);
      rho_s[i] = r;
    }
  }
  row_max = warp_max(row_max);
  if (lane == 0) max_s[warp] = row_max;
  __syncthreads();
  float dist_max = 0.f;
  for (int w = 0; w < kWarps; ++w) dist_max = fmaxf(dist_max, max_s[w]);

  // 2. delta (nearest denser token, else the sample's largest distance) and score, one warp per row.
  for (int i = warp; i < F; i += kWarps) {
    const float* row = D + static_cast<size_t>(i) * F;
    const float ri = rho_s[i];
    float delta = dist_max;
    for (int j = lane; j < F; j += 32) {
      const float rj = rho_s[j];
      const bool denser = rj > ri || (index_ties && rj == ri && j < i);
      if (denser) delta = fminf(delta, row[j]);
    }
    delta = warp_min(delta);
    if (lane == 0) {
      const float s = __fmul_rn(delta, ri);  // NaN for inf * 0 (a non-finite token): ranks as -inf
      score_s[i] = s != s ? -INFINITY : s;
    }
  }
  __syncthreads();

  // 3. rank by counting; keep the n_rank best (the centre excluded from the ranking) and the centre.
  for (int i = threadIdx.x; i < F; i += kSelectThreads) {
    const float si = score_s[i];
    int rank = 0;
    for (int j = 0; j < F; ++j) {
      const float sj = score_s[j];
      rank += (j != center && (sj > si || (sj == si && j < i))) ? 1 : 0;
    }
    kept_s[i] = (i == center || (i != center && rank < n_rank)) ? 1 : 0;
  }
  __syncthreads();

  // 4. ascending output: a kept token goes to the position given by the number of kept tokens before it.
  for (int i = threadIdx.x; i < F; i += kSelectThreads) {
    if (!kept_s[i]) continue;
    int pos = 0;
    for (int j = 0; j < i; ++j) pos += kept_s[j];
    out[static_cast<size_t>(b) * keep + pos] = i;
  }
}

}  // namespace

// x [B, F, C] float32 contiguous (device), noise nullptr or [B, F] float32, dist_scratch [scratch_batch, F, F]
// float32 (the batch runs in chunks of scratch_batch samples), out [B, keep] int64; center -1 for none.
// Requires 1 <= keep <= F <= 1024, 1 <= k <= F, scratch_batch >= 1.
// Returns the launch error (cudaSuccess when every kernel was queued on `stream`).
cudaError_t tpc_select_cuda_launch(const float* x, const float* noise, float* dist_scratch, int scratch_batch,
                                   int64_t* out, int B, int F, int C, int keep, int k, int center, bool index_ties,
                                   cudaStream_t stream) {
  if (B <= 0) return cudaSuccess;
  if (F < 1 || F > kMaxTokens || C < 1 || keep < 1 || keep > F || k < 1 || k > F || center < -1 || center >= F ||
      scratch_batch < 1)
    return cudaErrorInvalidValue;
  const int tiles = (F + kTile - 1) / kTile;
  const double inv_sqrt_c = 1.0 / std::sqrt(static_cast<double>(C));
  const int n_rank = center >= 0 ? keep - 1 : keep;
  for (int b0 = 0; b0 < B; b0 += scratch_batch) {
    const int nb = std::min(scratch_batch, B - b0);
    distance_kernel<<<dim3(nb, tiles, tiles), dim3(kTile, kTile), 0, stream>>>(
        x + static_cast<size_t>(b0) * F * C, dist_scratch, F, C, inv_sqrt_c);
    cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
    select_kernel<<<nb, kSelectThreads, 0, stream>>>(
        dist_scratch, noise != nullptr ? noise + static_cast<size_t>(b0) * F : nullptr,
        out + static_cast<size_t>(b0) * keep, F, keep, n_rank, k, center, index_ties ? 1 : 0);
    err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}
