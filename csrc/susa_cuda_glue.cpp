// Torch glue of the CUDA SUSA (csrc/susa_cuda.cu): argument checks, scratch allocation, current stream. Compiled
// into pyengine._C only when torch has CUDA (setup.py defines PYENGINE_WITH_CUDA then).
#ifdef PYENGINE_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>

int susa_cuda_launch(int dtype, const void* x, void* out, const int32_t* out_index, const float* gw,
                     const float* mw, const float* mb, const float* cw, const float* cb, const float* lw,
                     const float* lb, float* scratch, long long N, long long C, long long C_out, long long H,
                     long long W, const long long* xs, const long long* os, bool h_wise, bool channels_last,
                     void* stream);

namespace {

void check_cuda_param(const torch::Tensor& t, const torch::Tensor& x, int64_t numel, const char* name) {
  TORCH_CHECK(t.device() == x.device() && t.scalar_type() == torch::kFloat && t.is_contiguous() &&
                  t.numel() >= numel,
              "susa_cuda: ", name, " must be a contiguous float32 tensor on ", x.device(), " with at least ", numel,
              " elements");
}

}  // namespace

// Same contract as susa_cpu (csrc/susa_cpu.cpp), for CUDA tensors.
void susa_cuda(const torch::Tensor& x, const torch::Tensor& group_weight, const torch::Tensor& mean_w,
               const torch::Tensor& mean_b, const torch::Tensor& conv_w, const torch::Tensor& conv_b,
               const c10::optional<torch::Tensor>& ln_w, const c10::optional<torch::Tensor>& ln_b, bool h_wise,
               torch::Tensor& out, const torch::Tensor& out_index) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 4, "susa_cuda: x must be a 4-D CUDA tensor");
  TORCH_CHECK(out.device() == x.device() && out.dim() == 4 && out.scalar_type() == x.scalar_type() &&
                  out.size(0) == x.size(0) && out.size(2) == x.size(2) && out.size(3) == x.size(3),
              "susa_cuda: out must be a tensor [N, C_out, H, W] of x's dtype on x's device");
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t R = h_wise ? H : W;
  TORCH_CHECK(out_index.device() == x.device() && out_index.scalar_type() == torch::kInt &&
                  out_index.is_contiguous() && out_index.numel() == C,
              "susa_cuda: out_index must be a contiguous int32 tensor [C] on x's device");
  TORCH_CHECK(ln_w.has_value() == ln_b.has_value(), "susa_cuda: ln_w and ln_b must both be given or both absent");
  TORCH_CHECK(N * C <= INT32_MAX && N * R <= INT32_MAX, "susa_cuda: N * C and N * R must fit a CUDA grid");
  TORCH_CHECK((H * W + std::max(H, W)) * 4 <= 227 * 1024, "susa_cuda: the H x W plane must fit in shared memory");
  check_cuda_param(group_weight, x, R, "group_weight");
  check_cuda_param(mean_w, x, C, "mean_w");
  check_cuda_param(mean_b, x, C, "mean_b");
  check_cuda_param(conv_w, x, C * C, "conv_w");
  check_cuda_param(conv_b, x, C, "conv_b");
  const float* lw = nullptr;
  const float* lb = nullptr;
  if (ln_w.has_value()) {
    check_cuda_param(*ln_w, x, C, "ln_w");
    check_cuda_param(*ln_b, x, C, "ln_b");
    lw = ln_w->data_ptr<float>();
    lb = ln_b->data_ptr<float>();
  }
  int dtype;
  switch (x.scalar_type()) {
    case torch::kFloat: dtype = 0; break;
    case torch::kHalf: dtype = 1; break;
    case torch::kBFloat16: dtype = 2; break;
    default: TORCH_CHECK(false, "susa_cuda: x must be float32, float16 or bfloat16, got ", x.scalar_type());
  }
  const c10::cuda::CUDAGuard guard(x.device());
  auto scratch = torch::empty({N, C, R}, x.options().dtype(torch::kFloat));
  const long long xs[4] = {x.stride(0), x.stride(1), x.stride(2), x.stride(3)};
  const long long os[4] = {out.stride(0), out.stride(1), out.stride(2), out.stride(3)};
  // Walk order only (any order is correct): channel-fastest when channels have the smallest stride.
  const bool channels_last = x.stride(1) < x.stride(3);
  const int err = susa_cuda_launch(dtype, x.data_ptr(), out.data_ptr(), out_index.data_ptr<int32_t>(),
                                   group_weight.data_ptr<float>(), mean_w.data_ptr<float>(), mean_b.data_ptr<float>(),
                                   conv_w.data_ptr<float>(), conv_b.data_ptr<float>(), lw, lb,
                                   scratch.data_ptr<float>(), N, C, out.size(1), H, W, xs, os, h_wise, channels_last,
                                   c10::cuda::getCurrentCUDAStream().stream());
  TORCH_CHECK(err == 0, "susa_cuda: kernel launch failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}
#endif  // PYENGINE_WITH_CUDA
