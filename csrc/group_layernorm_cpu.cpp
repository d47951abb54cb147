// Grouped, strided LayerNorm on the CPU (OpenMP): the C++ implementation of pyengine::group_layernorm (backend
// "cpp" of pyengine.ops.group_layernorm.group_layernorm; the spec is group_layernorm_ref there).
//
//   out[m, g*K + j] = (x[m, c_g + j] - mean_g(m)) * rstd_g(m) * weight[g, j] + bias[g, j]
//   mean_g(m) = mean_j x[m, c_g + j],  rstd_g(m) = 1 / sqrt(mean_j (x[m, c_g + j] - mean_g(m))^2 + eps)
//
// x [M, K_x] with a unit column stride and any row stride (a row buffer holding several hypotheses side by side,
// or a column slice of a bigger one); in_cols = (c_0, ..., c_{G-1}) the column offset of each group's K-wide slice
// (any order, overlaps allowed: every group may read the same columns); weight / bias [G, K] in x's dtype; out
// [M, G*K] with a unit column stride and any row stride >= G*K (a new contiguous tensor, or a column block of a
// bigger buffer), not sharing memory with x (caught where ATen's overlap check can tell, else undefined).
// float32 / bfloat16 / float16. One pass over the rows replaces G F.layer_norm calls on strided slices (each of
// which ATen first copies to a contiguous tensor) and the torch.cat after them.
//
// Numerics (fp32 throughout, one rounding to the output dtype): per (row, group) slice, three sweeps over the K
// values, all in L1 after the first:
//   1. s = sum_j (x_j - p), p = x_0 (a pivot: with |mean| >> std the shifted values are small, often exact, so the
//      sum does not lose the deviations to the offset); mean = p + s / K;
//   2. q = sum_j (x_j - mean)^2 (two-pass variance: no cancellation), var = q / K (biased), rstd = 1/sqrt(var+eps);
//   3. y_j = ((x_j - mean) * rstd) * w_j + b_j, rounded once to the output dtype.
// The sums run in four 16-lane accumulators (64 values a step), then 16 at a time, then a masked tail (K % 16
// lanes, zeros beyond), combined (a0 + a1) + (a2 + a3) and reduced across lanes by halving: a fixed order that
// depends only on K, so every row gives the same bits whatever the thread split. The kernels are templates over the
// vector type (csrc/cpu_vec.h's KernelChoice): 16-float vectors on AVX-512 CPUs, 8-float on AVX2 / baseline ones,
// where a 16-lane accumulator is two vectors (lanes 0-7, 8-15) and every operation acts on the same lanes, so with
// -ffp-contract=off (setup.py) all widths give the same bits (tests/ops/test_group_layernorm.py compares them).
//
// fp32 slices are read from x and written straight into out. bf16 / fp16 slices are widened to an fp32 scratch
// row, normalised there into a second one, and narrowed into out (per-thread scratch, in L1: the extra traffic is
// loads / stores, not vector arithmetic, the bottleneck of a fused loop that converts on every sweep). bf16 -> fp32
// is a shift; fp32 -> bf16 rounds to nearest even (NaN -> 0x7fc0), bit-identical to c10::BFloat16, with integer
// ops, or on AVX512-BF16 CPUs with vcvtne2ps2bf16 (32 values an instruction; a block holding a NaN or an fp32
// denormal, which that instruction would keep the payload of / flush, takes the integer path: the two agree on all
// 2^32 inputs, checked exhaustively). fp16 uses csrc/cpu_vec.h's F16C rows. weight / bias are converted to fp32
// once per call.
//
// Work split: OpenMP threads take contiguous blocks of rows (M * t / T .. M * (t + 1) / T), all G groups of a row
// together; one thread below kMinParallelWork elements. Within a block, the AVX-512 kernels take rows two at a
// time through the sweeps (norm_slices<.., 2>: the latency of one row's reductions, divisions and square root
// overlaps the other row's work; per row the operations are those of one row alone). No allocation per row.
#include <ATen/MemoryOverlap.h>
#include <immintrin.h>
#include <omp.h>
#include <torch/types.h>  // not torch/extension.h: that adds torch/all.h and pybind11, 4x the compile time

