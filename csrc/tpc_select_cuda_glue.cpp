// Torch-facing glue of the CUDA DPC-kNN selection (csrc/tpc_select_cuda.cu): checks the tensors, allocates the
// distance scratch and the output, and queues the raw-pointer launcher on the current stream. Compiled only when
// the extension is built against a CUDA torch (setup.py defines PYENGINE_WITH_CUDA then).
#ifdef PYENGINE_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <torch/extension.h>

#include <algorithm>

cudaError_t tpc_select_cuda_launch(const float* x, const float* noise, float* dist_scratch, int scratch_batch,
                                   int64_t* out, int B, int F, int C, int keep, int k, int center, bool index_ties,
                                   cudaStream_t stream);

// At most this many floats (256 MiB) of [chunk, N, N] distance scratch per call: a larger batch runs in chunks that
// reuse it (the Triton launcher's SCRATCH_FLOATS, kernels/tpc_select.py).
constexpr int64_t kScratchFloats = int64_t(1) << 26;

// x [B, N, C] float32 contiguous CUDA; noise: empty or [B, N] float32 on x's device. Returns int64 [B, keep].
torch::Tensor tpc_select_cuda(const torch::Tensor& x, int64_t keep, int64_t k, int64_t center, bool index_ties,
                              const c10::optional<torch::Tensor>& noise) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 3 && x.is_contiguous(), "tpc_select_cuda: x must be a contiguous CUDA "
              "tensor [B, N, C], got ", x.sizes(), " on ", x.device());
  TORCH_CHECK(x.scalar_type() == torch::kFloat, "tpc_select_cuda: x must be float32, got ", x.scalar_type());
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2);
  TORCH_CHECK(N >= 1 && N <= 1024, "tpc_select_cuda: N must be in [1, 1024], got ", N);
  TORCH_CHECK(C >= 1 && C <= INT32_MAX && B <= INT32_MAX, "tpc_select_cuda: bad x shape ", x.sizes());
  TORCH_CHECK(keep >= 1 && keep <= N && k >= 1 && k <= N && center >= -1 && center < N,
              "tpc_select_cuda: bad keep / k / center (", keep, ", ", k, ", ", center, ") for N=", N);
  const float* noise_ptr = nullptr;
  if (noise.has_value()) {
    TORCH_CHECK(noise->scalar_type() == torch::kFloat && noise->is_contiguous() && noise->dim() == 2 &&
                    noise->size(0) == B && noise->size(1) == N && noise->device() == x.device(),
                "tpc_select_cuda: noise must be a contiguous float32 [B, N] tensor on x's device");
    noise_ptr = noise->data_ptr<float>();
  }
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = torch::empty({B, keep}, x.options().dtype(torch::kLong));
  if (B == 0) return out;
  const int64_t chunk = std::min(B, std::max<int64_t>(1, kScratchFloats / (N * N)));
  auto dist = torch::empty({chunk, N, N}, x.options());
  const cudaError_t err = tpc_select_cuda_launch(
      x.data_ptr<float>(), noise_ptr, dist.data_ptr<float>(), static_cast<int>(chunk), out.data_ptr<int64_t>(),
      static_cast<int>(B),
      static_cast<int>(N), static_cast<int>(C), static_cast<int>(keep), static_cast<int>(k),
      static_cast<int>(center), index_ties, c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "tpc_select_cuda: kernel launch failed: ", cudaGetErrorString(err));
  return out;
}
#endif  // PYENGINE_WITH_CUDA
