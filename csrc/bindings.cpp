// Python bindings of the C++/CUDA kernels (module pyengine._C). The ops are registered as
// torch.library custom ops in Python (pyengine/ops/), which call these raw entry points.
#include <torch/extension.h>

torch::Tensor tpc_select_cpu(const torch::Tensor& x, int64_t keep, int64_t k, int64_t center, bool index_ties,
                             const c10::optional<torch::Tensor>& noise);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("tpc_select_cpu", &tpc_select_cpu, "DPC-kNN token selection on the CPU (OpenMP)", pybind11::arg("x"),
        pybind11::arg("keep"), pybind11::arg("k"), pybind11::arg("center"), pybind11::arg("index_ties"),
        pybind11::arg("noise") = pybind11::none());
}
