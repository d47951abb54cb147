// Fused SUSA on the CPU (OpenMP): the C++ implementation of pyengine::susa / pyengine::susa_into (SPEC.md §3).
//
// Work split: whole samples per thread when the batch divides over the threads (no synchronisation), else all
// threads on one sample at a time (channels / row blocks, static schedules giving a thread the same channels in
// stages 1 and 3). Either way a sample's x (40 ch @ 64x48 fp32: 480 KiB) is still in the L2 cache when the gating
// pass reads it again. Per sample:
//   stage 1, per channel c: on the [H, W] plane (x itself when fp32 with unit column stride, else a float copy),
//            q = softmax_s(mean_w[c] * sum_r x[r, s] g[r] / R + mean_b[c]), a[c, r] = sum_s x[r, s] q[s]
//            (H-wise r = h, s = w; W-wise r = w, s = h);
//   stage 2, per block of rows r: z = conv_w @ a[:, r] + conv_b, LayerNorm over C (eps 1e-5) and sigmoid (LN on),
//            vectorised across the block's rows;
//   stage 3, per channel c (per row h for channels-last): out[n, out_index[c], h, w] = x * gate (second read of x,
//            the single write of out).
// Every inner loop runs along a contiguous axis (rows of the plane, or the rows r of a/z) in 8-float vectors;
// csrc/cpu_vec.h has the multiversioning (target_clones) and the vector types. All arithmetic is fp32.
#include <omp.h>
#include <torch/types.h>  // not torch/extension.h: that adds torch/all.h and pybind11, 4x the compile time

#include "cpu_vec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

namespace {

constexpr int64_t kRowBlock = 16;  // rows r per stage-2 task, a multiple of 8 (a and the gate have R padded to it)
constexpr int64_t kMinParallelWork = 1 << 15;  // below this many elements one thread beats the fork/join cost

struct Geometry {
  int64_t N, C, H, W;
  int64_t sxn, sxc, sxh, sxw;  // x strides
  int64_t son, soc, soh, sow;  // out strides
  bool h_wise;
};

inline float sum8(v8f v) { return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7])); }

// out[i] = P[i, :] . v for rows i < m (row stride ld), four rows at a time so each load of v serves four rows.
// Each row sums in 8 lanes, added pairwise at the end, then the n % 8 tail: a fixed order (deterministic).
PYENGINE_CLONES void dot_rows(const float* __restrict P, int64_t ld, int64_t m, const float* __restrict v,
                              int64_t n, float* __restrict out) {
  const int64_t n8 = n / 8 * 8;
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) {
    const float* p0 = P + i * ld;
    v8f s0 = {}, s1 = {}, s2 = {}, s3 = {};
    for (int64_t k = 0; k < n8; k += 8) {
      const v8f vk = loadv<v8f>(v + k);
      s0 += loadv<v8f>(p0 + k) * vk;
      s1 += loadv<v8f>(p0 + ld + k) * vk;
      s2 += loadv<v8f>(p0 + 2 * ld + k) * vk;
      s3 += loadv<v8f>(p0 + 3 * ld + k) * vk;
    }
    float t0 = sum8(s0), t1 = sum8(s1), t2 = sum8(s2), t3 = sum8(s3);
    for (int64_t k = n8; k < n; ++k) {
      t0 += p0[k] * v[k];
      t1 += p0[ld + k] * v[k];
      t2 += p0[2 * ld + k] * v[k];
      t3 += p0[3 * ld + k] * v[k];
    }
    out[i] = t0, out[i + 1] = t1, out[i + 2] = t2, out[i + 3] = t3;
  }
  for (; i < m; ++i) {
    const float* pi = P + i * ld;
    v8f s = {};
    for (int64_t k = 0; k < n8; k += 8) s += loadv<v8f>(pi + k) * loadv<v8f>(v + k);
    float t = sum8(s);
    for (int64_t k = n8; k < n; ++k) t += pi[k] * v[k];
    out[i] = t;
  }
}

// acc[k] = sum_i P[i, k] * s[i] for k < n (row stride ld): row axpys, four rows per pass over acc.
PYENGINE_CLONES void axpy_rows(const float* __restrict P, int64_t ld, int64_t m, const float* __restrict s,
                               int64_t n, float* __restrict acc) {
  std::fill(acc, acc + n, 0.0f);
  int64_t i = 0;
  for (; i + 4 <= m; i += 4) {
    const float* p0 = P + i * ld;
    const float s0 = s[i], s1 = s[i + 1], s2 = s[i + 2], s3 = s[i + 3];
    for (int64_t k = 0; k < n; ++k)
      acc[k] += (p0[k] * s0 + p0[ld + k] * s1) + (p0[2 * ld + k] * s2 + p0[3 * ld + k] * s3);
  }
  for (; i < m; ++i)
    for (int64_t k = 0; k < n; ++k) acc[k] += P[i * ld + k] * s[i];
}

