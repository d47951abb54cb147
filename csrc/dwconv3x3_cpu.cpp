// 3x3 depthwise convolution on the CPU (OpenMP): the C++ implementation of pyengine::dwconv3x3 (stride 1,
// padding 1, bias; the X-shuffle units' depthwise conv with BatchNorm folded into weight and bias):
//
//   out[n, c, h, w] = bias[c] + sum_{i, j < 3} weight[c, 3i + j] * x[n, c, h + i - 1, w + j - 1]   (zero padding)
//
// Every path computes an output element as ((bias + T0) + T1) + T2, T_i = (k_i0 * x_l + k_i1 * x_c) + k_i2 * x_r the
// taps of kernel row i on input row h + i - 1 (x_l, x_c, x_r: columns w - 1, w, w + 1; zeros outside the plane,
// the terms of rows outside it left out): the same fp32 operations in the same order for every layout and dtype,
// so NCHW and channels-last inputs give bit-identical results.
//
// The inner kernel is a "strip": one vector of 8 outputs walking down the rows. Each input row is loaded once as
// three vectors (left, centre, right neighbours) and feeds T2 of the output row above, T1 of its own row and T0 of
// the row below, which wait in two running accumulators: 3 loads, 9 multiplies, 9 adds and 1 store per 8 outputs,
// no branches in the loop. Which 8 outputs a vector holds depends on the layout:
//   * NCHW-like fp32 x (unit column stride; also channel slices): a task is one (n, c) plane, read in place; the
//     lanes are 8 neighbouring columns w, the left / right vectors are loads shifted by one column. In the first /
//     last strip of a row the outer neighbour comes from a lane shift bringing in a zero instead; a ragged last
//     strip (W % 8 != 0) reads a zero-padded copy of its few columns. No copy of the plane at all.
//   * Channels-last fp32 x (unit channel stride, C >= 4): a task is a band of 16 rows of one sample, read in place;
//     the lanes are 8 (then 4) neighbouring channels, the left / right vectors the neighbouring pixels (a zero vector
//     at the plane's edge); when C % 4 != 0 the last block of 4 overlaps the one before (those channels are computed
//     twice, identically). Weights are transposed to [9, C] once per call so that a tap of 8 channels is one load.
//     Bands rather than whole columns: a strip steps one row (W * C * 4 bytes, a new 4 KiB page) at a time, and a
//     band's pages fit the TLB.
//   * Anything else (fp16 / bf16, other strides): a task is (n, a block of channels); each plane is copied, converted
//     to fp32, into a thread-local buffer with zero columns on its left and right, and computed as in the NCHW case.
//     The block is one channel for NCHW-like x and out, 8 channels when channels have the smallest stride of x or
//     out (the copy and the store then walk h, w, then the block's channels, touching each cache line once).
// Results are stored straight into out for fp32 out with unit stride along the vector's axis, else through a float
// buffer and a converting strided store. OpenMP splits the tasks statically over the threads (one thread below
// kMinParallelWork outputs). target_clones builds AVX-512 / AVX2 / baseline variants of the strip functions and
// picks one at load time (-ffp-contract=off in setup.py, so no FMA: all variants round alike). All arithmetic is
// fp32.
#include <torch/types.h>  // not torch/extension.h: that adds torch/all.h and pybind11, 4x the compile time

#include "cpu_vec.h"

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kMinParallelWork = 1 << 15;  // below this many outputs one thread beats the fork/join cost
constexpr int64_t kChannelBlock = 8;           // channels per plane-path task when channels are the innermost axis
constexpr int64_t kBandRows = 16;              // rows per channels-last task

// Taps of one kernel row (k[0..2]) on the left / centre / right inputs of one row.
template <typename V>
PYENGINE_INLINE V taps(const V* k, V l, V c, V r) { return (k[0] * l + k[1] * c) + k[2] * r; }

// Copies count < 8 floats with fixed-size copies (inline moves rather than a call to memcpy).
PYENGINE_INLINE void copy_few(float* dst, const float* src, int64_t count) {
  switch (count) {
    case 7: std::memcpy(dst, src, 7 * sizeof(float)); break;
    case 6: std::memcpy(dst, src, 6 * sizeof(float)); break;
    case 5: std::memcpy(dst, src, 5 * sizeof(float)); break;
    case 4: std::memcpy(dst, src, 4 * sizeof(float)); break;
    case 3: std::memcpy(dst, src, 3 * sizeof(float)); break;
    case 2: std::memcpy(dst, src, 2 * sizeof(float)); break;
    case 1: std::memcpy(dst, src, 1 * sizeof(float)); break;
    default: break;
  }
}

