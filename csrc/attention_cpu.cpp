// Multi-head attention on the CPU (OpenMP): the C++ implementation of pyengine::attention_cpp (backend "cpp" of
// pyengine.ops.attention.attention; the spec is attention_ref there).
//
//   out[b, i, g, h, :] = softmax_j((q[b, g, i, h, :] . k[b, g, j, h, :]) * D**-0.5) @ v[b, g, :, h, :]
//
// q [B, G, Nq, H, D], k / v [B, G, Nk, H, D]: any strides with a unit last-dim stride (views of a fused QKV
// buffer; q may have batch stride 0), float32 / bfloat16 / float16; out a new contiguous [B, Nq, G, H, D] in the
// input dtype. All math is fp32: inputs are converted on load, scores are fp32, the softmax subtracts the row
// maximum, P @ V accumulates in fp32 and the row is divided by the softmax sum and rounded once at the end.
//
// Work split: a work item is (b, g, h, a block of query rows); the blocks are only cut when B*G*H alone gives too
// few items for the threads. Per item, in per-thread scratch (allocated once per call, none per row):
//   K is converted to fp32 and transposed to Kt [D, ldk] (ldk = Nk rounded up to 8, zero padded), so that the
//     score loop runs along the keys in 16- and 8-float vectors;
//   V is converted to fp32 rows [Nk, ldv] (ldv = D rounded up to 16, zero padded); fp32 V whose D is a multiple
//     of 16 is read in place;
//   then per block of kRows query rows: S = (Q Kt) * scale (a kRows x 32 register tile, d sequential),
//   P = exp(S - rowmax) (vector exp, Cephes polynomial, ~1 ulp), O = P V (a kRows x 64 register tile, keys
//   sequential), out = O / rowsum. A missing last row of a block is computed on zero queries and dropped.
// Every row is computed by the same code whatever the split (results do not depend on the thread count).
// Kernel widths: 16-float vectors on AVX-512 CPUs, 8-float on AVX2 / baseline (attention_kernels(), below);
// csrc/cpu_vec.h: target_clones for the row conversions, fp16 rows; -ffp-contract=off (no FMA contraction).
#include <omp.h>
#include <torch/types.h>  // not torch/extension.h: that adds torch/all.h and pybind11, 4x the compile time

#include "cpu_vec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace {

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef int32_t v8i __attribute__((vector_size(32)));

// The score / softmax / P@V kernels come in two vector widths (csrc/cpu_vec.h's KernelChoice): 16 floats (one
// AVX-512 register) on AVX-512 CPUs, 8 floats on AVX2 and baseline CPUs (the 16-float source's AVX2 clone was
// 3-5x slower than SDPA on an AVX2-only AMD Zen 3). Both widths compute every element with the same operations in
// the same order (scores and P@V along d / keys per element; the softmax sum over the same 16 partial sums, reduced
// alike), so results are bit-identical across CPUs (tests/ops/test_attention_cpp.py compares every width this CPU
// runs).

constexpr int64_t kRows = 4;                   // query rows per register tile
constexpr int64_t kMinParallelWork = 1 << 15;  // multiply-adds below which one thread beats the fork/join

PYENGINE_INLINE void storev(float* p, v16f v) { std::memcpy(p, &v, sizeof v); }
PYENGINE_INLINE void storev(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }
PYENGINE_INLINE v16f widen(v8f v) {  // [v, 0]
  v16f w = {};
  std::memcpy(&w, &v, sizeof v);
  return w;
}