// exp on 8 lanes as straight-line vector arithmetic (Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2, degree-6
// polynomial, 2^n built in the exponent bits); std::exp is an opaque scalar libm call. Inputs are clamped to
// [-87, 88.3], so results stay normal and finite (below -87, exp(x) < 1.7e-38 only ever feeds a sum that has a
// term >= 1, or a sigmoid's 1 + exp). Relative error at most 1.4 ulp (checked against double exp on a 1e-4 grid).
typedef int32_t v8i __attribute__((vector_size(32)));

inline v8f exp8(v8f x) {
  x = x < -87.0f ? v8f{} - 87.0f : x;
  x = x > 88.3f ? v8f{} + 88.3f : x;
  const v8f n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest (1.5 * 2^23 trick)
  const v8f r = (x - n * 0.693359375f) - n * -2.12194440e-4f;           // ln2 split in two for exactness
  v8f p = v8f{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = (p * (r * r) + r) + 1.0f;
  const v8i bits = (__builtin_convertvector(n, v8i) + 127) << 23;
  v8f scale;  // 2^n: the bits as floats (memcpy, not a reinterpret_cast: that breaks strict aliasing)
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float exp1(float x) { return exp8(v8f{x})[0]; }  // the same arithmetic, one lane

// Softmax in place over q[0..n) of the logits q[i] * scale + shift.
PYENGINE_CLONES void softmax_affine(float* q, int64_t n, float scale, float shift) {
  float qmax = -INFINITY;
  for (int64_t i = 0; i < n; ++i) {
    q[i] = q[i] * scale + shift;
    qmax = std::max(qmax, q[i]);
  }
  const int64_t n8 = n / 8 * 8;
  for (int64_t i = 0; i < n8; i += 8) {
    const v8f e = exp8(loadv<v8f>(q + i) - qmax);
    std::memcpy(q + i, &e, sizeof e);
  }
  for (int64_t i = n8; i < n; ++i) q[i] = exp1(q[i] - qmax);
  float denom = 0.0f;
  for (int64_t i = 0; i < n; ++i) denom += q[i];
  const float inv = 1.0f / denom;
  for (int64_t i = 0; i < n; ++i) q[i] *= inv;
}

// H-wise stage 1 on a plane P [H, W] (row stride ld): q[w] = sum_h P[h, w] g[h], softmax over w, a[h] = P[h, :] . q.
// W-wise: q[h] = P[h, :] . g, softmax over h, a[w] = sum_h q[h] P[h, w].
void stripe(const float* P, int64_t ld, int64_t H, int64_t W, bool h_wise, const float* g, float mw, float mb,
            float* q, float* a) {
  if (h_wise) {
    axpy_rows(P, ld, H, g, W, q);
    softmax_affine(q, W, mw / static_cast<float>(H), mb);
    dot_rows(P, ld, H, q, W, a);
  } else {
    dot_rows(P, ld, H, g, W, q);
    softmax_affine(q, H, mw / static_cast<float>(W), mb);
    axpy_rows(P, ld, H, q, W, a);
  }
}

// Stage 2 for the kRowBlock rows starting at r0 of one sample: A and G are [C, Rp] (Rp = R padded to a multiple
// of kRowBlock; padded rows hold zeros and produce unused gates). Fixed-size row blocks keep the accumulators in
// vector registers.
PYENGINE_CLONES void gate_rows(const float* __restrict A, int64_t C, int64_t Rp, int64_t r0,
                               const float* __restrict cw, const float* __restrict cb, const float* lw,
                               const float* lb, float* __restrict z, float* __restrict G) {
  for (int64_t d = 0; d < C; ++d) {
    float acc[kRowBlock] = {};
    for (int64_t c = 0; c < C; ++c) {
      const float w = cw[d * C + c];
      const float* ac = A + c * Rp + r0;
      for (int64_t j = 0; j < kRowBlock; ++j) acc[j] += w * ac[j];
    }
    for (int64_t j = 0; j < kRowBlock; ++j) z[d * kRowBlock + j] = acc[j] + cb[d];
  }
  if (lw != nullptr) {
    float mu[kRowBlock] = {}, var[kRowBlock] = {};
    for (int64_t d = 0; d < C; ++d)
      for (int64_t j = 0; j < kRowBlock; ++j) mu[j] += z[d * kRowBlock + j];
    for (int64_t j = 0; j < kRowBlock; ++j) mu[j] /= static_cast<float>(C);
    for (int64_t d = 0; d < C; ++d)
      for (int64_t j = 0; j < kRowBlock; ++j) {
        const float t = z[d * kRowBlock + j] - mu[j];
        var[j] += t * t;
      }
    for (int64_t j = 0; j < kRowBlock; ++j) var[j] = 1.0f / std::sqrt(var[j] / static_cast<float>(C) + 1e-5f);
    for (int64_t d = 0; d < C; ++d) {
      float* zd = z + d * kRowBlock;
      for (int64_t j = 0; j < kRowBlock; ++j) zd[j] = -((zd[j] - mu[j]) * var[j] * lw[d] + lb[d]);
      for (int64_t j = 0; j < kRowBlock; j += 8) {  // sigmoid
        const v8f e = 1.0f / (1.0f + exp8(loadv<v8f>(zd + j)));
        std::memcpy(zd + j, &e, sizeof e);
      }
    }
  }
  for (int64_t d = 0; d < C; ++d)
    for (int64_t j = 0; j < kRowBlock; ++j) G[d * Rp + r0 + j] = z[d * kRowBlock + j];
}

// Stage 3 on rows with unit column stride: out row = x row * (gate[h] for H-wise, gate[w] for W-wise), in fp32.
// T is float or _Float16; the two clones below vectorise it (fp16 through F16C, see cpu_vec.h).
template <typename T>
PYENGINE_INLINE void gate_plane(const T* xp, int64_t sxh, T* op, int64_t soh, int64_t H, int64_t W,
                                const float* gate, bool h_wise) {
  for (int64_t h = 0; h < H; ++h) {
    const T* __restrict xr = xp + h * sxh;
    T* __restrict orow = op + h * soh;
    if (h_wise) {
      const float gh = gate[h];
      for (int64_t w = 0; w < W; ++w) orow[w] = static_cast<T>(static_cast<float>(xr[w]) * gh);
    } else {
      for (int64_t w = 0; w < W; ++w) orow[w] = static_cast<T>(static_cast<float>(xr[w]) * gate[w]);
    }
  }
}

PYENGINE_CLONES void gate_plane_f32(const float* xp, int64_t sxh, float* op, int64_t soh, int64_t H, int64_t W,
                                    const float* gate, bool h_wise) {
  gate_plane(xp, sxh, op, soh, H, W, gate, h_wise);
}

PYENGINE_F16_CLONES void gate_plane_f16(const c10::Half* xp, int64_t sxh, c10::Half* op, int64_t soh, int64_t H,
                                        int64_t W, const float* gate, bool h_wise) {
  gate_plane(reinterpret_cast<const _Float16*>(xp), sxh, reinterpret_cast<_Float16*>(op), soh, H, W, gate, h_wise);
}

struct Params {
  const float *gw, *mw, *mb, *cw, *cb, *lw, *lb;  // lw == nullptr: LayerNorm and sigmoid off
  const int32_t* idx;                              // out channel of each result channel
};

// The three stages of one sample n; the buffers (a and the gate [C, Rp], a plane, q, z) belong to the caller.
template <typename scalar_t>
struct Sample {
  const scalar_t* x;
  scalar_t* out;
  const Geometry& g;
  const Params& p;
  int64_t Rp;
  bool direct;     // x planes are float rows already: read in place
  bool fp32_rows;  // x and out have unit column stride and are float: vectorised gating

  void stripe_channel(int64_t n, int64_t c, float* A, float* plane, float* q) const {
    const scalar_t* xp = x + n * g.sxn + c * g.sxc;
    const float* P = plane;
    int64_t ld = g.W;
    if (direct) {
      P = reinterpret_cast<const float*>(xp);
      ld = g.sxh;
    } else if constexpr (std::is_same<scalar_t, c10::Half>::value) {
      for (int64_t h = 0; h < g.H; ++h) {
        if (g.sxw == 1) {
          half_row_to_float(xp + h * g.sxh, g.W, plane + h * g.W);
        } else {
          for (int64_t w = 0; w < g.W; ++w) plane[h * g.W + w] = static_cast<float>(xp[h * g.sxh + w * g.sxw]);
        }
      }
    } else {
      for (int64_t h = 0; h < g.H; ++h)
        for (int64_t w = 0; w < g.W; ++w) plane[h * g.W + w] = static_cast<float>(xp[h * g.sxh + w * g.sxw]);
    }
    stripe(P, ld, g.H, g.W, g.h_wise, p.gw, p.mw[c], p.mb[c], q, A + c * Rp);
  }

  void gate_block(int64_t r0, const float* A, float* z, float* G) const {
    gate_rows(A, g.C, Rp, r0, p.cw, p.cb, p.lw, p.lb, z, G);
  }

  void apply_channel(int64_t n, int64_t c, const float* G) const {
    const scalar_t* xp = x + n * g.sxn + c * g.sxc;
    scalar_t* op = out + n * g.son + static_cast<int64_t>(p.idx[c]) * g.soc;
    const float* gate = G + c * Rp;
    if (fp32_rows) {
      gate_plane_f32(reinterpret_cast<const float*>(xp), g.sxh, reinterpret_cast<float*>(op), g.soh, g.H, g.W, gate,
                     g.h_wise);
      return;
    }
    if constexpr (std::is_same<scalar_t, c10::Half>::value) {
      if (g.sxw == 1 && g.sow == 1) {
        gate_plane_f16(xp, g.sxh, op, g.soh, g.H, g.W, gate, g.h_wise);
        return;
      }
    }
    for (int64_t h = 0; h < g.H; ++h)
      for (int64_t w = 0; w < g.W; ++w)
        op[h * g.soh + w * g.sow] =
            static_cast<scalar_t>(static_cast<float>(xp[h * g.sxh + w * g.sxw]) * gate[g.h_wise ? h : w]);
  }

  // Channels-last: one row h, walking w then c so that x is read contiguously.
  void apply_row(int64_t n, int64_t h, const float* G) const {
    for (int64_t w = 0; w < g.W; ++w) {
      const scalar_t* xp = x + n * g.sxn + h * g.sxh + w * g.sxw;
      scalar_t* op = out + n * g.son + h * g.soh + w * g.sow;
      const int64_t r = g.h_wise ? h : w;
      for (int64_t c = 0; c < g.C; ++c)
        op[static_cast<int64_t>(p.idx[c]) * g.soc] = static_cast<scalar_t>(static_cast<float>(xp[c * g.sxc]) * G[c * Rp + r]);
    }
  }
};

template <typename scalar_t>
void susa_run(const scalar_t* x, const Geometry& g, const Params& p, bool channels_last, scalar_t* out) {
  const int64_t N = g.N, C = g.C, H = g.H, W = g.W;
  const int64_t R = g.h_wise ? H : W;
  const int64_t Rp = (R + kRowBlock - 1) / kRowBlock * kRowBlock;
  const bool is_f32 = std::is_same<scalar_t, float>::value;
  const Sample<scalar_t> s{x, out, g, p, Rp, is_f32 && g.sxw == 1, is_f32 && g.sxw == 1 && g.sow == 1};
  const bool parallel = N * C * H * W >= kMinParallelWork;
  const int64_t threads = parallel ? omp_get_max_threads() : 1;
  if (N % threads == 0 || N >= 4 * threads) {
    // Whole samples per thread: no synchronisation at all, and the sample's x stays in the thread's L2 cache
    // between its first and second read.
#pragma omp parallel if (parallel)
    {
      std::vector<float> A(C * Rp, 0.0f), G(C * Rp), plane(s.direct ? 0 : H * W), q(std::max(H, W)),
          z(C * kRowBlock);
#pragma omp for schedule(static)
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t c = 0; c < C; ++c) s.stripe_channel(n, c, A.data(), plane.data(), q.data());
        for (int64_t r0 = 0; r0 < R; r0 += kRowBlock) s.gate_block(r0, A.data(), z.data(), G.data());
        if (channels_last)
          for (int64_t h = 0; h < H; ++h) s.apply_row(n, h, G.data());
        else
          for (int64_t c = 0; c < C; ++c) s.apply_channel(n, c, G.data());
      }
    }
    return;
  }
  // Few samples: all threads on one sample at a time, split over channels (stage 1, 3) and row blocks (stage 2).
  // Static schedules give a thread the same channels in stages 1 and 3, so its planes are still in its cache.
  std::vector<float> A(C * Rp, 0.0f), G(C * Rp);  // shared: a, then the gate, of the current sample
#pragma omp parallel if (parallel)
  {
    std::vector<float> plane(s.direct ? 0 : H * W), q(std::max(H, W)), z(C * kRowBlock);
    for (int64_t n = 0; n < N; ++n) {
#pragma omp for schedule(static)
      for (int64_t c = 0; c < C; ++c) s.stripe_channel(n, c, A.data(), plane.data(), q.data());
#pragma omp for schedule(static)
      for (int64_t r0 = 0; r0 < R; r0 += kRowBlock) s.gate_block(r0, A.data(), z.data(), G.data());
      // (implicit barriers: all of a before stage 2, every gate before stage 3, and stage 3 done before the next
      // sample's stage 2 overwrites G)
      if (channels_last) {
#pragma omp for schedule(static)
        for (int64_t h = 0; h < H; ++h) s.apply_row(n, h, G.data());
      } else {
#pragma omp for schedule(static)
        for (int64_t c = 0; c < C; ++c) s.apply_channel(n, c, G.data());
      }
    }
  }
}

