// Python bindings of the C++/CUDA kernels (module pyengine._C). The ops are registered as
// torch.library custom ops in Python (pyengine/ops/), which call these raw entry points.
#include <torch/extension.h>

torch::Tensor tpc_select_cpu(const torch::Tensor& x, int64_t keep, int64_t k, int64_t center, bool index_ties,
                             const c10::optional<torch::Tensor>& noise);
#ifdef PYENGINE_WITH_CUDA
// csrc/tpc_select_cuda_glue.cpp + csrc/tpc_select_cuda.cu
torch::Tensor tpc_select_cuda(const torch::Tensor& x, int64_t keep, int64_t k, int64_t center, bool index_ties,
                              const c10::optional<torch::Tensor>& noise);
#endif

// SUSA (csrc/susa_cpu.cpp; CUDA: csrc/susa_cuda_glue.cpp + csrc/susa_cuda.cu). Writes out[:, out_index[c]].
void susa_cpu(const torch::Tensor& x, const torch::Tensor& group_weight, const torch::Tensor& mean_w,
              const torch::Tensor& mean_b, const torch::Tensor& conv_w, const torch::Tensor& conv_b,
              const c10::optional<torch::Tensor>& ln_w, const c10::optional<torch::Tensor>& ln_b, bool h_wise,
              torch::Tensor& out, const torch::Tensor& out_index);
// 3x3 depthwise conv, stride 1, padding 1, with bias (csrc/dwconv3x3_cpu.cpp). Writes out.
void dwconv3x3_cpu(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                   torch::Tensor& out);
// Grouped LayerNorm of strided column slices (csrc/group_layernorm_cpu.cpp). Returns / writes out [M, G*K].
torch::Tensor group_layernorm_cpu(const torch::Tensor& x, const std::vector<int64_t>& in_cols,
                                  const torch::Tensor& weight, const torch::Tensor& bias, double eps,
                                  c10::optional<torch::Tensor> out);
// Its vector width ("avx512" / "avx2" / "baseline"); a non-empty name switches to it (tests: same bits at all).
std::string group_layernorm_cpu_kernels(const std::string& use);
// Multi-head attention over [B, G, N, H, D] strided views (csrc/attention_cpu.cpp). Returns [B, Nq, G, H, D].
torch::Tensor attention_cpu(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);
// Its kernel width ("avx512" / "avx2" / "baseline"); a non-empty name switches to it (tests: same bits at all).
std::string attention_cpu_kernels(const std::string& use);
// The same with AMX bf16 tiles (csrc/attention_amx.cpp): bf16 only, D <= 256, writes out [B, Nq, G, H, D] (any
// strides, unit last-dim stride). Runs only where amx_bf16_available() (CPUID + the Linux tile-data permission).
void attention_amx_cpu(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, torch::Tensor& out);
bool amx_bf16_available();
#ifdef PYENGINE_WITH_CUDA
void susa_cuda(const torch::Tensor& x, const torch::Tensor& group_weight, const torch::Tensor& mean_w,
               const torch::Tensor& mean_b, const torch::Tensor& conv_w, const torch::Tensor& conv_b,
               const c10::optional<torch::Tensor>& ln_w, const c10::optional<torch::Tensor>& ln_b, bool h_wise,
               torch::Tensor& out, const torch::Tensor& out_index);
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("tpc_select_cpu", &tpc_select_cpu, "DPC-kNN token selection on the CPU (OpenMP)", pybind11::arg("x"),
        pybind11::arg("keep"), pybind11::arg("k"), pybind11::arg("center"), pybind11::arg("index_ties"),
        pybind11::arg("noise") = pybind11::none());
#ifdef PYENGINE_WITH_CUDA
  m.def("tpc_select_cuda", &tpc_select_cuda, "DPC-kNN token selection on CUDA", pybind11::arg("x"),
        pybind11::arg("keep"), pybind11::arg("k"), pybind11::arg("center"), pybind11::arg("index_ties"),
        pybind11::arg("noise") = pybind11::none());
#endif
  m.def("susa_cpu", &susa_cpu, "Fused SUSA on the CPU (OpenMP), writes out[:, out_index]", pybind11::arg("x"),
        pybind11::arg("group_weight"), pybind11::arg("mean_w"), pybind11::arg("mean_b"), pybind11::arg("conv_w"),
        pybind11::arg("conv_b"), pybind11::arg("ln_w"), pybind11::arg("ln_b"), pybind11::arg("h_wise"),
        pybind11::arg("out"), pybind11::arg("out_index"));
#ifdef PYENGINE_WITH_CUDA
  m.def("susa_cuda", &susa_cuda, "Fused SUSA on CUDA, writes out[:, out_index]", pybind11::arg("x"),
        pybind11::arg("group_weight"), pybind11::arg("mean_w"), pybind11::arg("mean_b"), pybind11::arg("conv_w"),
        pybind11::arg("conv_b"), pybind11::arg("ln_w"), pybind11::arg("ln_b"), pybind11::arg("h_wise"),
        pybind11::arg("out"), pybind11::arg("out_index"));
#endif
  m.def("dwconv3x3_cpu", &dwconv3x3_cpu, "3x3 depthwise conv (stride 1, padding 1, bias) on the CPU (OpenMP), "
        "writes out", pybind11::arg("x"), pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("out"));
  m.def("group_layernorm_cpu", &group_layernorm_cpu, "grouped LayerNorm of strided column slices on the CPU "
        "(OpenMP), returns (or writes) out [M, G*K]", pybind11::arg("x"), pybind11::arg("in_cols"),
        pybind11::arg("weight"), pybind11::arg("bias"), pybind11::arg("eps"), pybind11::arg("out") = pybind11::none());
  m.def("group_layernorm_cpu_kernels", &group_layernorm_cpu_kernels, "the vector width group_layernorm_cpu runs "
        "(avx512, avx2, baseline); a name switches to it first (it must run on this CPU)", pybind11::arg("use") = "");
  m.def("attention_cpu", &attention_cpu, "softmax(q k^T * D^-0.5) v over [B, G, N, H, D] views on the CPU "
        "(OpenMP), returns [B, Nq, G, H, D]", pybind11::arg("q"), pybind11::arg("k"), pybind11::arg("v"));
  m.def("attention_cpu_kernels", &attention_cpu_kernels, "the kernel width attention_cpu runs (avx512, avx2, "
        "baseline); a name switches to it first (it must run on this CPU)", pybind11::arg("use") = "");
  m.def("attention_amx_cpu", &attention_amx_cpu, "softmax(q k^T * D^-0.5) v over [B, G, N, H, D] bf16 views with "
        "AMX bf16 tiles (OpenMP), writes out [B, Nq, G, H, D]", pybind11::arg("q"), pybind11::arg("k"),
        pybind11::arg("v"), pybind11::arg("out"));
  m.def("amx_bf16_available", &amx_bf16_available, "whether this CPU and OS run AMX-BF16 tiles (CPUID, XCR0, and "
        "Linux's arch_prctl tile-data permission, requested once)");
}