// Stores the first `count` lanes (kFull: all of them; else count < 8).
template <bool kFull, typename V>
PYENGINE_INLINE void store_lanes(float* o, V v, int64_t count) {
  if (kFull) {
    std::memcpy(o, &v, sizeof v);
  } else {
    float lanes[sizeof(V) / sizeof(float)];
    std::memcpy(lanes, &v, sizeof v);
    copy_few(o, lanes, count);
  }
}

// c's lanes moved up by one, a zero entering lane 0 (the left neighbours at a plane's left edge), and down by one,
// a zero entering lane 7 (the right neighbours at its right edge).
PYENGINE_INLINE v8f shift_in_left_zero(v8f c) { return __builtin_shufflevector(v8f{}, c, 0, 8, 9, 10, 11, 12, 13, 14); }
PYENGINE_INLINE v8f shift_in_right_zero(v8f c) { return __builtin_shufflevector(c, v8f{}, 1, 2, 3, 4, 5, 6, 7, 8); }

// The left / centre / right inputs of one row (kEdgeL / kEdgeR: the neighbours are the centre shifted, with zeros;
// v8f only).
template <typename V, bool kEdgeL, bool kEdgeR>
PYENGINE_INLINE void load_row(const float* l, const float* c, const float* r, V& xl, V& xc, V& xr) {
  xc = loadv<V>(c);
  if constexpr (kEdgeL)
    xl = shift_in_left_zero(xc);
  else
    xl = loadv<V>(l);
  if constexpr (kEdgeR)
    xr = shift_in_right_zero(xc);
  else
    xr = loadv<V>(r);
}

// One strip of H output rows. Input row u is l[u * ldl], c[u * ld], r[u * ldr] (one vector each; ldl / ldr are 0
// where l / r point at a zero vector; with kEdgeL / kEdgeR, l / r are not read), output row u goes to o[u * ldo]
// (count lanes). above / below: whether input rows -1 / H exist (else they count as zero: their terms are left
// out). k: 9 tap vectors (row-major), b: bias vector.
template <bool kFull, bool kEdgeL = false, bool kEdgeR = false, typename V = v8f>
PYENGINE_INLINE void strip(const float* l, int64_t ldl, const float* c, int64_t ld, const float* r, int64_t ldr,
                           int64_t H, bool above, bool below, const V* k, V b, float* o, int64_t ldo,
                           int64_t count) {
  V xl, xc, xr, acc_a;
  if (above) {
    load_row<V, kEdgeL, kEdgeR>(l - ldl, c - ld, r - ldr, xl, xc, xr);
    acc_a = b + taps(k, xl, xc, xr);
    load_row<V, kEdgeL, kEdgeR>(l, c, r, xl, xc, xr);
    acc_a = acc_a + taps(k + 3, xl, xc, xr);  // output row 0
  } else {
    load_row<V, kEdgeL, kEdgeR>(l, c, r, xl, xc, xr);
    acc_a = b + taps(k + 3, xl, xc, xr);
  }
  V acc_b = b + taps(k, xl, xc, xr);  // output row 1
  for (int64_t u = 1; u < H; ++u) {   // input row u: completes output row u - 1, continues u, starts u + 1
    l += ldl, c += ld, r += ldr;
    load_row<V, kEdgeL, kEdgeR>(l, c, r, xl, xc, xr);
    store_lanes<kFull>(o, acc_a + taps(k + 6, xl, xc, xr), count);
    o += ldo;
    acc_a = acc_b + taps(k + 3, xl, xc, xr);
    acc_b = b + taps(k, xl, xc, xr);
  }
  if (below) {
    load_row<V, kEdgeL, kEdgeR>(l + ldl, c + ld, r + ldr, xl, xc, xr);
    acc_a = acc_a + taps(k + 6, xl, xc, xr);
  }
  store_lanes<kFull>(o, acc_a, count);  // output row H - 1
}