// exp(x) for x <= 0 (softmax arguments; NaN propagates): x = n ln2 + r, |r| <= ln2 / 2, exp(r) by the Cephes expf
// polynomial, 2^n through the exponent bits. x is clamped at -87 (exp(-87) ~ 1.6e-38, still normal): a weight that
// small next to the row maximum's 1 is below every precision's resolution.
template <typename V, typename VI>
PYENGINE_INLINE V exp_nonpos(V x) {
  const V lo = V{} + -87.0f;
  x = x < lo ? lo : x;
  const V magic = V{} + 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer (ulp 1)
  const V t = x * 1.44269504088896341f + magic;
  const V n = t - magic;
  V r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V p = V{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const VI ni = (VI)t - (VI)magic;  // n, -126 <= n <= 0 (vector casts reinterpret the bits)
  const VI bits = (ni + 127) << 23;
  return p * (V)bits;
}

// The low / high half of a vector (Half is the vector type of half the width).
template <typename Half, typename V>
PYENGINE_INLINE Half low_half(V v) {
  Half r;
  std::memcpy(&r, &v, sizeof r);
  return r;
}
template <typename Half, typename V>
PYENGINE_INLINE Half high_half(V v) {
  Half r;
  std::memcpy(&r, reinterpret_cast<const char*>(&v) + sizeof r, sizeof r);
  return r;
}

// Horizontal max / sum of 16 lanes by halving (a fixed order: deterministic, and 4 dependent steps, not 15).
PYENGINE_INLINE float hmax8(v8f m8) {  // the last steps of hmax16
  const v4f c = low_half<v4f>(m8), d = high_half<v4f>(m8);
  const v4f m4 = c > d ? c : d;
  const float x = m4[0] > m4[2] ? m4[0] : m4[2];
  const float y = m4[1] > m4[3] ? m4[1] : m4[3];
  return x > y ? x : y;
}

PYENGINE_INLINE float hsum8(v8f s8) {  // the last steps of hsum16
  const v4f s4 = low_half<v4f>(s8) + high_half<v4f>(s8);
  return (s4[0] + s4[2]) + (s4[1] + s4[3]);
}

PYENGINE_INLINE float hmax16(v16f v) {
  const v8f a = low_half<v8f>(v), b = high_half<v8f>(v);
  return hmax8(a > b ? a : b);
}

PYENGINE_INLINE float hsum16(v16f v) { return hsum8(low_half<v8f>(v) + high_half<v8f>(v)); }

// The score / softmax / P@V kernels are templates over the vector type V: v16f (one AVX-512 register) or v8f
// (one AVX2 register; two SSE registers in the baseline build), instantiated per target below. W = kLanes<V>.
template <typename V>
constexpr int kLanes = sizeof(V) / sizeof(float);

// Stores v at p; into a wider Slot (a v8f into a v16f slot) as [v, 0].
template <typename Slot, typename V>
PYENGINE_INLINE void store_as(float* p, V v) {
  if constexpr (std::is_same<Slot, V>::value) {
    storev(p, v);
  } else {
    storev(p, widen(v));
  }
}

// S[r, W*c .. W*c + W) = (sum_d Q[r][d] Kt[d, ...]) * scale for r < kRows, c < NV (kp: Kt at the tile's first key):
// kRows x NV register accumulators, one pass over d, each q broadcast serving the NV vectors.
template <typename V, int NV, typename Slot = V>
PYENGINE_INLINE void scores_tile(const float* const* Q, int64_t D, const float* __restrict kp, int64_t ldk,
                                 float scale, float* __restrict S, int64_t lds) {
  constexpr int W = kLanes<V>;
  V acc[kRows][NV];
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < NV; ++c) acc[r][c] = V{};
  for (int64_t d = 0; d < D; ++d, kp += ldk) {
    V kv[NV];
    for (int c = 0; c < NV; ++c) kv[c] = loadv<V>(kp + W * c);
    for (int r = 0; r < kRows; ++r) {
      const float b = Q[r][d];
      for (int c = 0; c < NV; ++c) acc[r][c] += kv[c] * b;
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < NV; ++c) store_as<Slot>(S + r * lds + W * c, acc[r][c] * scale);
}

// S[r, j] = (sum_d Q[r][d] Kt[d, j]) * scale for r < kRows, j < ldk (ldk a multiple of 8); Q: kRows fp32 rows of
// D, S row stride lds. Keys in tiles of 2W, then W; v16f: a last 24 in one pass (16 + 8), a last 8 alone.
template <typename V>
PYENGINE_INLINE void scores_block(const float* const* Q, int64_t D, const float* __restrict Kt, int64_t ldk,
                                  float scale, float* __restrict S, int64_t lds) {
  constexpr int W = kLanes<V>;
  int64_t j = 0;
  for (; j + 2 * W <= ldk; j += 2 * W) scores_tile<V, 2>(Q, D, Kt + j, ldk, scale, S + j, lds);
  if constexpr (W == 16) {
    if (ldk - j == 24) {  // 16 + 8 keys in one pass over d (each q broadcast serves both)
      const float* __restrict q0 = Q[0];
      const float* __restrict q1 = Q[1];
      const float* __restrict q2 = Q[2];
      const float* __restrict q3 = Q[3];
      v16f a0 = {}, a1 = {}, a2 = {}, a3 = {};
      v8f b0 = {}, b1 = {}, b2 = {}, b3 = {};
      const float* kp = Kt + j;
      for (int64_t d = 0; d < D; ++d, kp += ldk) {
        const v16f k0 = loadv<v16f>(kp);
        const v8f k1 = loadv<v8f>(kp + 16);
        const float c0 = q0[d], c1 = q1[d], c2 = q2[d], c3 = q3[d];
        a0 += k0 * c0, a1 += k0 * c1, a2 += k0 * c2, a3 += k0 * c3;
        b0 += k1 * c0, b1 += k1 * c1, b2 += k1 * c2, b3 += k1 * c3;
      }
      storev(S + j, a0 * scale), storev(S + lds + j, a1 * scale);
      storev(S + 2 * lds + j, a2 * scale), storev(S + 3 * lds + j, a3 * scale);
      storev(S + j + 16, widen(b0 * scale)), storev(S + lds + j + 16, widen(b1 * scale));
      storev(S + 2 * lds + j + 16, widen(b2 * scale)), storev(S + 3 * lds + j + 16, widen(b3 * scale));
      return;
    }
  }
  for (; j + W <= ldk; j += W) scores_tile<V, 1>(Q, D, Kt + j, ldk, scale, S + j, lds);
  if constexpr (W == 16) {
    // A last 8 keys, stored as full 16-float vectors (upper half 0; S has room, lds >= j + 16), so that
    // softmax_block's 16-float loads of the tile are forwarded from one store each.
    if (j < ldk) scores_tile<v8f, 1, v16f>(Q, D, Kt + j, ldk, scale, S + j, lds);
  }
}

// The max / sum of a group of 16 lanes held as 16 / W vectors (lanes 0-7 then 8-15 for v8f): the same steps as
// hmax16 / hsum16, so both widths reduce alike.
PYENGINE_INLINE float group_max(const v16f (&m)[1]) { return hmax16(m[0]); }
PYENGINE_INLINE float group_max(const v8f (&m)[2]) { return hmax8(m[0] > m[1] ? m[0] : m[1]); }
PYENGINE_INLINE float group_sum(const v16f (&s)[1]) { return hsum16(s[0]); }
PYENGINE_INLINE float group_sum(const v8f (&s)[2]) { return hsum8(s[0] + s[1]); }

// Per row r < kRows of S (row stride lds, a multiple of 16, >= Nk): S[r, :Nk] = exp(S[r, :Nk] - max) (the
// padding keys masked out of the max and the sum); sums[r] = the sum of the row. Keys go in groups of 16 lanes
// (G = 16 / W vectors) at every width, so that the sum is the same 16 partial sums, reduced the same way.
template <typename V, typename VI>
PYENGINE_INLINE void softmax_block(float* __restrict S, int64_t lds, int64_t Nk, float* __restrict sums) {
  constexpr int W = kLanes<V>, G = 16 / W;
  const V ninf = V{} - std::numeric_limits<float>::infinity();
  const int64_t full = Nk / 16 * 16;
  VI valid[G];  // the keys of the last, partial group
  for (int g = 0; g < G; ++g) {
    VI lane;
    for (int i = 0; i < W; ++i) lane[i] = g * W + i;
    valid[g] = lane < static_cast<int32_t>(Nk - full);
  }
  for (int64_t r = 0; r < kRows; ++r) {
    float* s = S + r * lds;
    V m[G];
    for (int g = 0; g < G; ++g) m[g] = ninf;
    for (int64_t j = 0; j < full; j += 16) {
      for (int g = 0; g < G; ++g) {
        const V x = loadv<V>(s + j + W * g);
        m[g] = x > m[g] ? x : m[g];
      }
    }
    if (full < Nk) {
      for (int g = 0; g < G; ++g) {
        const V x = valid[g] ? loadv<V>(s + full + W * g) : ninf;
        m[g] = x > m[g] ? x : m[g];
      }
    }
    const float mx = group_max(m);
    V acc[G] = {};
    for (int64_t j = 0; j < full; j += 16) {
      for (int g = 0; g < G; ++g) {
        const V e = exp_nonpos<V, VI>(loadv<V>(s + j + W * g) - mx);
        storev(s + j + W * g, e);
        acc[g] += e;
      }
    }
    if (full < Nk) {
      for (int g = 0; g < G; ++g) {
        const V e = valid[g] ? exp_nonpos<V, VI>(loadv<V>(s + full + W * g) - mx) : V{};
        storev(s + full + W * g, e);
        acc[g] += e;
      }
    }
    sums[r] = group_sum(acc);
  }
}

// O[r, W*c .. W*c + W) = sum_j P[r, j] V[j, W*c ..] for r < kRows, c < NV, j < Nk (keys sequential).
template <typename V, int NV>
PYENGINE_INLINE void pv_tile(const float* __restrict P, int64_t lds, int64_t Nk, const float* __restrict Vm,
                             int64_t ldv, float* __restrict O, int64_t ldo) {
  constexpr int W = kLanes<V>;
  V acc[kRows][NV];
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < NV; ++c) acc[r][c] = V{};
  for (int64_t j = 0; j < Nk; ++j) {
    V vv[NV];
    for (int c = 0; c < NV; ++c) vv[c] = loadv<V>(Vm + j * ldv + W * c);
    for (int r = 0; r < kRows; ++r) {
      const float p = P[r * lds + j];
      for (int c = 0; c < NV; ++c) acc[r][c] += vv[c] * p;
    }
  }
  for (int r = 0; r < kRows; ++r)
    for (int c = 0; c < NV; ++c) storev(O + r * ldo + W * c, acc[r][c]);
}

