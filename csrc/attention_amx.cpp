// Multi-head attention on the CPU with Intel AMX bf16 tiles (OpenMP): the C++ implementation of
// pyengine::attention_amx / pyengine::attention_amx_out (pyengine/ops/attention_amx.py; the spec is attention_ref
// in pyengine/ops/attention.py).
//
//   out[b, i, g, h, :] = softmax_j((q[b, g, i, h, :] . k[b, g, j, h, :]) * D**-0.5) @ v[b, g, :, h, :]
//
// q [B, G, Nq, H, D], k / v [B, G, Nk, H, D] bfloat16, any strides with a unit last-dim stride (views of a fused
// QKV buffer; q may have batch stride 0); out [B, Nq, G, H, D] bfloat16, any strides with a unit last-dim stride
// (a column slice of a bigger buffer works), written in place; nothing else of out's buffer is touched. D <= 256.
//
// Both products run on AMX tiles (TDPBF16PS: bf16 x bf16 products, fp32 accumulation); the softmax is fp32
// AVX-512. Per work item (b, g, h, a range of query rows), in per-thread scratch allocated once per call:
//   K is packed once into the VNNI B operand of S = Q K^T: Nk padded to Nkp (a multiple of 32) and D to Dp (a
//     multiple of 32) with zeros, per block of 16 keys a [Dp/2, 16] array of bf16 pairs whose row r holds, for each
//     of the 16 keys, (k[2r], k[2r+1]): a 32-bit transpose of the [16, Dp/2] block (AVX-512 16x16 transposes);
//   V is packed into the VNNI B operand of O = P V: row r of the packing holds, for every column d, the pair
//     (v[2r, d], v[2r+1, d]) (consecutive keys interleaved; zero rows past Nk);
//   then per unit of 32 query rows (two 16-row blocks, computed 2 x 2 tiles at a time so that each K / V tile load
//   feeds two products): Q tiles (read in place when a block is whole and D % 32 == 0, else copied into a
//   zero-padded [16, Dp] scratch); S = Q K^T in 16 x 16 fp32 tiles, stored to an fp32 [32, Nkp] scratch; per valid
//   row: m = the max over the Nk real keys, p = exp((s - m) * D**-0.5) = 2^(s c - m c) (VREDUCEPS / polynomial /
//   VSCALEFPS, see exp2_softmax), p rounded to bf16 into a [32, Nkp] scratch (padded keys 0) and summed in fp32
//   *after* the rounding (VDPBF16PS against ones), so that the weights that multiply V sum to exactly the divisor;
//   O = P V in fp32 tiles; out = O * (1 / sum), rounded to bf16 once, only the valid rows and the D real columns
//   stored. The units go through a software pipeline (S of the next unit and P V of the previous one are issued
//   before the softmax of the current one) over two rotating scratch slots.
// Query rows past Nq in the last unit are computed on zero (or stale, finite) rows on the tiles and dropped. Units
// always start at row 0 and every row is computed by the same code (a tile row's result depends only on that row),
// so results do not depend on the thread count or the split. Work split: items are (b, g, h); with fewer than 4
// items per thread the units of a head are also split over the threads (each part packs its own K / V).
//
// AMX and AVX-512 code lives only in functions with the AMX_TARGET attribute and runs only after
// amx_bf16_available() (CPUID: AMX-TILE, AMX-BF16, AVX512F/BW/VL/DQ, AVX512-BF16; XCR0 with the AVX-512 and tile
// states; Linux's arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) granted) returned true, so the module loads
// and everything else runs on CPUs without AMX. Every OpenMP thread loads the tile config itself and releases the
// tiles at the end. GCC's _tile_loadd has no memory clobber: compiler barriers order the scratch writes before the
// tile loads that read them. Compilers without these targets (GCC < 11, Clang < 12) or other architectures build a
// stub whose amx_bf16_available() is false.
#if defined(__x86_64__) && defined(__linux__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && defined(__GNUC__) && __GNUC__ >= 11))
#define PYENGINE_AMX_KERNEL 1
#else
#define PYENGINE_AMX_KERNEL 0
#endif

#include <ATen/MemoryOverlap.h>
#include <torch/types.h>  // not torch/extension.h: that adds torch/all.h and pybind11, 4x the compile time

#if PYENGINE_AMX_KERNEL
#include <cpuid.h>
#include <immintrin.h>
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

// GCC 12 reports its own _mm512_undefined_epi32() (a self-initialised variable inside the unpack intrinsics) as
// "may be used uninitialized" when the 16x16 transpose is inlined; it is not (every lane is written).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f,avx512bf16,avx512bw,avx512vl,avx512dq")))