void check_param(const torch::Tensor& t, int64_t numel, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat && t.is_contiguous() && t.numel() >= numel,
              "susa_cpu: ", name, " must be a contiguous float32 CPU tensor with at least ", numel, " elements");
}

}  // namespace

// x [N, C, H, W] fp32/fp16/bf16 CPU (any strides); params fp32 contiguous (conv_w [C, C]); ln_w/ln_b both given
// (LN on) or both absent; out [N, C_out, H, W] of x's dtype (any strides); out_index int32 [C] into out's channels.
void susa_cpu(const torch::Tensor& x, const torch::Tensor& group_weight, const torch::Tensor& mean_w,
              const torch::Tensor& mean_b, const torch::Tensor& conv_w, const torch::Tensor& conv_b,
              const c10::optional<torch::Tensor>& ln_w, const c10::optional<torch::Tensor>& ln_b, bool h_wise,
              torch::Tensor& out, const torch::Tensor& out_index) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 4, "susa_cpu: x must be a 4-D CPU tensor");
  TORCH_CHECK(out.device().is_cpu() && out.dim() == 4 && out.scalar_type() == x.scalar_type() &&
                  out.size(0) == x.size(0) && out.size(2) == x.size(2) && out.size(3) == x.size(3),
              "susa_cpu: out must be a CPU tensor [N, C_out, H, W] of x's dtype");
  const int64_t C = x.size(1);
  TORCH_CHECK(out_index.device().is_cpu() && out_index.scalar_type() == torch::kInt && out_index.is_contiguous() &&
                  out_index.numel() == C,
              "susa_cpu: out_index must be a contiguous int32 CPU tensor [C]");
  TORCH_CHECK(ln_w.has_value() == ln_b.has_value(), "susa_cpu: ln_w and ln_b must both be given or both absent");
  Geometry g{x.size(0), C, x.size(2), x.size(3), x.stride(0), x.stride(1), x.stride(2), x.stride(3),
             out.stride(0), out.stride(1), out.stride(2), out.stride(3), h_wise};
  check_param(group_weight, h_wise ? g.H : g.W, "group_weight");
  check_param(mean_w, C, "mean_w");
  check_param(mean_b, C, "mean_b");
  check_param(conv_w, C * C, "conv_w");
  check_param(conv_b, C, "conv_b");
  const float* lw = nullptr;
  const float* lb = nullptr;
  if (ln_w.has_value()) {
    check_param(*ln_w, C, "ln_w");
    check_param(*ln_b, C, "ln_b");
    lw = ln_w->data_ptr<float>();
    lb = ln_b->data_ptr<float>();
  }
  const int32_t* idx = out_index.data_ptr<int32_t>();
  for (int64_t c = 0; c < C; ++c)
    TORCH_CHECK(idx[c] >= 0 && idx[c] < out.size(1), "susa_cpu: out_index[", c, "] = ", idx[c],
                " is outside out's channels [0, ", out.size(1), ")");
  const Params p{group_weight.data_ptr<float>(), mean_w.data_ptr<float>(), mean_b.data_ptr<float>(),
                 conv_w.data_ptr<float>(), conv_b.data_ptr<float>(), lw, lb, idx};
  // Walk order only (any order is correct): channel-fastest when channels have the smallest stride.
  const bool channels_last = x.stride(1) < x.stride(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "susa_cpu", [&] {
    susa_run<scalar_t>(x.data_ptr<scalar_t>(), g, p, channels_last, out.data_ptr<scalar_t>());
  });
}