// O [kRows, ldo] = P [kRows, Nk] @ V [Nk, Dp] (Dp = ldo, a multiple of 16; V row stride ldv), NV * W columns a
// pass: kRows x NV accumulators plus NV loads fit the registers (32 with AVX-512, 16 with AVX2).
template <typename V>
PYENGINE_INLINE void pv_block(const float* __restrict P, int64_t lds, int64_t Nk, const float* __restrict Vm,
                              int64_t ldv, int64_t Dp, float* __restrict O) {
  constexpr int W = kLanes<V>, NV = W == 16 ? 4 : 2;
  int64_t c0 = 0;
  for (; c0 + NV * W <= Dp; c0 += NV * W) pv_tile<V, NV>(P, lds, Nk, Vm + c0, ldv, O + c0, Dp);
  if constexpr (W == 16) {
    switch ((Dp - c0) / W) {
      case 3: pv_tile<V, 3>(P, lds, Nk, Vm + c0, ldv, O + c0, Dp); break;
      case 2: pv_tile<V, 2>(P, lds, Nk, Vm + c0, ldv, O + c0, Dp); break;
      case 1: pv_tile<V, 1>(P, lds, Nk, Vm + c0, ldv, O + c0, Dp); break;
      default: break;
    }
  }  // v8f: Dp is a multiple of 2W = 16, no columns are left
}