namespace {

constexpr int64_t kMaxHeadDim = 256;
constexpr int64_t kSlots = 2;       // scratch slots of the query pipeline (see worker)
constexpr int64_t kUnitRows = 32;   // query rows per pipeline unit: two 16-row blocks (the tile kernels' a and b)
constexpr int64_t kMinParallelWork = 1 << 16;  // multiply-adds below which one thread beats the fork/join

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// ---------------------------------------------------------------------------------------------------------------
// Capability check.

constexpr long kArchGetXcompPerm = 0x1022;
constexpr long kArchReqXcompPerm = 0x1023;
constexpr int kXfeatureXtiledata = 18;

bool detect_amx_bf16() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid_max(0, nullptr) < 7) return false;
  __cpuid_count(1, 0, a, b, c, d);
  const bool osxsave = (c >> 27) & 1u;
  if (!osxsave) return false;
  __cpuid_count(7, 0, a, b, c, d);
  const bool avx512f = (b >> 16) & 1u, avx512dq = (b >> 17) & 1u, avx512bw = (b >> 30) & 1u,
             avx512vl = (b >> 31) & 1u;
  const bool amx_bf16 = (d >> 22) & 1u, amx_tile = (d >> 24) & 1u;
  __cpuid_count(7, 1, a, b, c, d);
  const bool avx512_bf16 = (a >> 5) & 1u;
  if (!(avx512f && avx512dq && avx512bw && avx512vl && amx_bf16 && amx_tile && avx512_bf16)) return false;
  // XCR0: SSE, AVX, opmask, ZMM_Hi256, Hi16_ZMM (bits 1, 2, 5, 6, 7) and XTILECFG (17); XTILEDATA (18) is
  // enabled on request (arch_prctl below), and Linux reports it in XCR0 already.
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  const uint64_t xcr0 = (static_cast<uint64_t>(hi) << 32) | lo;
  const uint64_t need = (1u << 1) | (1u << 2) | (1u << 5) | (1u << 6) | (1u << 7) | (1u << 17) | (1u << 18);
  if ((xcr0 & need) != need) return false;
  // Linux (>= 5.16) hands out the tile data state only to processes that ask for it (process-wide, also for the
  // threads started later).
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return false;
  uint64_t perm = 0;
  if (syscall(SYS_arch_prctl, kArchGetXcompPerm, &perm) != 0) return false;
  return (perm >> kXfeatureXtiledata) & 1u;
}

// ---------------------------------------------------------------------------------------------------------------
// The kernel.

// Palette 1: 8 tiles, all used as 16 rows x 64 bytes (bf16 A / B operands: 16 x 32 bf16; fp32 C: 16 x 16).
struct alignas(64) TileConfig {
  uint8_t palette_id;
  uint8_t start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
static_assert(sizeof(TileConfig) == 64, "the tile config is 64 bytes");

// A constant in memory (ldtilecfg reads all 64 bytes; GCC's _tile_loadconfig tells the compiler about 8 only).
alignas(64) const TileConfig kTileConfig = {1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64},
                                             {16, 16, 16, 16, 16, 16, 16, 16}};

// Tile roles (scores_2x2, pv_2x2): 0..3 the fp32 accumulators, 4 and 5 the A operands (rows of blocks a and b),
// 6 and 7 the B operands (packed K or V).

inline void compiler_barrier() { __asm__ volatile("" ::: "memory"); }

struct Geometry {
  int64_t B, G, Nq, Nk, H, D;
  int64_t sq[4], sk[4], sv[4], so[4];  // strides (elements) of b, g, n, h; the d strides are 1
};

struct Scratch {  // one thread's buffers (64-byte aligned)
  std::unique_ptr<void, decltype(&std::free)> mem{nullptr, &std::free};
  uint32_t* kp;   // packed K: Nkp / 16 blocks of [Dp / 2, 16] bf16 pairs
  uint16_t* vp;   // packed V: [Nkp / 2, Dp, 2] bf16
  float* s;       // scores [rows, Nkp] (rows = kSlots * kUnitRows)
  uint16_t* p;    // probabilities, bf16 [rows, Nkp]
  uint16_t* qs;   // zero-padded query blocks [rows, Dp]
  float* o;       // output rows [rows, Dp]
  float* sums;    // softmax row sums [rows]
};