// One plane from its fp32 copy: P is the padded plane (P[h * ldp + w + 1] = x[h, w], zero at columns 0 and
// W + 1 .. ldp - 1), wt its 9 taps, out the [H, W] result (row stride ldo, unit column stride; exactly W floats per
// row are written).
PYENGINE_CLONES void conv_plane(const float* __restrict P, int64_t ldp, int64_t H, int64_t W,
                                const float* __restrict wt, float bias, float* __restrict out, int64_t ldo) {
  v8f k[9];
  for (int i = 0; i < 9; ++i) k[i] = v8f{} + wt[i];
  const v8f b = v8f{} + bias;
  const int64_t W8 = W / 8 * 8;
  for (int64_t w = 0; w < W8; w += 8)
    strip<true>(P + w, ldp, P + w + 1, ldp, P + w + 2, ldp, H, false, false, k, b, out + w, ldo, 8);
  if (W8 < W)
    strip<false>(P + W8, ldp, P + W8 + 1, ldp, P + W8 + 2, ldp, H, false, false, k, b, out + W8, ldo, W - W8);
}

// One plane read in place (fp32 rows with unit column stride): X is the [H, W] plane (row stride ldx). Edge
// strips take their outer neighbours from lane shifts; a ragged last strip (W % 8 != 0) reads a zero-padded copy
// of its columns W8 - 1 .. W - 1 in scratch (H rows of 16 floats, zero beyond column W - W8 from the start).
PYENGINE_CLONES void conv_plane_direct(const float* __restrict X, int64_t ldx, int64_t H, int64_t W,
                                       const float* __restrict wt, float bias, float* __restrict out, int64_t ldo,
                                       float* __restrict scratch) {
  v8f k[9];
  for (int i = 0; i < 9; ++i) k[i] = v8f{} + wt[i];
  const v8f b = v8f{} + bias;
  const int64_t W8 = W / 8 * 8;
  for (int64_t w = 0; w < W8; w += 8) {
    const float* c = X + w;
    const bool edge_l = w == 0, edge_r = w + 8 == W;
    if (!edge_l && !edge_r)
      strip<true>(c - 1, ldx, c, ldx, c + 1, ldx, H, false, false, k, b, out + w, ldo, 8);
    else if (!edge_r)
      strip<true, true, false>(c, ldx, c, ldx, c + 1, ldx, H, false, false, k, b, out + w, ldo, 8);
    else if (!edge_l)
      strip<true, false, true>(c - 1, ldx, c, ldx, c, ldx, H, false, false, k, b, out + w, ldo, 8);
    else
      strip<true, true, true>(c, ldx, c, ldx, c, ldx, H, false, false, k, b, out + w, ldo, 8);
  }
  if (W8 < W) {
    const int64_t n = W - W8;
    for (int64_t u = 0; u < H; ++u) {
      const float* xr = X + u * ldx + W8;
      float* s = scratch + u * 16;
      s[0] = W8 > 0 ? xr[-1] : 0.0f;
      copy_few(s + 1, xr, n);
    }
    strip<false>(scratch, 16, scratch + 1, 16, scratch + 2, 16, H, false, false, k, b, out + W8, ldo, n);
  }
}

// Channels-last: the channels [c, c + lanes of V) of one column of one band (see conv_band_cl).
template <typename V>
PYENGINE_INLINE void band_column_cl(const float* pc, int64_t sxh, int64_t sxw, bool left, bool right, int64_t R,
                                    bool above, bool below, const float* wT, int64_t C, const float* bias, int64_t c,
                                    float* o, int64_t soh) {
  static const float zeros[8] = {};
  V k[9];
  for (int i = 0; i < 9; ++i) k[i] = loadv<V>(wT + i * C + c);
  strip<true, false, false, V>(left ? pc - sxw : zeros, left ? sxh : 0, pc, sxh, right ? pc + sxw : zeros,
                               right ? sxh : 0, R, above, below, k, loadv<V>(bias + c), o, soh, 0);
}

// Channels-last: one band of R rows of one sample, column by column: xb points at x[n, 0, h0, 0] (unit channel
// stride, row stride sxh, column stride sxw); above / below: whether rows h0 - 1 / h0 + R exist. wT: taps
// transposed to [9, C]. Channel c of output (row h0 + h, column w) goes to o[h * soh + w * sow + c]. Channels go 8
// at a time, then 4 at a time, then (C % 4 != 0) a block of 4 overlapping the previous one, computed twice
// identically. Needs C >= 4.
// Only columns [w_begin, w_end) are computed.
PYENGINE_CLONES void conv_band_cl(const float* __restrict xb, int64_t sxh, int64_t sxw, int64_t W, int64_t w_begin,
                                  int64_t w_end, int64_t R, bool above, bool below, int64_t C,
                                  const float* __restrict wT, const float* __restrict bias, float* __restrict o,
                                  int64_t soh, int64_t sow) {
  for (int64_t w = w_begin; w < w_end; ++w) {
    const bool left = w > 0, right = w + 1 < W;
    const float* pc = xb + w * sxw;
    float* ow = o + w * sow;
    int64_t c = 0;
    for (; c + 8 <= C; c += 8)
      band_column_cl<v8f>(pc + c, sxh, sxw, left, right, R, above, below, wT, C, bias, c, ow + c, soh);
    for (; c + 4 <= C; c += 4)
      band_column_cl<v4f>(pc + c, sxh, sxw, left, right, R, above, below, wT, C, bias, c, ow + c, soh);
    if (c < C)
      band_column_cl<v4f>(pc + C - 4, sxh, sxw, left, right, R, above, below, wT, C, bias, C - 4, ow + C - 4, soh);
  }
}

