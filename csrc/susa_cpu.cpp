// Fused SUSA on the CPU (OpenMP): the C++ implementation of pyengine::susa / pyengine::susa_into (SPEC.md §3).
//
// Rows r carry the gate, stripe positions s carry the softmax: H-wise r = h, s = w; W-wise r = w, s = h.
//   stage 1, per (n, c): copy the [R, S] plane to a float buffer (first read of x),
//            q[s] = softmax_s(mean_w[c] * sum_r x[r, s] g[r] / R + mean_b[c]), a[r] = sum_s x[r, s] q[s];
//   stage 2, per (n, r): z = conv_w @ a[:, r] + conv_b, LayerNorm over C (eps 1e-5) and sigmoid (LN on),
//            written over a in place (the gate);
//   stage 3, per (n, c) or per (n, h) for channels-last: out[n, out_index[c], h, w] = x * gate (second read of x,
//            single write of out).
// x and out may have any strides (channel slices, channels-last); all arithmetic is fp32.
#include <torch/extension.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

struct Geometry {
  int64_t N, C, H, W;
  int64_t sxn, sxc, sxh, sxw;  // x strides
  int64_t son, soc, soh, sow;  // out strides
  bool h_wise;
};

// Dot product with kLanes independent partial sums: without -ffast-math a single accumulator is a serial chain
// of dependent adds; the lanes let the compiler vectorise (a fixed order, so results are deterministic).
constexpr int64_t kLanes = 8;

inline float dot(const float* a, const float* b, int64_t n) {
  float lane[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int64_t l = 0; l < kLanes; ++l) lane[l] += a[i + l] * b[i + l];
  float acc = 0.0f;
  for (; i < n; ++i) acc += a[i] * b[i];
  for (int64_t l = 0; l < kLanes; ++l) acc += lane[l];
  return acc;
}

template <typename scalar_t>
void stripe_stage(const scalar_t* x, const Geometry& g, const float* gw, const float* mw, const float* mb,
                  float* a) {
  const int64_t R = g.h_wise ? g.H : g.W, S = g.h_wise ? g.W : g.H;
  const int64_t sr = g.h_wise ? g.sxh : g.sxw, ss = g.h_wise ? g.sxw : g.sxh;
#pragma omp parallel
  {
    std::vector<float> plane(R * S), q(S);
#pragma omp for schedule(static)
    for (int64_t nc = 0; nc < g.N * g.C; ++nc) {
      const int64_t n = nc / g.C, c = nc % g.C;
      const scalar_t* xp = x + n * g.sxn + c * g.sxc;
      // Copy the plane to float and accumulate the weighted row sum in the same pass.
      std::fill(q.begin(), q.end(), 0.0f);
      for (int64_t r = 0; r < R; ++r) {
        const float gr = gw[r];
        float* row = plane.data() + r * S;
        const scalar_t* xr = xp + r * sr;
        if (ss == 1) {  // contiguous stripes (H-wise NCHW): vectorisable
          for (int64_t s = 0; s < S; ++s) {
            row[s] = static_cast<float>(xr[s]);
            q[s] += row[s] * gr;
          }
        } else {
          for (int64_t s = 0; s < S; ++s) {
            row[s] = static_cast<float>(xr[s * ss]);
            q[s] += row[s] * gr;
          }
        }
      }
      float qmax = -INFINITY;
      for (int64_t s = 0; s < S; ++s) {
        q[s] = q[s] / static_cast<float>(R) * mw[c] + mb[c];
        qmax = std::max(qmax, q[s]);
      }
      float denom = 0.0f;
      for (int64_t s = 0; s < S; ++s) {
        q[s] = std::exp(q[s] - qmax);
        denom += q[s];
      }
      const float inv = 1.0f / denom;
      for (int64_t s = 0; s < S; ++s) q[s] *= inv;
      float* ap = a + nc * R;
      for (int64_t r = 0; r < R; ++r) ap[r] = dot(plane.data() + r * S, q.data(), S);
    }
  }
}