struct AttentionKernels {
  const char* name;
  void (*scores)(const float* const*, int64_t, const float*, int64_t, float, float*, int64_t);
  void (*softmax)(float*, int64_t, int64_t, float*);
  void (*pv)(const float*, int64_t, int64_t, const float*, int64_t, int64_t, float*);
};

// One instantiation per target; ATTR is empty for the baseline (the build's own flags: SSE2 on x86-64).
#define PYENGINE_ATTENTION_KERNELS(NAME, ATTR, V, VI)                                                           \
  ATTR void scores_##NAME(const float* const* Q, int64_t D, const float* Kt, int64_t ldk, float scale, float* S, \
                          int64_t lds) {                                                                         \
    scores_block<V>(Q, D, Kt, ldk, scale, S, lds);                                                              \
  }                                                                                                              \
  ATTR void softmax_##NAME(float* S, int64_t lds, int64_t Nk, float* sums) {                                    \
    softmax_block<V, VI>(S, lds, Nk, sums);                                                                      \
  }                                                                                                              \
  ATTR void pv_##NAME(const float* P, int64_t lds, int64_t Nk, const float* Vm, int64_t ldv, int64_t Dp,        \
                      float* O) {                                                                                \
    pv_block<V>(P, lds, Nk, Vm, ldv, Dp, O);                                                                     \
  }                                                                                                              \
  constexpr AttentionKernels kernels_##NAME{#NAME, scores_##NAME, softmax_##NAME, pv_##NAME};

