// DPC-kNN token selection on the CPU (OpenMP over samples): the C++ implementation of pyengine::tpc_select.
//
// Same algorithm and rules as the eager reference pyengine/models/tpc.py (SPEC.md §2):
//   D_ij   = sqrt(sum_c (x_ic - x_jc)^2) / sqrt(C), computed once per pair and mirrored, so D_ij == D_ji bit for
//            bit and D_ii == 0 (ties between mutual nearest neighbours then arise exactly as in the reference);
//   rho_i  = exp(-mean of the k smallest D_i.^2) (+ noise_i when a noise tensor is given);
//   delta_i= min over the tokens denser than i of D_ij, or the largest D of the sample if none is denser;
//            "denser": rho_j > rho_i, or (tie_break == index) rho_j == rho_i and j < i;
//   score  = delta * rho; the keep highest scores win (equal scores: lower index), sorted ascending.
//   Non-finite features: a NaN distance counts as +inf (D_ii stays 0), a NaN score as -inf (below every number).
//   With center >= 0 the centre is excluded from the ranking, keep - 1 others are chosen, and it is added back.
// Distances are accumulated in 16 vectorisable partial sums (summed in double) and rounded to the input precision;
// the selection equals the reference's wherever the scores are not within rounding of each other.
#include <torch/types.h>  // not torch/extension.h: that adds torch/all.h and pybind11, 4x the compile time

#include "cpu_vec.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

// Sum of squared differences with kLanes independent partial sums (a fixed order, so the result is deterministic),
// which the compiler vectorises without -ffast-math; lanes are added in double. target_clones builds AVX2 and
// AVX-512 variants beside the baseline and picks one at load time (same order of operations in each, so the
// same result; FMA contraction is disabled for the same reason).
constexpr int64_t kLanes = 16;

template <typename scalar_t>
inline double squared_distance_impl(const scalar_t* a, const scalar_t* b, int64_t C) {
  scalar_t lane[kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= C; c += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      const scalar_t d = a[c + l] - b[c + l];
      lane[l] += d * d;
    }
  }
  double acc = 0.0;
  for (; c < C; ++c) {
    const double d = static_cast<double>(a[c]) - static_cast<double>(b[c]);
    acc += d * d;
  }
  for (int64_t l = 0; l < kLanes; ++l) acc += static_cast<double>(lane[l]);
  return acc;
}

// The same sums for the four pairs (a, b), (a, b + C), (a, b + 2C), (a, b + 3C) at once: every pair's operations and
// their order are exactly those of squared_distance_impl (so the results are identical), but each loaded element
// of a serves four pairs and the four lane vectors keep the vector units busy.
template <typename scalar_t>
inline void squared_distance4_impl(const scalar_t* a, const scalar_t* b, int64_t C, double* out) {
  scalar_t lane[4][kLanes] = {};
  int64_t c = 0;
  for (; c + kLanes <= C; c += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      const scalar_t ai = a[c + l];
      for (int64_t p = 0; p < 4; ++p) {
        const scalar_t d = ai - b[p * C + c + l];
        lane[p][l] += d * d;
      }
    }
  }
  for (int64_t p = 0; p < 4; ++p) {
    double acc = 0.0;
    for (int64_t t = c; t < C; ++t) {
      const double d = static_cast<double>(a[t]) - static_cast<double>(b[p * C + t]);
      acc += d * d;
    }
    for (int64_t l = 0; l < kLanes; ++l) acc += static_cast<double>(lane[p][l]);
    out[p] = acc;
  }
}

PYENGINE_CLONES double squared_distance(const float* a, const float* b, int64_t C) {
  return squared_distance_impl(a, b, C);
}

PYENGINE_CLONES double squared_distance(const double* a, const double* b, int64_t C) {
  return squared_distance_impl(a, b, C);
}

PYENGINE_CLONES void squared_distance4(const float* a, const float* b, int64_t C, double* out) {
  squared_distance4_impl(a, b, C, out);
}

PYENGINE_CLONES void squared_distance4(const double* a, const double* b, int64_t C, double* out) {
  squared_distance4_impl(a, b, C, out);
}

// Non-finite features (docs/tpc.md): a NaN distance (a NaN feature, inf - inf) is stored as +inf, a NaN score
// (inf * 0) ranks as -inf, so the sorts below always compare numbers (a NaN would break std::partial_sort's strict
// weak ordering: undefined behaviour) and the result is the one of the CUDA / Triton kernels and the reference.
template <typename T>
inline T nan_to_inf(T v) {
  return v != v ? std::numeric_limits<T>::infinity() : v;
}