Scratch make_scratch(int64_t Nkp, int64_t Dp, int64_t rows) {
  auto aligned = [](int64_t bytes) { return round_up(bytes, 64); };
  const int64_t b_kp = aligned(Nkp * Dp * 2), b_vp = aligned(Nkp * Dp * 2), b_s = aligned(rows * Nkp * 4),
                b_p = aligned(rows * Nkp * 2), b_qs = aligned(rows * Dp * 2), b_o = aligned(rows * Dp * 4),
                b_sums = aligned(rows * 4);
  const int64_t total = b_kp + b_vp + b_s + b_p + b_qs + b_o + b_sums;
  Scratch sc;
  char* base = static_cast<char*>(std::aligned_alloc(64, static_cast<size_t>(total)));
  TORCH_CHECK(base != nullptr, "attention_amx_cpu: could not allocate ", total, " bytes of scratch");
  std::memset(base, 0, static_cast<size_t>(total));
  sc.mem.reset(base);
  char* at = base;
  auto take = [&at](int64_t bytes) {
    char* p = at;
    at += bytes;
    return p;
  };
  sc.kp = reinterpret_cast<uint32_t*>(take(b_kp));
  sc.vp = reinterpret_cast<uint16_t*>(take(b_vp));
  sc.s = reinterpret_cast<float*>(take(b_s));
  sc.p = reinterpret_cast<uint16_t*>(take(b_p));
  sc.qs = reinterpret_cast<uint16_t*>(take(b_qs));
  sc.o = reinterpret_cast<float*>(take(b_o));
  sc.sums = reinterpret_cast<float*>(take(b_sums));
  return sc;
}

// The mask of the first n (clamped to 0..32) of 32 lanes.
AMX_TARGET inline __mmask32 first32(int64_t n) {
  return n >= 32 ? ~__mmask32{0} : n <= 0 ? __mmask32{0} : static_cast<__mmask32>((1u << n) - 1u);
}
AMX_TARGET inline __mmask16 first16(int64_t n) {
  return n >= 16 ? static_cast<__mmask16>(0xffff) : n <= 0 ? __mmask16{0} : static_cast<__mmask16>((1u << n) - 1u);
}

// In-place transpose of a 16 x 16 matrix of 32-bit elements (r[i] = row i).
AMX_TARGET inline void transpose16x16_epi32(__m512i r[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 16; i += 2) {  // lane L of t[i]: r_i[4L], r_i+1[4L], r_i[4L+1], r_i+1[4L+1] (lo; hi: +2)
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  for (int q = 0; q < 16; q += 4) {  // lane L of u[q + c]: column 4L + c of rows q .. q+3
    u[q + 0] = _mm512_unpacklo_epi64(t[q], t[q + 2]);
    u[q + 1] = _mm512_unpackhi_epi64(t[q], t[q + 2]);
    u[q + 2] = _mm512_unpacklo_epi64(t[q + 1], t[q + 3]);
    u[q + 3] = _mm512_unpackhi_epi64(t[q + 1], t[q + 3]);
  }
  for (int c = 0; c < 4; ++c) {
    const __m512i a0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88);   // cols c, 8+c of row quads 0, 1
    const __m512i a1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xdd);   // cols 4+c, 12+c of quads 0, 1
    const __m512i b0 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88);  // quads 2, 3
    const __m512i b1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xdd);
    r[c] = _mm512_shuffle_i32x4(a0, b0, 0x88);
    r[8 + c] = _mm512_shuffle_i32x4(a0, b0, 0xdd);
    r[4 + c] = _mm512_shuffle_i32x4(a1, b1, 0x88);
    r[12 + c] = _mm512_shuffle_i32x4(a1, b1, 0xdd);
  }
}

// K [Nk rows of D bf16, row stride ldk] -> kp: per key block kb, [Dp / 2, 16] uint32 (bf16 pairs), zero padded.
AMX_TARGET void pack_k(const uint16_t* k, int64_t ldk, int64_t Nk, int64_t D, int64_t Nkp, int64_t Dp,
                       uint32_t* __restrict kp) {
  __m512i r[16];
  for (int64_t kb = 0; kb < Nkp / 16; ++kb) {
    uint32_t* dst = kp + kb * (Dp / 2) * 16;
    for (int64_t c = 0; c < Dp / 32; ++c) {  // 32 bf16 of d = 16 pairs
      const __mmask32 m = first32(D - c * 32);
      for (int n = 0; n < 16; ++n) {
        const int64_t j = kb * 16 + n;
        r[n] = j < Nk ? _mm512_maskz_loadu_epi16(m, k + j * ldk + c * 32) : _mm512_setzero_si512();
      }
      transpose16x16_epi32(r);
      for (int rr = 0; rr < 16; ++rr) _mm512_store_si512(dst + (c * 16 + rr) * 16, r[rr]);
    }
  }
}