// Channels-last with whole rows of pixels contiguous (x and out: unit channel stride, column stride C): the interior
// columns 1 .. W - 2 of one band, each row of them one flat run of (W - 2) * C floats, 8 at a time, whatever
// channels the 8 lanes hold (the left / right neighbours are C floats away; the last block overlaps the previous
// one when the run is not a multiple of 8). wX [9, C + 8] / bX [C + 8]: the taps / bias of channel m % C at
// position m, so that the block starting at flat position j has its lanes' taps at offset j % C. Needs
// (W - 2) * C >= 8; columns 0 and W - 1 are conv_band_cl's.
PYENGINE_CLONES void conv_band_flat(const float* __restrict xb, int64_t sxh, int64_t W, int64_t R, bool above,
                                    bool below, int64_t C, const float* __restrict wX, const float* __restrict bX,
                                    float* __restrict o, int64_t soh) {
  const int64_t L = (W - 2) * C;
  for (int64_t j = 0; j < L; j += 8) {
    const int64_t j0 = C + std::min(j, L - 8);  // flat position of the block in the row
    const int64_t phase = j0 % C;
    v8f k[9];
    for (int i = 0; i < 9; ++i) k[i] = loadv<v8f>(wX + i * (C + 8) + phase);
    const float* pc = xb + j0;
    strip<true>(pc - C, sxh, pc, sxh, pc + C, sxh, R, above, below, k, loadv<v8f>(bX + phase), o + j0, soh, 0);
  }
}

struct Geometry {
  int64_t N, C, H, W;
  int64_t sxn, sxc, sxh, sxw;  // x strides (elements)
  int64_t son, soc, soh, sow;  // out strides (elements)
};

inline bool parallel_worth_it(const Geometry& g) { return g.N * g.C * g.H * g.W >= kMinParallelWork; }