PYENGINE_ATTENTION_KERNELS(avx512, PYENGINE_AVX512, v16f, v16i)
PYENGINE_ATTENTION_KERNELS(avx2, PYENGINE_AVX2, v8f, v8i)
PYENGINE_ATTENTION_KERNELS(baseline, , v8f, v8i)
#undef PYENGINE_ATTENTION_KERNELS

// The kernels run() uses: the widest this CPU runs (what target_clones' resolver does, with a vector width per
// target); attention_cpu_kernels() below names or switches them.
KernelChoice<AttentionKernels>& attention_kernels() {
  static KernelChoice<AttentionKernels> k("attention_cpu_kernels", &kernels_avx512, &kernels_avx2, &kernels_baseline);
  return k;
}

// bf16 rows <-> fp32 rows (bf16 is the top half of an fp32; fp32 -> bf16 rounds to nearest even, NaN stays NaN),
// bit-identical to c10::BFloat16's conversions; plain loops the compiler vectorises.
PYENGINE_CLONES void bf16_row_to_float(const c10::BFloat16* __restrict src, int64_t n, float* __restrict dst) {
  const uint16_t* s = reinterpret_cast<const uint16_t*>(src);
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = static_cast<uint32_t>(s[i]) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    dst[i] = f;
  }
}

PYENGINE_CLONES void float_row_to_bf16(const float* __restrict src, int64_t n, c10::BFloat16* __restrict dst) {
  uint16_t* d = reinterpret_cast<uint16_t*>(dst);
  for (int64_t i = 0; i < n; ++i) {
    uint32_t u;
    std::memcpy(&u, &src[i], 4);
    const bool nan = (u & 0x7fffffffu) > 0x7f800000u;
    const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    d[i] = static_cast<uint16_t>(nan ? 0x7fc0u : rounded);
  }
}

inline void load_row(const c10::Half* src, int64_t n, float* dst) { half_row_to_float(src, n, dst); }
inline void load_row(const c10::BFloat16* src, int64_t n, float* dst) { bf16_row_to_float(src, n, dst); }
inline void store_row(const float* src, int64_t n, c10::Half* dst) { float_row_to_half(src, n, dst); }
inline void store_row(const float* src, int64_t n, c10::BFloat16* dst) { float_row_to_bf16(src, n, dst); }

// dst[r][d] = O[r, d] / sums[r] for r < nr, d < D (dst may be O's own rows).
PYENGINE_CLONES void divide_rows(const float* O, int64_t ldo, int64_t D, const float* __restrict sums, int64_t nr,
                                 float* const* dst) {
  for (int64_t r = 0; r < nr; ++r) {
    const float s = sums[r];
    const float* o = O + r * ldo;
    float* d = dst[r];
    for (int64_t c = 0; c < D; ++c) d[c] = o[c] / s;
  }
}

struct Geometry {
  int64_t B, G, Nq, Nk, H, D;
  int64_t sq[4], sk[4], sv[4];  // strides of b, g, n, h (the d stride is 1)
};

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