// V [Nk rows of D bf16, row stride ldv] -> vp [Nkp / 2, Dp, 2]: row pair (2r, 2r+1) interleaved per column.
AMX_TARGET void pack_v(const uint16_t* v, int64_t ldv, int64_t Nk, int64_t D, int64_t Nkp, int64_t Dp,
                       uint16_t* __restrict vp) {
  alignas(64) static const uint16_t kLo[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                               8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  const __m512i lo_idx = _mm512_load_si512(kLo);
  const __m512i hi_idx = _mm512_add_epi16(lo_idx, _mm512_set1_epi16(16));
  for (int64_t r = 0; r < Nkp / 2; ++r) {
    const int64_t j0 = 2 * r, j1 = 2 * r + 1;
    uint16_t* dst = vp + r * Dp * 2;
    for (int64_t c = 0; c < Dp / 32; ++c) {
      const __mmask32 m = first32(D - c * 32);
      const __m512i a = j0 < Nk ? _mm512_maskz_loadu_epi16(m, v + j0 * ldv + c * 32) : _mm512_setzero_si512();
      const __m512i b = j1 < Nk ? _mm512_maskz_loadu_epi16(m, v + j1 * ldv + c * 32) : _mm512_setzero_si512();
      _mm512_store_si512(dst + c * 64, _mm512_permutex2var_epi16(a, lo_idx, b));
      _mm512_store_si512(dst + c * 64 + 32, _mm512_permutex2var_epi16(a, hi_idx, b));
    }
  }
}

// The tile kernels work on two query blocks (a, b) at once, 2 x 2 accumulators: each K / V tile load feeds two
// products (the packed K and V of long sequences live in L2, and their tile loads are the limit otherwise).

// S_a / S_b[:, 16 kb .. 16 kb + 32) = Q_a / Q_b K^T for key blocks kb, kb + 1. qa / qb: [16, Dp] bf16 (row strides
// lda / ldb bytes); kp: packed key block kb (blocks kstride uint32 apart); S row stride lds bytes.
AMX_TARGET inline void scores_2x2(const uint16_t* qa, int64_t lda, const uint16_t* qb, int64_t ldb,
                                  const uint32_t* kp, int64_t kstride, int64_t ndc, float* sa, float* sb,
                                  int64_t lds) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t dc = 0; dc < ndc; ++dc) {
    const uint32_t* kd = kp + dc * 256;  // 16 rows of 16 pairs
    _tile_loadd(4, qa + dc * 32, lda);
    _tile_loadd(6, kd, 64);
    _tile_loadd(5, qb + dc * 32, ldb);
    _tile_loadd(7, kd + kstride, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, sa, lds);
  _tile_stored(1, sa + 16, lds);
  _tile_stored(2, sb, lds);
  _tile_stored(3, sb + 16, lds);
}

// O_a / O_b[:, 16 cb .. 16 cb + 32) = P_a / P_b V for the column tiles cb, cb + 1. pa / pb: [16, Nkp] bf16 (row
// stride ldp bytes); vp: the packing at column 16 cb (row stride ldv bytes; 32 keys = 16 rows a chunk, chunk stride
// vchunk elements); O row stride ldo bytes.
AMX_TARGET inline void pv_2x2(const uint16_t* pa, const uint16_t* pb, int64_t ldp, const uint16_t* vp, int64_t ldv,
                              int64_t vchunk, int64_t nkc, float* oa, float* ob, int64_t ldo) {
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  for (int64_t kc = 0; kc < nkc; ++kc) {
    const uint16_t* vk = vp + kc * vchunk;
    _tile_loadd(4, pa + kc * 32, ldp);
    _tile_loadd(6, vk, ldv);
    _tile_loadd(5, pb + kc * 32, ldp);
    _tile_loadd(7, vk + 32, ldv);  // the next 16 columns (pairs)
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, oa, ldo);
  _tile_stored(1, oa + 16, ldo);
  _tile_stored(2, ob, ldo);
  _tile_stored(3, ob + 16, ldo);
}

// fp32 -> bf16, round to nearest even (NaN stays NaN).
AMX_TARGET inline __m256i f32_to_bf16(__m512 x) { return (__m256i)_mm512_cvtneps_pbh(x); }

// 2^y for the softmax (y <= ~0): f = y - floor(y) in [0, 1) by VREDUCEPS, 2^f by a degree-3 polynomial
// (least-squares fit, relative error < 8e-5: 25x below the bf16 rounding of p that follows, and a smooth factor
// that the division by the sum of the same p largely cancels), times 2^floor(y) by VSCALEFPS (exact; underflows
// gracefully to 0, no clamp needed). NaN propagates.
AMX_TARGET inline __m512 exp2_softmax(__m512 y) {
  const __m512 f = _mm512_reduce_ps(y, 0x09);  // y - floor(y): round down (01), no precision exception (bit 3)
  __m512 p = _mm512_set1_ps(0.07790721952915192f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.22623352706432343f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.6957767605781555f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(0.9999278783798218f));
  return _mm512_scalef_ps(p, y);  // p * 2^floor(y)
}