void gate_stage(const Geometry& g, const float* cw, const float* cb, const float* lw, const float* lb,
                float* a) {
  const int64_t C = g.C, R = g.h_wise ? g.H : g.W;
#pragma omp parallel
  {
    std::vector<float> col(C), z(C);
#pragma omp for schedule(static)
    for (int64_t nr = 0; nr < g.N * R; ++nr) {
      const int64_t n = nr / R, r = nr % R;
      float* ap = a + n * C * R + r;
      for (int64_t c = 0; c < C; ++c) col[c] = ap[c * R];
      for (int64_t d = 0; d < C; ++d) z[d] = dot(cw + d * C, col.data(), C) + cb[d];
      if (lw != nullptr) {
        float mu = 0.0f;
        for (int64_t d = 0; d < C; ++d) mu += z[d];
        mu /= static_cast<float>(C);
        float var = 0.0f;
        for (int64_t d = 0; d < C; ++d) var += (z[d] - mu) * (z[d] - mu);
        var /= static_cast<float>(C);
        const float rstd = 1.0f / std::sqrt(var + 1e-5f);
        for (int64_t d = 0; d < C; ++d) {
          const float y = (z[d] - mu) * rstd * lw[d] + lb[d];
          z[d] = 1.0f / (1.0f + std::exp(-y));
        }
      }
      for (int64_t d = 0; d < C; ++d) ap[d * R] = z[d];
    }
  }
}

template <typename scalar_t>
void apply_stage(const scalar_t* x, const Geometry& g, const float* gate, const int32_t* idx, bool channels_last,
                 scalar_t* out) {
  const int64_t R = g.h_wise ? g.H : g.W;
  if (!channels_last) {
#pragma omp parallel for schedule(static)
    for (int64_t nc = 0; nc < g.N * g.C; ++nc) {
      const int64_t n = nc / g.C, c = nc % g.C;
      const scalar_t* xp = x + n * g.sxn + c * g.sxc;
      scalar_t* op = out + n * g.son + static_cast<int64_t>(idx[c]) * g.soc;
      const float* gp = gate + nc * R;
      if (g.sxw == 1 && g.sow == 1) {  // contiguous rows: vectorisable inner loops
        for (int64_t h = 0; h < g.H; ++h) {
          const scalar_t* xr = xp + h * g.sxh;
          scalar_t* orow = op + h * g.soh;
          if (g.h_wise) {
            const float gh = gp[h];
            for (int64_t w = 0; w < g.W; ++w) orow[w] = static_cast<scalar_t>(static_cast<float>(xr[w]) * gh);
          } else {
            for (int64_t w = 0; w < g.W; ++w) orow[w] = static_cast<scalar_t>(static_cast<float>(xr[w]) * gp[w]);
          }
        }
      } else {
        for (int64_t h = 0; h < g.H; ++h)
          for (int64_t w = 0; w < g.W; ++w)
            op[h * g.soh + w * g.sow] =
                static_cast<scalar_t>(static_cast<float>(xp[h * g.sxh + w * g.sxw]) * gp[g.h_wise ? h : w]);
      }
    }
  } else {
    // Channels-last: walk (n, h), then w, then c, so x is read contiguously.
#pragma omp parallel for schedule(static)
    for (int64_t nh = 0; nh < g.N * g.H; ++nh) {
      const int64_t n = nh / g.H, h = nh % g.H;
      const float* gn = gate + n * g.C * R;
      for (int64_t w = 0; w < g.W; ++w) {
        const scalar_t* xp = x + n * g.sxn + h * g.sxh + w * g.sxw;
        scalar_t* op = out + n * g.son + h * g.soh + w * g.sow;
        const int64_t r = g.h_wise ? h : w;
        for (int64_t c = 0; c < g.C; ++c)
          op[static_cast<int64_t>(idx[c]) * g.soc] =
              static_cast<scalar_t>(static_cast<float>(xp[c * g.sxc]) * gn[c * R + r]);
      }
    }
  }
}

template <typename scalar_t>
void susa_run(const torch::Tensor& x, const Geometry& g, const float* gw, const float* mw, const float* mb,
              const float* cw, const float* cb, const float* lw, const float* lb, const int32_t* idx,
              torch::Tensor& out) {
  const int64_t R = g.h_wise ? g.H : g.W;
  std::vector<float> scratch(g.N * g.C * R);
  const scalar_t* xp = x.data_ptr<scalar_t>();
  stripe_stage<scalar_t>(xp, g, gw, mw, mb, scratch.data());
  gate_stage(g, cw, cb, lw, lb, scratch.data());
  // Walk order only (any order is correct): channel-fastest when channels have the smallest stride.
  const bool channels_last = x.stride(1) < x.stride(3);
  apply_stage<scalar_t>(xp, g, scratch.data(), idx, channels_last, out.data_ptr<scalar_t>());
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::ScalarType::Half, at::ScalarType::BFloat16, x.scalar_type(), "susa_cpu", [&] {
    susa_run<scalar_t>(x, g, group_weight.data_ptr<float>(), mean_w.data_ptr<float>(), mean_b.data_ptr<float>(),
                       conv_w.data_ptr<float>(), conv_b.data_ptr<float>(), lw, lb, idx, out);
  });
}