template <typename scalar_t>
void select_one(const scalar_t* x, int64_t N, int64_t C, int64_t keep, int64_t k, int64_t center, bool index_ties,
                const scalar_t* noise, int64_t* out) {
  std::vector<scalar_t> D(N * N);
  const double inv_sqrt_c = 1.0 / std::sqrt(static_cast<double>(C));
  for (int64_t i = 0; i < N; ++i) {
    D[i * N + i] = scalar_t(0);
    const scalar_t* xi = x + i * C;
    int64_t j = i + 1;
    for (; j + 4 <= N; j += 4) {  // four pairs per call (rows j .. j + 3 are contiguous)
      double acc[4];
      squared_distance4(xi, x + j * C, C, acc);
      for (int64_t p = 0; p < 4; ++p) {
        const scalar_t dij = nan_to_inf(static_cast<scalar_t>(std::sqrt(acc[p]) * inv_sqrt_c));
        D[i * N + j + p] = dij;
        D[(j + p) * N + i] = dij;
      }
    }
    for (; j < N; ++j) {
      const double acc = squared_distance(xi, x + j * C, C);
      const scalar_t dij = nan_to_inf(static_cast<scalar_t>(std::sqrt(acc) * inv_sqrt_c));
      D[i * N + j] = dij;
      D[j * N + i] = dij;
    }
  }
  std::vector<scalar_t> rho(N), row(N);
  scalar_t dist_max = scalar_t(0);
  for (int64_t i = 0; i < N; ++i) {
    std::copy(D.begin() + i * N, D.begin() + (i + 1) * N, row.begin());
    // The row maximum before the partial sort: after it, row[k..N) is in unspecified order.
    dist_max = std::max(dist_max, *std::max_element(row.begin(), row.end()));
    std::partial_sort(row.begin(), row.begin() + k, row.end());
    double mean_sq = 0.0;
    for (int64_t t = 0; t < k; ++t) mean_sq += static_cast<double>(row[t]) * static_cast<double>(row[t]);
    rho[i] = static_cast<scalar_t>(std::exp(-mean_sq / static_cast<double>(k)));
    if (noise != nullptr) rho[i] = rho[i] + noise[i];
  }
  std::vector<double> score(N);
  for (int64_t i = 0; i < N; ++i) {
    scalar_t delta = dist_max;
    for (int64_t j = 0; j < N; ++j) {
      const bool denser = rho[j] > rho[i] || (index_ties && rho[j] == rho[i] && j < i);
      if (denser && D[i * N + j] < delta) delta = D[i * N + j];
    }
    const double s = static_cast<double>(static_cast<scalar_t>(delta * rho[i]));  // rounded like the reference
    score[i] = s != s ? -std::numeric_limits<double>::infinity() : s;
  }
  std::vector<int64_t> order;
  order.reserve(N);
  for (int64_t i = 0; i < N; ++i)
    if (i != center) order.push_back(i);
  const int64_t n_rank = center >= 0 ? keep - 1 : keep;
  std::partial_sort(order.begin(), order.begin() + n_rank, order.end(), [&](int64_t a, int64_t b) {
    return score[a] > score[b] || (score[a] == score[b] && a < b);
  });
  order.resize(n_rank);
  if (center >= 0) order.push_back(center);
  std::sort(order.begin(), order.end());
  std::copy(order.begin(), order.end(), out);
}

// One sample per OpenMP task (a pragma cannot sit inside the AT_DISPATCH macro's lambda).
template <typename scalar_t>
void select_batch(const scalar_t* x, int64_t B, int64_t N, int64_t C, int64_t keep, int64_t k, int64_t center,
                  bool index_ties, const scalar_t* noise, int64_t* out) {
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t b = 0; b < B; ++b) {
    select_one<scalar_t>(x + b * N * C, N, C, keep, k, center, index_ties, noise ? noise + b * N : nullptr,
                         out + b * keep);
  }
}

}  // namespace

// x [B, N, C] float32/float64 contiguous CPU; noise: empty or [B, N] of x's dtype. Returns int64 [B, keep].
torch::Tensor tpc_select_cpu(const torch::Tensor& x, int64_t keep, int64_t k, int64_t center, bool index_ties,
                             const c10::optional<torch::Tensor>& noise) {
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 3 && x.is_contiguous(), "tpc_select_cpu: x must be a contiguous "
              "CPU tensor [B, N, C]");
  TORCH_CHECK(x.scalar_type() == torch::kFloat || x.scalar_type() == torch::kDouble,
              "tpc_select_cpu: x must be float32 or float64");
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  TORCH_CHECK(keep >= 1 && keep <= N && k >= 1 && k <= N && center >= -1 && center < N,
              "tpc_select_cpu: bad keep / k / center");
  if (noise.has_value()) {
    TORCH_CHECK(noise->scalar_type() == x.scalar_type() && noise->is_contiguous() && noise->dim() == 2 &&
                    noise->size(0) == B && noise->size(1) == N,
                "tpc_select_cpu: noise must be a contiguous [B, N] tensor of x's dtype");
  }
  auto out = torch::empty({B, keep}, x.options().dtype(torch::kLong));
  int64_t* out_ptr = out.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tpc_select_cpu", [&] {
    select_batch<scalar_t>(x.data_ptr<scalar_t>(), B, N, C, keep, k, center, index_ties,
                           noise.has_value() ? noise->data_ptr<scalar_t>() : nullptr, out_ptr);
  });
  return out;
}