// Rows 0 .. R-1 of s (fp32 [R, Nkp], Nk real keys, Nkp a multiple of 32): p[r] = bf16(exp((s[r] - max) * scale))
// (padded keys 0), computed as 2^(s * c - max * c) with c = scale * log2(e); sums[r] = the fp32 sum of the rounded
// p[r] (VDPBF16PS against ones: exact products, fp32 additions in a fixed order). R rows at a time: the horizontal
// reductions and exp chains of one row overlap the others' (a row alone is latency-bound).
template <int R>
AMX_TARGET inline void softmax_group(const float* __restrict s, int64_t Nkp, int64_t Nk, float c,
                                     uint16_t* __restrict p, float* __restrict sums) {
  const __m512 ninf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __m512 cv = _mm512_set1_ps(c);
  const __m512bh ones = (__m512bh)_mm512_set1_epi16(0x3f80);  // bf16 1.0
  const int64_t full = Nk / 32 * 32;                          // keys in whole steps of 32
  const __mmask16 t0 = first16(Nk - full), t1 = first16(Nk - full - 16);
  __m512 m0[R], m1[R], mc[R], acc[R];
  for (int r = 0; r < R; ++r) m0[r] = m1[r] = ninf;
  for (int64_t j = 0; j < full; j += 32) {
    for (int r = 0; r < R; ++r) {
      m0[r] = _mm512_max_ps(m0[r], _mm512_load_ps(s + r * Nkp + j));
      m1[r] = _mm512_max_ps(m1[r], _mm512_load_ps(s + r * Nkp + j + 16));
    }
  }
  if (full < Nk) {
    for (int r = 0; r < R; ++r) {
      m0[r] = _mm512_max_ps(m0[r], _mm512_mask_load_ps(ninf, t0, s + r * Nkp + full));
      m1[r] = _mm512_max_ps(m1[r], _mm512_mask_load_ps(ninf, t1, s + r * Nkp + full + 16));
    }
  }
  for (int r = 0; r < R; ++r) {
    mc[r] = _mm512_set1_ps(_mm512_reduce_max_ps(_mm512_max_ps(m0[r], m1[r])) * c);
    acc[r] = _mm512_setzero_ps();
  }
  for (int64_t j = 0; j < full; j += 32) {
    for (int r = 0; r < R; ++r) {
      const __m512 e0 = exp2_softmax(_mm512_fmsub_ps(_mm512_load_ps(s + r * Nkp + j), cv, mc[r]));
      const __m512 e1 = exp2_softmax(_mm512_fmsub_ps(_mm512_load_ps(s + r * Nkp + j + 16), cv, mc[r]));
      const __m512bh pb = _mm512_cvtne2ps_pbh(e1, e0);  // e0 in the low half
      _mm512_store_si512(p + r * Nkp + j, (__m512i)pb);
      acc[r] = _mm512_dpbf16_ps(acc[r], pb, ones);
    }
  }
  if (full < Nk) {  // the last, partial step: padded keys get p = 0
    for (int r = 0; r < R; ++r) {
      const __m512 x0 = _mm512_maskz_load_ps(t0, s + r * Nkp + full);
      const __m512 x1 = _mm512_maskz_load_ps(t1, s + r * Nkp + full + 16);
      const __m512 e0 = _mm512_maskz_mov_ps(t0, exp2_softmax(_mm512_fmsub_ps(x0, cv, mc[r])));
      const __m512 e1 = _mm512_maskz_mov_ps(t1, exp2_softmax(_mm512_fmsub_ps(x1, cv, mc[r])));
      const __m512bh pb = _mm512_cvtne2ps_pbh(e1, e0);
      _mm512_store_si512(p + r * Nkp + full, (__m512i)pb);
      acc[r] = _mm512_dpbf16_ps(acc[r], pb, ones);
    }
  }
  for (int r = 0; r < R; ++r) sums[r] = _mm512_reduce_add_ps(acc[r]);
}

// The softmax of rows 0 .. nr-1 of a block, kSoftmaxRows at a time (the last group may include padding rows: their
// results are dropped; rows are independent, and the padding rows of S hold finite scores of zero queries).
constexpr int kSoftmaxRows = 4;

AMX_TARGET void softmax_rows(const float* __restrict s, int64_t Nkp, int64_t Nk, int64_t nr, float scale,
                             uint16_t* __restrict p, float* __restrict sums) {
  const float c = scale * 1.44269504088896341f;
  for (int64_t r = 0; r < nr; r += kSoftmaxRows)
    softmax_group<kSoftmaxRows>(s + r * Nkp, Nkp, Nk, c, p + r * Nkp, sums + r);
}

struct Plan {
  Geometry g;
  int64_t Nkp, Dp, nunits, splits, per;  // per: units per part of a split head
  float scale;
  const uint16_t *q, *k, *v;
  uint16_t* out;
};