template <typename T>
void run(const T* q, const T* k, const T* v, const Geometry& g, T* out) {
  const int64_t D = g.D, Nq = g.Nq, Nk = g.Nk;
  const int64_t ldk = round_up(Nk, 8), lds = round_up(Nk, 16), Dp = round_up(D, 16);
  const bool v_in_place = std::is_same<T, float>::value && D % 16 == 0;
  const int64_t heads = g.B * g.G * g.H;
  const int64_t work = heads * Nq * Nk * D;
  const int64_t threads = work >= kMinParallelWork ? std::max(1, omp_get_max_threads()) : 1;
  // Enough items for every thread (8 per thread when the heads alone are too few), blocks a multiple of kRows.
  int64_t blocks = 1;
  if (heads < 8 * threads) blocks = std::min((8 * threads + heads - 1) / heads, (Nq + kRows - 1) / kRows);
  const int64_t qblock = round_up((Nq + blocks - 1) / blocks, kRows);
  blocks = (Nq + qblock - 1) / qblock;
  const int64_t items = heads * blocks;
  const float scale = static_cast<float>(std::pow(static_cast<double>(D), -0.5));
  const int64_t chunk = std::max<int64_t>(1, items / (threads * 16));

  constexpr bool is_f32 = std::is_same<T, float>::value;
  const AttentionKernels& kern = attention_kernels().get();

#pragma omp parallel num_threads(threads)
  {
    // Per-thread scratch; fp32 inputs are read in place (no row copies) except V when D % 16 != 0.
    std::vector<float> kt(static_cast<size_t>(D * ldk), 0.0f);
    std::vector<float> vs(v_in_place ? 0 : static_cast<size_t>(Nk * Dp), 0.0f);
    std::vector<float> qs(static_cast<size_t>(kRows * D), 0.0f);
    std::vector<float> zeros(static_cast<size_t>(D), 0.0f);
    std::vector<float> ss(static_cast<size_t>(kRows * lds), 0.0f);
    std::vector<float> os(static_cast<size_t>(kRows * Dp), 0.0f);
    std::vector<float> row(static_cast<size_t>(D), 0.0f);
    float sums[kRows];
    const float* qrows[kRows];
    float* orows[kRows];
#pragma omp for schedule(dynamic, chunk)
    for (int64_t item = 0; item < items; ++item) {
      const int64_t head = item / blocks, blk = item % blocks;
      const int64_t h = head % g.H, bg = head / g.H, gi = bg % g.G, b = bg / g.G;
      const T* qh = q + b * g.sq[0] + gi * g.sq[1] + h * g.sq[3];
      const T* kh = k + b * g.sk[0] + gi * g.sk[1] + h * g.sk[3];
      const T* vh = v + b * g.sv[0] + gi * g.sv[1] + h * g.sv[3];
      for (int64_t j = 0; j < Nk; ++j) {  // Kt[d, j] = k[j, d] (the padding columns stay 0)
        const T* kj = kh + j * g.sk[2];
        if constexpr (is_f32) {
          for (int64_t d = 0; d < D; ++d) kt[d * ldk + j] = kj[d];
        } else {
          load_row(kj, D, row.data());
          for (int64_t d = 0; d < D; ++d) kt[d * ldk + j] = row[d];
        }
      }
      const float* V;
      int64_t ldv;
      if (v_in_place) {
        V = reinterpret_cast<const float*>(vh);
        ldv = g.sv[2];
      } else {
        for (int64_t j = 0; j < Nk; ++j) {
          const T* vj = vh + j * g.sv[2];
          float* dst = vs.data() + j * Dp;
          if constexpr (is_f32) {
            for (int64_t d = 0; d < D; ++d) dst[d] = vj[d];
          } else {
            load_row(vj, D, dst);
          }
        }
        V = vs.data();
        ldv = Dp;
      }
      const int64_t i_end = std::min(Nq, (blk + 1) * qblock);
      for (int64_t i0 = blk * qblock; i0 < i_end; i0 += kRows) {
        const int64_t nr = std::min(kRows, i_end - i0);
        for (int64_t r = 0; r < kRows; ++r) {
          if (r >= nr) {
            qrows[r] = zeros.data();
          } else if constexpr (is_f32) {
            qrows[r] = qh + (i0 + r) * g.sq[2];
          } else {
            load_row(qh + (i0 + r) * g.sq[2], D, qs.data() + r * D);
            qrows[r] = qs.data() + r * D;
          }
        }
        kern.scores(qrows, D, kt.data(), ldk, scale, ss.data(), lds);
        kern.softmax(ss.data(), lds, Nk, sums);
        kern.pv(ss.data(), lds, Nk, V, ldv, Dp, os.data());
        T* out_row0 = out + (((b * Nq + i0) * g.G + gi) * g.H + h) * D;
        const int64_t out_ld = g.G * g.H * D;  // the next query row
        if constexpr (is_f32) {
          for (int64_t r = 0; r < nr; ++r) orows[r] = out_row0 + r * out_ld;
          divide_rows(os.data(), Dp, D, sums, nr, orows);
        } else {
          for (int64_t r = 0; r < nr; ++r) orows[r] = os.data() + r * Dp;
          divide_rows(os.data(), Dp, D, sums, nr, orows);
          for (int64_t r = 0; r < nr; ++r) store_row(os.data() + r * Dp, D, out_row0 + r * out_ld);
        }
      }
    }
  }
}

}  // namespace