#include "cpu_vec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {
// Own names (cpu_vec.h is shared and grows): everything below lives in gln, so nothing collides with its helpers.
namespace gln {

typedef float v16f __attribute__((vector_size(64)));
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef int32_t v8i __attribute__((vector_size(32)));

constexpr int64_t kMinParallelWork = 1 << 15;  // elements below which one thread beats the fork/join cost

struct Geometry {
  int64_t M, G, K, lda, ldo;
  const int64_t* in_cols;
  const float* w;  // [G, K] fp32
  const float* b;  // [G, K] fp32
  float eps;
};

// 16 lanes held as H = 64 / sizeof(V) vectors V (v16f: one; v8f: lanes 0-7, then 8-15): the unit every sweep
// below steps in, at both widths, so that a 16-float and an 8-float build do the same operations on the same lanes.
template <typename V>
struct L16 {
  static constexpr int H = 64 / sizeof(V), W = 16 / H;
  V h[H];
};

#define GLN_L16_OP(OP)                                                          \
  template <typename V>                                                         \
  PYENGINE_INLINE L16<V> operator OP(L16<V> a, const L16<V>& b) {               \
    for (int i = 0; i < L16<V>::H; ++i) a.h[i] = a.h[i] OP b.h[i];              \
    return a;                                                                   \
  }
GLN_L16_OP(+)
GLN_L16_OP(-)
GLN_L16_OP(*)
#undef GLN_L16_OP

template <typename V>
PYENGINE_INLINE L16<V> splat(float v) {
  L16<V> s;
  for (int i = 0; i < L16<V>::H; ++i) s.h[i] = V{} + v;
  return s;
}

template <typename V>
PYENGINE_INLINE L16<V> load16(const float* p) {
  L16<V> v;
  for (int i = 0; i < L16<V>::H; ++i) std::memcpy(&v.h[i], p + L16<V>::W * i, sizeof(V));  // unaligned loads
  return v;
}

template <typename V>
PYENGINE_INLINE void store16(float* p, const L16<V>& v) {
  for (int i = 0; i < L16<V>::H; ++i) std::memcpy(p + L16<V>::W * i, &v.h[i], sizeof(V));
}

// The first n < 16 values (zeros beyond) / store only the first n lanes.
template <typename V>
PYENGINE_INLINE L16<V> load_tail(const float* p, int64_t n) {
  L16<V> v = {};
  std::memcpy(&v, p, n * sizeof(float));
  return v;
}
template <typename V>
PYENGINE_INLINE void store_tail(float* p, const L16<V>& v, int64_t n) { std::memcpy(p, &v, n * sizeof(float)); }

// The lanes < n of v, zeros beyond (VI: the integer vector of V's width).
template <typename V, typename VI>
PYENGINE_INLINE L16<V> first_lanes(const L16<V>& v, int64_t n) {
  L16<V> out;
  for (int i = 0; i < L16<V>::H; ++i) {
    VI lane;
    for (int l = 0; l < L16<V>::W; ++l) lane[l] = L16<V>::W * i + l;
    out.h[i] = lane < static_cast<int32_t>(n) ? v.h[i] : V{};
  }
  return out;
}

// Sum of 16 lanes by halving (a fixed order, the same at both widths).
PYENGINE_INLINE float hsum8(v8f s8) {
  v4f c, d;
  std::memcpy(&c, &s8, sizeof c);
  std::memcpy(&d, reinterpret_cast<const char*>(&s8) + sizeof c, sizeof d);
  const v4f s4 = c + d;
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}
PYENGINE_INLINE float hsum(const L16<v8f>& v) { return hsum8(v.h[0] + v.h[1]); }
PYENGINE_INLINE float hsum(const L16<v16f>& v) {
  v8f a, b;
  std::memcpy(&a, &v.h[0], sizeof a);
  std::memcpy(&b, reinterpret_cast<const char*>(&v.h[0]) + sizeof a, sizeof b);
  return hsum8(a + b);
}

// R slices of one group (R rows: the same K, w, b): x[r][0..K) -> y[r][0..K) (see the header for the three
// sweeps). Each row's arithmetic is the same whatever R and V; R = 2 interleaves two rows so that one row's
// dependent chains (the accumulators, the lane reductions, the divisions and the square root) overlap the other's.
template <typename V, typename VI, int R>
PYENGINE_INLINE void norm_slices(const float* const* x, int64_t K, const float* __restrict w,
                                 const float* __restrict b, float eps, float* const* y) {
  using L = L16<V>;
  const int64_t body = K & ~int64_t{15}, tail = K - body;
  const L zero = {};
  const float kf = static_cast<float>(K);

  float pivot[R], mean[R], rstd[R];
  L a[R][4], c[R];
  for (int r = 0; r < R; ++r) {
    pivot[r] = x[r][0];
    c[r] = splat<V>(pivot[r]);
    a[r][0] = a[r][1] = a[r][2] = a[r][3] = zero;
  }
  int64_t i = 0;
  for (; i + 64 <= K; i += 64) {
    for (int r = 0; r < R; ++r) {
      a[r][0] = a[r][0] + (load16<V>(x[r] + i) - c[r]);
      a[r][1] = a[r][1] + (load16<V>(x[r] + i + 16) - c[r]);
      a[r][2] = a[r][2] + (load16<V>(x[r] + i + 32) - c[r]);
      a[r][3] = a[r][3] + (load16<V>(x[r] + i + 48) - c[r]);
    }
  }
  for (; i < body; i += 16) {
    for (int r = 0; r < R; ++r) a[r][0] = a[r][0] + (load16<V>(x[r] + i) - c[r]);
  }
  for (int r = 0; r < R; ++r) {
    if (tail) a[r][1] = a[r][1] + first_lanes<V, VI>(load_tail<V>(x[r] + body, tail) - c[r], tail);
    mean[r] = pivot[r] + hsum((a[r][0] + a[r][1]) + (a[r][2] + a[r][3])) / kf;
    c[r] = splat<V>(mean[r]);
    a[r][0] = a[r][1] = a[r][2] = a[r][3] = zero;
  }

  for (i = 0; i + 64 <= K; i += 64) {
    for (int r = 0; r < R; ++r) {
      const L d0 = load16<V>(x[r] + i) - c[r], d1 = load16<V>(x[r] + i + 16) - c[r];
      const L d2 = load16<V>(x[r] + i + 32) - c[r], d3 = load16<V>(x[r] + i + 48) - c[r];
      a[r][0] = a[r][0] + d0 * d0, a[r][1] = a[r][1] + d1 * d1;
      a[r][2] = a[r][2] + d2 * d2, a[r][3] = a[r][3] + d3 * d3;
    }
  }
  for (; i < body; i += 16) {
    for (int r = 0; r < R; ++r) {
      const L d = load16<V>(x[r] + i) - c[r];
      a[r][0] = a[r][0] + d * d;
    }
  }
  for (int r = 0; r < R; ++r) {
    if (tail) {
      const L d = first_lanes<V, VI>(load_tail<V>(x[r] + body, tail) - c[r], tail);
      a[r][1] = a[r][1] + d * d;
    }
    const float var = hsum((a[r][0] + a[r][1]) + (a[r][2] + a[r][3])) / kf;
    rstd[r] = 1.0f / std::sqrt(var + eps);
  }

  L rv[R];
  for (int r = 0; r < R; ++r) rv[r] = splat<V>(rstd[r]);
  for (i = 0; i < body; i += 16) {
    const L wv = load16<V>(w + i), bv = load16<V>(b + i);
    for (int r = 0; r < R; ++r) store16<V>(y[r] + i, ((load16<V>(x[r] + i) - c[r]) * rv[r]) * wv + bv);
  }
  if (tail) {
    const L wv = load_tail<V>(w + body, tail), bv = load_tail<V>(b + body, tail);
    for (int r = 0; r < R; ++r) {
      store_tail<V>(y[r] + body, ((load_tail<V>(x[r] + body, tail) - c[r]) * rv[r]) * wv + bv, tail);
    }
  }
}

// bf16 rows <-> fp32 rows: plain loops the compiler vectorises (x86-64-v4 brings AVX512BW's 16-bit lane moves).
#ifndef GLN_CONVERT_CLONES  // (overridable: a test harness builds one ISA variant at a time)
#define GLN_CONVERT_CLONES __attribute__((target_clones("arch=x86-64-v4", "avx2", "default")))
#endif

GLN_CONVERT_CLONES void bf16_row_to_float(const c10::BFloat16* __restrict src, int64_t n, float* __restrict dst) {
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = static_cast<uint32_t>(s[i]) << 16;
    std::memcpy(&dst[i], &u, 4);
  }
}