// One (b, g, h) item's pointers and a thread's scratch. The query rows go in units of kUnitRows (two 16-row blocks,
// the tile kernels' a and b) through a software pipeline of the stages below, each stage on one of kSlots rotating
// scratch slots (slot = unit % kSlots) of kUnitRows rows.
struct Head {
  const Plan* pl;
  const Scratch* sc;
  const uint16_t* q;
  uint16_t* out;
  const uint16_t* qt[kSlots][2];  // the Q tile source of each slot's two blocks (in place or a zero-padded copy)
  int64_t ldq[kSlots][2];
};

inline int64_t block_rows(const Geometry& g, int64_t block) {  // valid rows of a 16-row block (<= 0: past Nq)
  return std::min<int64_t>(16, g.Nq - block * 16);
}

// Stage 1 (vector): make the unit's Q tiles loadable: in place when a block is whole and D % 32 == 0, else a
// zero-padded copy. A block past Nq (an odd block count) reads the slot's copy as is: finite, its results dropped.
AMX_TARGET inline void stage_q(Head& hd, int64_t unit) {
  const Geometry& g = hd.pl->g;
  const int64_t D = g.D, Dp = hd.pl->Dp, slot = unit % kSlots;
  for (int half = 0; half < 2; ++half) {
    const int64_t block = 2 * unit + half, i0 = block * 16, nr = block_rows(g, block);
    uint16_t* qs = hd.sc->qs + (slot * kUnitRows + half * 16) * Dp;
    hd.qt[slot][half] = qs;
    hd.ldq[slot][half] = Dp * 2;
    if (nr == 16 && D % 32 == 0) {
      hd.qt[slot][half] = hd.q + i0 * g.sq[2];
      hd.ldq[slot][half] = g.sq[2] * 2;
    } else if (nr > 0) {
      for (int64_t r = 0; r < 16; ++r) {
        for (int64_t c = 0; c < Dp / 32; ++c) {
          __m512i x = _mm512_setzero_si512();
          if (r < nr) x = _mm512_maskz_loadu_epi16(first32(D - c * 32), hd.q + (i0 + r) * g.sq[2] + c * 32);
          _mm512_store_si512(qs + r * Dp + c * 32, x);
        }
      }
    }
  }
}

// Stage 2 (tiles): S = Q K^T for the unit into its slot of the score scratch.
AMX_TARGET inline void stage_scores(const Head& hd, int64_t unit) {
  const Plan& pl = *hd.pl;
  const int64_t Nkp = pl.Nkp, Dp = pl.Dp, slot = unit % kSlots;
  const int64_t kstride = (Dp / 2) * 16, ndc = Dp / 32, nkb = Nkp / 16;
  float* s = hd.sc->s + slot * kUnitRows * Nkp;
  for (int64_t kb = 0; kb < nkb; kb += 2)  // nkb is even (Nkp is a multiple of 32)
    scores_2x2(hd.qt[slot][0], hd.ldq[slot][0], hd.qt[slot][1], hd.ldq[slot][1], hd.sc->kp + kb * kstride, kstride,
               ndc, s + kb * 16, s + 16 * Nkp + kb * 16, Nkp * 4);
}

// Stage 3 (vector): P = exp((S - max) * scale) in bf16 and the row sums, for the unit's valid rows.
AMX_TARGET inline void stage_softmax(const Head& hd, int64_t unit) {
  const Plan& pl = *hd.pl;
  const int64_t Nkp = pl.Nkp, row0 = (unit % kSlots) * kUnitRows;
  for (int half = 0; half < 2; ++half) {
    const int64_t nr = block_rows(pl.g, 2 * unit + half), r0 = row0 + half * 16;
    if (nr > 0)
      softmax_rows(hd.sc->s + r0 * Nkp, Nkp, pl.g.Nk, nr, pl.scale, hd.sc->p + r0 * Nkp, hd.sc->sums + r0);
  }
}

// Stage 4 (tiles): O = P V for the unit into its slot of the output scratch.
AMX_TARGET inline void stage_pv(const Head& hd, int64_t unit) {
  const Plan& pl = *hd.pl;
  const int64_t Nkp = pl.Nkp, Dp = pl.Dp, row0 = (unit % kSlots) * kUnitRows, nkc = Nkp / 32, ncb = Dp / 16;
  const uint16_t* p = hd.sc->p + row0 * Nkp;
  float* o = hd.sc->o + row0 * Dp;
  for (int64_t cb = 0; cb < ncb; cb += 2)  // ncb is even (Dp is a multiple of 32)
    pv_2x2(p, p + 16 * Nkp, Nkp * 2, hd.sc->vp + cb * 32, Dp * 4, 16 * Dp * 2, nkc, o + cb * 16,
           o + 16 * Dp + cb * 16, Dp * 4);
}