// NCHW-like fp32 x (read in place), or any x through fp32 copies of its planes.
template <typename scalar_t>
void run_planes(const scalar_t* x, const float* weight, const float* bias, const Geometry& g, scalar_t* out) {
  const int64_t N = g.N, C = g.C, H = g.H, W = g.W;
  const bool x_cl = g.sxc < g.sxw;    // channels innermost in x: gather walks h, w, c
  const bool out_cl = g.soc < g.sow;  // channels innermost in out: store walks h, w, c
  const int64_t cb = (x_cl || out_cl) ? kChannelBlock : 1;
  const int64_t blocks = (C + cb - 1) / cb;
  const int64_t ldp = (W + 7) / 8 * 8 + 8;  // >= W rounded up to 8, plus 2: a ragged last strip reads inside
  const int64_t plane = H * ldp;
  constexpr bool is_f32 = std::is_same<scalar_t, float>::value;
  constexpr bool is_f16 = std::is_same<scalar_t, c10::Half>::value;
  const bool direct_out = is_f32 && g.sow == 1 && !out_cl;  // write rows straight into out
  const bool direct_in = is_f32 && g.sxw == 1 && cb == 1;  // read planes of x in place
#pragma omp parallel if (parallel_worth_it(g))
  {
    std::vector<float> pad(direct_in ? 0 : cb * plane, 0.0f);  // the zero columns stay zero: only interiors are written
    std::vector<float> scratch(direct_in ? H * 16 : 0, 0.0f);  // conv_plane_direct's ragged strip
    std::vector<float> res(direct_out ? 0 : cb * H * W);       // [cb, H, W] results when out is not written in place
    // Plane c of the block into dst (row stride ldd).
    auto conv = [&](const scalar_t* xb, int64_t c0, int64_t c, float* dst, int64_t ldd) {
      if (direct_in)
        conv_plane_direct(reinterpret_cast<const float*>(xb + c * g.sxc), g.sxh, H, W, weight + (c0 + c) * 9,
                          bias[c0 + c], dst, ldd, scratch.data());
      else
        conv_plane(pad.data() + c * plane, ldp, H, W, weight + (c0 + c) * 9, bias[c0 + c], dst, ldd);
    };
#pragma omp for schedule(static)
    for (int64_t t = 0; t < N * blocks; ++t) {
      const int64_t n = t / blocks;
      const int64_t c0 = (t % blocks) * cb;
      const int64_t nc = std::min(cb, C - c0);
      const scalar_t* xb = x + n * g.sxn + c0 * g.sxc;
      if (!direct_in && x_cl) {
        for (int64_t h = 0; h < H; ++h)
          for (int64_t w = 0; w < W; ++w) {
            const scalar_t* xp = xb + h * g.sxh + w * g.sxw;
            float* pp = pad.data() + h * ldp + w + 1;
            for (int64_t c = 0; c < nc; ++c) pp[c * plane] = static_cast<float>(xp[c * g.sxc]);
          }
      } else if (!direct_in) {
        for (int64_t c = 0; c < nc; ++c)
          for (int64_t h = 0; h < H; ++h) {
            const scalar_t* xr = xb + c * g.sxc + h * g.sxh;
            float* pr = pad.data() + c * plane + h * ldp + 1;
            if (is_f32 && g.sxw == 1)
              std::memcpy(pr, xr, static_cast<size_t>(W) * sizeof(float));
            else if (is_f16 && g.sxw == 1)
              half_row_to_float(reinterpret_cast<const c10::Half*>(xr), W, pr);
            else
              for (int64_t w = 0; w < W; ++w) pr[w] = static_cast<float>(xr[w * g.sxw]);
          }
      }
      scalar_t* ob = out + n * g.son + c0 * g.soc;
      if (direct_out) {
        for (int64_t c = 0; c < nc; ++c) conv(xb, c0, c, reinterpret_cast<float*>(ob + c * g.soc), g.soh);
        continue;
      }
      for (int64_t c = 0; c < nc; ++c) conv(xb, c0, c, res.data() + c * H * W, W);
      if (out_cl) {
        for (int64_t h = 0; h < H; ++h)
          for (int64_t w = 0; w < W; ++w) {
            scalar_t* op = ob + h * g.soh + w * g.sow;
            const float* rp = res.data() + h * W + w;
            for (int64_t c = 0; c < nc; ++c) op[c * g.soc] = static_cast<scalar_t>(rp[c * H * W]);
          }
      } else {
        for (int64_t c = 0; c < nc; ++c)
          for (int64_t h = 0; h < H; ++h) {
            scalar_t* orow = ob + c * g.soc + h * g.soh;
            const float* rr = res.data() + (c * H + h) * W;
            if (is_f16 && g.sow == 1)
              float_row_to_half(rr, W, reinterpret_cast<c10::Half*>(orow));
            else
              for (int64_t w = 0; w < W; ++w) orow[w * g.sow] = static_cast<scalar_t>(rr[w]);
          }
      }
    }
  }
}

// Channels-last fp32 x with unit channel stride and C >= 4, read in place, in bands of kBandRows rows.
void run_channels_last(const float* x, const float* weight, const float* bias, const Geometry& g, float* out) {
  const int64_t N = g.N, C = g.C, H = g.H, W = g.W;
  std::vector<float> wT(9 * C);  // taps transposed to [9, C]: a tap of 8 channels is one vector load
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < 9; ++i) wT[i * C + c] = weight[c * 9 + i];
  const bool direct_out = g.soc == 1;  // out's channels contiguous too: write in place
  // Whole rows of pixels contiguous in x and out (not a channel slice): the interior columns as flat runs.
  const bool flat = direct_out && g.sxw == C && g.sow == C && (W - 2) * C >= 8;
  std::vector<float> wX(flat ? 9 * (C + 8) : 0), bX(flat ? C + 8 : 0);
  for (int64_t m = 0; flat && m < C + 8; ++m) {
    for (int64_t i = 0; i < 9; ++i) wX[i * (C + 8) + m] = weight[(m % C) * 9 + i];
    bX[m] = bias[m % C];
  }
  const int64_t bands = (H + kBandRows - 1) / kBandRows;