// q [B, G, Nq, H, D], k / v [B, G, Nk, H, D] CPU tensors of one dtype (float32 / bfloat16 / float16), unit stride
// on the last dim (any other strides, 0 included). Returns a new contiguous [B, Nq, G, H, D] of that dtype. Python
// validates first (pyengine/ops/attention.py); these checks are the second line.
torch::Tensor attention_cpu(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v) {
  for (const torch::Tensor* t : {&q, &k, &v}) {
    TORCH_CHECK(t->device().is_cpu(), "attention_cpu: q, k, v must be CPU tensors, got ", t->device());
    TORCH_CHECK(t->dim() == 5, "attention_cpu: q, k, v must be 5-D [B, G, N, H, D], got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == q.scalar_type(), "attention_cpu: q, k, v must have one dtype, got ",
                q.scalar_type(), " and ", t->scalar_type());
    TORCH_CHECK(t->size(-1) <= 1 || t->stride(-1) == 1, "attention_cpu: the last (head) dim must have unit "
                "stride, got strides ", t->strides());
  }
  const auto dtype = q.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat || dtype == torch::kHalf || dtype == torch::kBFloat16,
              "attention_cpu: q must be float32, float16 or bfloat16, got ", dtype);
  const int64_t B = q.size(0), G = q.size(1), Nq = q.size(2), H = q.size(3), D = q.size(4), Nk = k.size(2);
  for (const torch::Tensor* t : {&k, &v}) {
    TORCH_CHECK(t->size(0) == B && t->size(1) == G && t->size(2) == Nk && t->size(3) == H && t->size(4) == D,
                "attention_cpu: k and v must be [B, G, Nk, H, D] = [", B, ", ", G, ", Nk, ", H, ", ", D,
                "] with one Nk, got ", k.sizes(), " and ", v.sizes());
  }
  TORCH_CHECK(Nk >= 1, "attention_cpu: need at least one key, got Nk = 0");
  auto out = torch::empty({B, Nq, G, H, D}, q.options().memory_format(c10::MemoryFormat::Contiguous));
  if (out.numel() == 0) return out;
  Geometry g{B, G, Nq, Nk, H, D, {}, {}, {}};
  for (int a = 0; a < 4; ++a) {
    g.sq[a] = q.stride(a);
    g.sk[a] = k.stride(a);
    g.sv[a] = v.stride(a);
  }
  if (dtype == torch::kFloat) {
    run<float>(q.data_ptr<float>(), k.data_ptr<float>(), v.data_ptr<float>(), g, out.data_ptr<float>());
  } else if (dtype == torch::kHalf) {
    run<c10::Half>(q.data_ptr<c10::Half>(), k.data_ptr<c10::Half>(), v.data_ptr<c10::Half>(), g,
                   out.data_ptr<c10::Half>());
  } else {
    run<c10::BFloat16>(q.data_ptr<c10::BFloat16>(), k.data_ptr<c10::BFloat16>(), v.data_ptr<c10::BFloat16>(), g,
                       out.data_ptr<c10::BFloat16>());
  }
  return out;
}

// The kernel width attention_cpu runs: "avx512", "avx2" or "baseline". With a name, switches to those kernels
// first (they must run on this CPU). For tests and diagnosis: every width gives the same bits.
std::string attention_cpu_kernels(const std::string& use) { return attention_kernels().use(use); }