// Round to nearest even, NaN -> 0x7fc0 (c10::BFloat16's rule).
GLN_CONVERT_CLONES void float_row_to_bf16(const float* __restrict src, int64_t n, c10::BFloat16* __restrict dst) {
  uint16_t* d = reinterpret_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, &src[i], 4);
    const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    d[i] = static_cast<uint16_t>(nan ? 0x7fc0u : rounded);
  }
}

// The same with AVX512-BF16: vcvtne2ps2bf16 rounds to nearest even like the rule above, except that it treats fp32
// denormals as zero and keeps a NaN's payload; a block of 32 holding either goes to float_row_to_bf16.
__attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16"))) void float_row_to_bf16_avx512bf16(
    const float* __restrict src, int64_t n, c10::BFloat16* __restrict dst) {
  constexpr int kNanOrDenormal = 0x01 | 0x20 | 0x80;  // vfpclassps: QNaN, denormal, SNaN
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512 lo = _mm512_loadu_ps(src + i), hi = _mm512_loadu_ps(src + i + 16);
    if (_mm512_fpclass_ps_mask(lo, kNanOrDenormal) | _mm512_fpclass_ps_mask(hi, kNanOrDenormal)) {
      float_row_to_bf16(src + i, 32, dst + i);
    } else {
      _mm512_storeu_si512(dst + i, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  }
  if (i < n) float_row_to_bf16(src + i, n - i, dst + i);
}

typedef void (*NarrowBf16)(const float*, int64_t, c10::BFloat16*);

// Rows r0 .. r1, R at a time (then one), each with all G groups: load(r, m, k) returns the fp32 slice of group k
// in row m (converting it into scratch where needed) and points y[r] at where its result goes; store(r, m, k) then
// takes that result.
template <typename V, typename VI, int R, typename Load, typename Store>
PYENGINE_INLINE void rows_impl(const Geometry& g, int64_t r0, int64_t r1, float* const* y, Load load, Store store) {
  int64_t m = r0;
  if constexpr (R == 2) {
    for (; m + 2 <= r1; m += 2) {
      for (int64_t k = 0; k < g.G; ++k) {
        const float* x[2] = {load(0, m, k), load(1, m + 1, k)};
        norm_slices<V, VI, 2>(x, g.K, g.w + k * g.K, g.b + k * g.K, g.eps, y);
        store(0, m, k), store(1, m + 1, k);
      }
    }
  }
  for (; m < r1; ++m) {
    for (int64_t k = 0; k < g.G; ++k) {
      const float* x[1] = {load(0, m, k)};
      norm_slices<V, VI, 1>(x, g.K, g.w + k * g.K, g.b + k * g.K, g.eps, y);
      store(0, m, k);
    }
  }
}

// fp32: read from x, written straight into out.
template <typename V, typename VI, int R>
PYENGINE_INLINE void rows_f32(const Geometry& g, int64_t r0, int64_t r1, const float* x, float* out) {
  float* y[2] = {};
  rows_impl<V, VI, R>(
      g, r0, r1, y,
      [&](int r, int64_t m, int64_t k) {
        y[r] = out + m * g.ldo + k * g.K;
        return x + m * g.lda + g.in_cols[k];
      },
      [](int, int64_t, int64_t) {});
}

// bf16 / fp16: slices widened into xs[r] = scratch[r K, (r + 1) K), normalised into y[r] = scratch[(2 + r) K,
// (3 + r) K), narrowed into out.
template <typename V, typename VI, int R>
PYENGINE_INLINE void rows_bf16(const Geometry& g, int64_t r0, int64_t r1, const c10::BFloat16* x,
                               c10::BFloat16* out, float* scratch, NarrowBf16 narrow) {
  float* const y[2] = {scratch + 2 * g.K, scratch + 3 * g.K};
  rows_impl<V, VI, R>(
      g, r0, r1, y,
      [&](int r, int64_t m, int64_t k) {
        bf16_row_to_float(x + m * g.lda + g.in_cols[k], g.K, scratch + r * g.K);
        return static_cast<const float*>(scratch + r * g.K);
      },
      [&](int r, int64_t m, int64_t k) { narrow(y[r], g.K, out + m * g.ldo + k * g.K); });
}

template <typename V, typename VI, int R>
PYENGINE_INLINE void rows_f16(const Geometry& g, int64_t r0, int64_t r1, const c10::Half* x, c10::Half* out,
                              float* scratch) {
  float* const y[2] = {scratch + 2 * g.K, scratch + 3 * g.K};
  rows_impl<V, VI, R>(
      g, r0, r1, y,
      [&](int r, int64_t m, int64_t k) {
        half_row_to_float(x + m * g.lda + g.in_cols[k], g.K, scratch + r * g.K);
        return static_cast<const float*>(scratch + r * g.K);
      },
      [&](int r, int64_t m, int64_t k) { float_row_to_half(y[r], g.K, out + m * g.ldo + k * g.K); });
}

struct RowKernels {
  const char* name;
  void (*f32)(const Geometry&, int64_t, int64_t, const float*, float*);
  void (*bf16)(const Geometry&, int64_t, int64_t, const c10::BFloat16*, c10::BFloat16*, float*, NarrowBf16);
  void (*f16)(const Geometry&, int64_t, int64_t, const c10::Half*, c10::Half*, float*);
};

// One instantiation per target (ATTR empty: the build's own flags, SSE2 on x86-64). R: rows interleaved; 8-float
// kernels take one row at a time (two rows' 2 x 8 accumulators would fill all 16 AVX2 registers).
#define GLN_ROW_KERNELS(NAME, ATTR, V, VI, R)                                                                    \
  ATTR void rows_f32_##NAME(const Geometry& g, int64_t r0, int64_t r1, const float* x, float* out) {            \
    rows_f32<V, VI, R>(g, r0, r1, x, out);                                                                      \
  }                                                                                                              \
  ATTR void rows_bf16_##NAME(const Geometry& g, int64_t r0, int64_t r1, const c10::BFloat16* x,                 \
                             c10::BFloat16* out, float* scratch, NarrowBf16 narrow) {                           \
    rows_bf16<V, VI, R>(g, r0, r1, x, out, scratch, narrow);                                                    \
  }                                                                                                              \
  ATTR void rows_f16_##NAME(const Geometry& g, int64_t r0, int64_t r1, const c10::Half* x, c10::Half* out,      \
                            float* scratch) {                                                                    \
    rows_f16<V, VI, R>(g, r0, r1, x, out, scratch);                                                             \
  }                                                                                                              \
  constexpr RowKernels row_kernels_##NAME{#NAME, rows_f32_##NAME, rows_bf16_##NAME, rows_f16_##NAME};