// Stage 5 (vector): out = O / sum for the unit's valid rows, one rounding to bf16.
AMX_TARGET inline void stage_out(const Head& hd, int64_t unit) {
  const Plan& pl = *hd.pl;
  const Geometry& g = pl.g;
  const int64_t D = g.D, Dp = pl.Dp, row0 = (unit % kSlots) * kUnitRows;
  const int64_t i0 = unit * kUnitRows, nr = std::min<int64_t>(kUnitRows, g.Nq - i0);
  alignas(64) float inv_sums[kUnitRows];  // 1 / sum for all rows at once (rows >= nr: stale or 0, unused)
  for (int64_t r = 0; r < kUnitRows; r += 16)
    _mm512_store_ps(inv_sums + r, _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_load_ps(hd.sc->sums + row0 + r)));
  for (int64_t r = 0; r < nr; ++r) {
    const __m512 inv = _mm512_set1_ps(inv_sums[r]);
    const float* orow = hd.sc->o + (row0 + r) * Dp;
    uint16_t* dst = hd.out + (i0 + r) * g.so[1];
    int64_t c = 0;
    for (; c + 16 <= D; c += 16) {
      const __m256i x = f32_to_bf16(_mm512_mul_ps(_mm512_load_ps(orow + c), inv));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + c), x);
    }
    if (c < D)  // the last columns (D % 16 != 0): a masked store, out's other columns are not touched
      _mm256_mask_storeu_epi16(dst + c, first16(D - c), f32_to_bf16(_mm512_mul_ps(_mm512_load_ps(orow + c), inv)));
  }
}

// One thread's share (called inside the parallel region): its tile config, its scratch, the items it draws.
AMX_TARGET void worker(const Plan& pl, const Scratch& sc) {
  const Geometry& g = pl.g;
  _tile_loadconfig(&kTileConfig);
  const int64_t items = g.B * g.G * g.H * pl.splits;
#pragma omp for schedule(dynamic, 1)
  for (int64_t item = 0; item < items; ++item) {
    const int64_t head = item / pl.splits, part = item % pl.splits;
    const int64_t u0 = part * pl.per, u1 = std::min(pl.nunits, u0 + pl.per);
    if (u0 >= u1) continue;
    const int64_t h = head % g.H, bg = head / g.H, gi = bg % g.G, b = bg / g.G;
    Head hd{};
    hd.pl = &pl;
    hd.sc = &sc;
    hd.q = pl.q + b * g.sq[0] + gi * g.sq[1] + h * g.sq[3];
    hd.out = pl.out + b * g.so[0] + gi * g.so[2] + h * g.so[3];
    pack_k(pl.k + b * g.sk[0] + gi * g.sk[1] + h * g.sk[3], g.sk[2], g.Nk, g.D, pl.Nkp, pl.Dp, sc.kp);
    pack_v(pl.v + b * g.sv[0] + gi * g.sv[1] + h * g.sv[3], g.sv[2], g.Nk, g.D, pl.Nkp, pl.Dp, sc.vp);
    // The pipeline: iteration x issues the tile work of units x + 1 (S) and x - 1 (P V), then the vector work of
    // unit x (softmax) and x - 1 (output). Tile and vector stages hand over through memory; the compiler barriers
    // keep the C++ stores and loads of the scratch in program order around the tile instructions (which GCC does
    // not know read memory).
    stage_q(hd, u0);
    compiler_barrier();
    stage_scores(hd, u0);
    for (int64_t x = u0; x < u1; ++x) {
      if (x + 1 < u1) {
        stage_q(hd, x + 1);
        compiler_barrier();
        stage_scores(hd, x + 1);
      }
      if (x > u0) stage_pv(hd, x - 1);
      compiler_barrier();
      stage_softmax(hd, x);
      compiler_barrier();
      if (x > u0) stage_out(hd, x - 1);
      compiler_barrier();
    }
    stage_pv(hd, u1 - 1);
    compiler_barrier();
    stage_out(hd, u1 - 1);
    compiler_barrier();
  }
  _tile_release();
}

void run(const Plan& pl, int64_t threads) {
  std::vector<Scratch> scratch;  // allocated here: an exception inside the parallel region would terminate
  for (int64_t t = 0; t < threads; ++t) scratch.push_back(make_scratch(pl.Nkp, pl.Dp, kSlots * kUnitRows));
#pragma omp parallel num_threads(threads)
  worker(pl, scratch[omp_get_thread_num()]);
}

}  // namespace

bool amx_bf16_available() {
  static const bool available = detect_amx_bf16();  // thread-safe one-time initialisation (C++11)
  return available;
}