#pragma omp parallel if (parallel_worth_it(g))
  {
    std::vector<float> res(direct_out ? 0 : kBandRows * W * C);  // [R, W, C] results of one band otherwise
#pragma omp for schedule(static)
    for (int64_t t = 0; t < N * bands; ++t) {
      const int64_t n = t / bands;
      const int64_t h0 = (t % bands) * kBandRows;
      const int64_t R = std::min(kBandRows, H - h0);
      const bool above = h0 > 0, below = h0 + R < H;
      const float* xb = x + n * g.sxn + h0 * g.sxh;
      float* ob = out + n * g.son + h0 * g.soh;
      if (flat) {
        conv_band_cl(xb, g.sxh, g.sxw, W, 0, 1, R, above, below, C, wT.data(), bias, ob, g.soh, g.sow);
        conv_band_flat(xb, g.sxh, W, R, above, below, C, wX.data(), bX.data(), ob, g.soh);
        conv_band_cl(xb, g.sxh, g.sxw, W, W - 1, W, R, above, below, C, wT.data(), bias, ob, g.soh, g.sow);
      } else if (direct_out) {
        conv_band_cl(xb, g.sxh, g.sxw, W, 0, W, R, above, below, C, wT.data(), bias, ob, g.soh, g.sow);
      } else {
        conv_band_cl(xb, g.sxh, g.sxw, W, 0, W, R, above, below, C, wT.data(), bias, res.data(), W * C, C);
        for (int64_t h = 0; h < R; ++h)
          for (int64_t w = 0; w < W; ++w)
            for (int64_t c = 0; c < C; ++c) ob[h * g.soh + w * g.sow + c * g.soc] = res[(h * W + w) * C + c];
      }
    }
  }
}

}  // namespace

// x [N, C, H, W] fp32/fp16/bf16 CPU (any strides); weight fp32 contiguous [C, 9] (row-major 3x3 taps); bias fp32
// contiguous [C]; out [N, C, H, W] of x's dtype (any strides, not overlapping x). Python validates first
// (pyengine/ops/dwconv3x3.py); these checks are the second line.
void dwconv3x3_cpu(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                   torch::Tensor& out) {
  TORCH_CHECK(x.device().is_cpu(), "dwconv3x3_cpu: x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.dim() == 4, "dwconv3x3_cpu: x must be 4-D [N, C, H, W], got ", x.dim(), "-D");
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == torch::kFloat || dtype == torch::kHalf || dtype == torch::kBFloat16,
              "dwconv3x3_cpu: x must be float32, float16 or bfloat16, got ", dtype);
  const int64_t C = x.size(1);
  TORCH_CHECK(weight.device().is_cpu() && weight.scalar_type() == torch::kFloat && weight.is_contiguous() &&
                  weight.dim() == 2 && weight.size(0) == C && weight.size(1) == 9,
              "dwconv3x3_cpu: weight must be a contiguous float32 CPU tensor [C=", C, ", 9], got ",
              weight.scalar_type(), " ", weight.sizes());
  TORCH_CHECK(bias.device().is_cpu() && bias.scalar_type() == torch::kFloat && bias.is_contiguous() &&
                  bias.dim() == 1 && bias.size(0) == C,
              "dwconv3x3_cpu: bias must be a contiguous float32 CPU tensor [C=", C, "], got ", bias.scalar_type(), " ",
              bias.sizes());
  TORCH_CHECK(out.device().is_cpu() && out.scalar_type() == dtype && out.sizes() == x.sizes(),
              "dwconv3x3_cpu: out must be a CPU tensor of x's dtype and shape ", x.sizes(), ", got ",
              out.scalar_type(), " ", out.sizes());
  if (x.numel() == 0) return;
  const Geometry g{x.size(0),   C,           x.size(2),   x.size(3),     x.stride(0),   x.stride(1),
                   x.stride(2), x.stride(3), out.stride(0), out.stride(1), out.stride(2), out.stride(3)};
  const float* w = weight.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  if (dtype == torch::kFloat) {
    if (g.sxc == 1 && g.sxw != 1 && C >= 4)
      run_channels_last(x.data_ptr<float>(), w, b, g, out.data_ptr<float>());
    else
      run_planes<float>(x.data_ptr<float>(), w, b, g, out.data_ptr<float>());
  } else if (dtype == torch::kHalf) {
    run_planes<at::Half>(x.data_ptr<at::Half>(), w, b, g, out.data_ptr<at::Half>());
  } else {
    run_planes<at::BFloat16>(x.data_ptr<at::BFloat16>(), w, b, g, out.data_ptr<at::BFloat16>());
  }
}