GLN_ROW_KERNELS(avx512, PYENGINE_AVX512, v16f, v16i, 2)
GLN_ROW_KERNELS(avx2, PYENGINE_AVX2, v8f, v8i, 1)
GLN_ROW_KERNELS(baseline, , v8f, v8i, 1)
#undef GLN_ROW_KERNELS

KernelChoice<RowKernels>& row_kernels() {
  static KernelChoice<RowKernels> k("group_layernorm_cpu_kernels", &row_kernels_avx512, &row_kernels_avx2,
                                    &row_kernels_baseline);
  return k;
}

template <typename T>
void run(const Geometry& g, const T* x, T* out) {
  static const NarrowBf16 narrow_bf16 =
      __builtin_cpu_supports("avx512bf16") ? float_row_to_bf16_avx512bf16 : float_row_to_bf16;
  const int64_t work = g.M * g.G * g.K;
  const int64_t threads =
      work >= kMinParallelWork ? std::min<int64_t>(std::max(1, omp_get_max_threads()), g.M) : 1;
  const RowKernels& kern = row_kernels().get();
#pragma omp parallel num_threads(threads)
  {
    const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
    const int64_t r0 = g.M * t / nt, r1 = g.M * (t + 1) / nt;
    if constexpr (std::is_same_v<T, float>) {
      kern.f32(g, r0, r1, x, out);
    } else {
      std::vector<float> scratch(4 * g.K);  // xs[2], ys[2]: one per thread and call
      if constexpr (std::is_same_v<T, c10::BFloat16>) {
        kern.bf16(g, r0, r1, x, out, scratch.data(), narrow_bf16);
      } else {
        kern.f16(g, r0, r1, x, out, scratch.data());
      }
    }
  }
}

}  // namespace gln
}  // namespace