// q [B, G, Nq, H, D], k / v [B, G, Nk, H, D] bfloat16 CPU tensors with a unit last-dim stride (other strides free,
// 0 included); out [B, Nq, G, H, D] bfloat16, unit last-dim stride, no overlap with itself or the inputs, written
// in place. D <= 256. Python validates
// first (pyengine/ops/attention_amx.py); these checks are the second line.
void attention_amx_cpu(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, torch::Tensor& out) {
  TORCH_CHECK(amx_bf16_available(), "attention_amx_cpu: this CPU / OS does not provide AMX-BF16 (with AVX512-BF16 "
              "and the Linux tile-data permission)");
  for (const torch::Tensor* t : {&q, &k, &v, const_cast<const torch::Tensor*>(&out)}) {
    TORCH_CHECK(t->device().is_cpu(), "attention_amx_cpu: q, k, v, out must be CPU tensors, got ", t->device());
    TORCH_CHECK(t->dim() == 5, "attention_amx_cpu: q, k, v, out must be 5-D, got ", t->sizes());
    TORCH_CHECK(t->scalar_type() == torch::kBFloat16, "attention_amx_cpu: q, k, v, out must be bfloat16, got ",
                t->scalar_type());
    TORCH_CHECK(t->size(-1) <= 1 || t->stride(-1) == 1, "attention_amx_cpu: the last (head) dim must have unit "
                "stride, got strides ", t->strides());
  }
  const int64_t B = q.size(0), G = q.size(1), Nq = q.size(2), H = q.size(3), D = q.size(4), Nk = k.size(2);
  for (const torch::Tensor* t : {&k, &v}) {
    TORCH_CHECK(t->size(0) == B && t->size(1) == G && t->size(2) == Nk && t->size(3) == H && t->size(4) == D,
                "attention_amx_cpu: k and v must be [B, G, Nk, H, D] = [", B, ", ", G, ", Nk, ", H, ", ", D,
                "] with one Nk, got ", k.sizes(), " and ", v.sizes());
  }
  TORCH_CHECK(out.size(0) == B && out.size(1) == Nq && out.size(2) == G && out.size(3) == H && out.size(4) == D,
              "attention_amx_cpu: out must be [B, Nq, G, H, D] = [", B, ", ", Nq, ", ", G, ", ", H, ", ", D,
              "], got ", out.sizes());
  TORCH_CHECK(Nk >= 1, "attention_amx_cpu: need at least one key, got Nk = 0");
  TORCH_CHECK(D >= 1 && D <= kMaxHeadDim, "attention_amx_cpu: head dim D must be in 1..", kMaxHeadDim, ", got ", D);
  at::assert_no_internal_overlap(out);  // out is written row by row while q, k, v are still read
  for (const torch::Tensor* t : {&q, &k, &v}) at::assert_no_overlap(out, *t);
  if (out.numel() == 0) return;
  Plan pl{};
  pl.g = Geometry{B, G, Nq, Nk, H, D, {}, {}, {}, {}};
  for (int a = 0; a < 4; ++a) {
    pl.g.sq[a] = q.stride(a);
    pl.g.sk[a] = k.stride(a);
    pl.g.sv[a] = v.stride(a);
    pl.g.so[a] = out.stride(a);
  }
  pl.Nkp = round_up(Nk, 32);
  pl.Dp = round_up(D, 32);
  pl.nunits = (Nq + kUnitRows - 1) / kUnitRows;
  pl.scale = static_cast<float>(std::pow(static_cast<double>(D), -0.5));
  pl.q = reinterpret_cast<const uint16_t*>(q.data_ptr<c10::BFloat16>());
  pl.k = reinterpret_cast<const uint16_t*>(k.data_ptr<c10::BFloat16>());
  pl.v = reinterpret_cast<const uint16_t*>(v.data_ptr<c10::BFloat16>());
  pl.out = reinterpret_cast<uint16_t*>(out.data_ptr<c10::BFloat16>());
  const int64_t heads = B * G * H;
  const int64_t work = heads * Nq * Nk * D;
  const int64_t threads = work >= kMinParallelWork ? std::max(1, omp_get_max_threads()) : 1;
  // Split the heads' query units over the threads too when there are fewer than 4 heads a thread (each part packs
  // its own K / V). Every row is computed the same way whatever the split.
  pl.splits = 1;
  if (threads > 1 && heads < 4 * threads) pl.splits = std::min(pl.nunits, (4 * threads + heads - 1) / heads);
  pl.per = (pl.nunits + pl.splits - 1) / pl.splits;
  pl.splits = (pl.nunits + pl.per - 1) / pl.per;
  run(pl, threads);
}
#else
bool amx_bf16_available() { return false; }

void attention_amx_cpu(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&, torch::Tensor&) {
  TORCH_CHECK(false, "attention_amx_cpu: pyengine._C was built without the AMX kernel (needs x86-64 Linux and GCC "
              ">= 11 or Clang >= 12)");
}
#endif  // PYENGINE_AMX_KERNEL