torch::Tensor group_layernorm_cpu(const torch::Tensor& x, const std::vector<int64_t>& in_cols,
                                  const torch::Tensor& weight, const torch::Tensor& bias, double eps,
                                  c10::optional<torch::Tensor> out) {
  TORCH_CHECK(x.device().is_cpu(), "group_layernorm_cpu: x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 2, "group_layernorm_cpu: x must be 2-D [M, K_x], got ", x.sizes());
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat || dtype == torch::kBFloat16 || dtype == torch::kHalf,
              "group_layernorm_cpu: x must be float32, bfloat16 or float16, got ", dtype);
  const int64_t M = x.size(0), K_x = x.size(1);
  TORCH_CHECK(K_x <= 1 || x.stride(1) == 1, "group_layernorm_cpu: x must have unit column stride, got strides ",
              x.strides());
  TORCH_CHECK(weight.dim() == 2, "group_layernorm_cpu: weight must be 2-D [G, K], got ", weight.sizes());
  const int64_t G = weight.size(0), K = weight.size(1);
  TORCH_CHECK(G >= 1 && K >= 1, "group_layernorm_cpu: weight must be [G, K] with G, K >= 1, got ", weight.sizes());
  TORCH_CHECK(bias.sizes() == weight.sizes(), "group_layernorm_cpu: bias must be [G, K] = ", weight.sizes(),
              ", got ", bias.sizes());
  for (const torch::Tensor* t : {&weight, &bias}) {
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == dtype, "group_layernorm_cpu: weight and bias must be "
                "CPU tensors of x's dtype ", dtype, ", got ", t->scalar_type(), " on ", t->device());
  }
  TORCH_CHECK(static_cast<int64_t>(in_cols.size()) == G, "group_layernorm_cpu: in_cols must hold G = ", G,
              " offsets, got ", in_cols.size());
  for (int64_t c : in_cols) {
    TORCH_CHECK(c >= 0 && c + K <= K_x, "group_layernorm_cpu: in_cols entries must lie in [0, K_x - K] = [0, ",
                K_x - K, "], got ", c);
  }
  TORCH_CHECK(std::isfinite(eps) && eps >= 0, "group_layernorm_cpu: eps must be finite and >= 0, got ", eps);
  torch::Tensor y;
  if (out.has_value()) {
    y = *out;
    TORCH_CHECK(y.device().is_cpu() && y.scalar_type() == dtype, "group_layernorm_cpu: out must be a CPU tensor "
                "of x's dtype ", dtype, ", got ", y.scalar_type(), " on ", y.device());
    TORCH_CHECK(y.dim() == 2 && y.size(0) == M && y.size(1) == G * K, "group_layernorm_cpu: out must be [M, G*K] "
                "= [", M, ", ", G * K, "], got ", y.sizes());
    TORCH_CHECK(G * K <= 1 || y.stride(1) == 1, "group_layernorm_cpu: out must have unit column stride, got "
                "strides ", y.strides());
    TORCH_CHECK(M <= 1 || y.stride(0) >= G * K, "group_layernorm_cpu: out's rows must not overlap (row stride >= "
                "G*K = ", G * K, "), got strides ", y.strides());
    at::assert_no_overlap(y, x);  // the overlaps ATen can tell cheaply; out must not share memory with x at all
  } else {
    y = torch::empty({M, G * K}, x.options().memory_format(c10::MemoryFormat::Contiguous));
  }
  if (M == 0) return y;
  const torch::Tensor wf = weight.to(torch::kFloat).contiguous();
  const torch::Tensor bf = bias.to(torch::kFloat).contiguous();
  const gln::Geometry g{M, G, K, x.stride(0), y.stride(0), in_cols.data(), wf.data_ptr<float>(),
                        bf.data_ptr<float>(), static_cast<float>(eps)};
  if (dtype == torch::kFloat) {
    gln::run<float>(g, x.data_ptr<float>(), y.data_ptr<float>());
  } else if (dtype == torch::kBFloat16) {
    gln::run<c10::BFloat16>(g, x.data_ptr<c10::BFloat16>(), y.data_ptr<c10::BFloat16>());
  } else {
    gln::run<c10::Half>(g, x.data_ptr<c10::Half>(), y.data_ptr<c10::Half>());
  }
  return y;
}

// The vector width group_layernorm_cpu runs: "avx512", "avx2" or "baseline". With a name, switches to those
// kernels first (they must run on this CPU). For tests and diagnosis: every width gives the same bits.
std::string group_layernorm_cpu_kernels(const std::string& use) { return gln::row_kernels().use(use); }
