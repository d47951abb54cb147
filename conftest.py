"""Test and benchmark configuration, shared by tests/ and benchmarks/.

CI has no GPU: Triton kernels run under the interpreter, which must be switched on before triton is first
imported."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))
if torch.cuda.is_available():  # fp32 references are fp32 on the GPU too (no TF32 in cuBLAS / cuDNN)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False

CUDA_EXT_REASON = "pyengine._C has no CUDA kernels (built without a CUDA torch)"


def _cuda_ext_available():
    try:
        from pyengine import _C
    except ImportError:
        return False
    return hasattr(_C, "tpc_select_cuda")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA device; benchmarks/gpu_suite.py runs `-m gpu` on the "
                                       "GPU box (skipped here without one)")
    config.addinivalue_line("markers", "cuda_ext: needs pyengine._C built with its CUDA kernels (the GPU suite "
                                       "runs these after its background build)")


def pytest_collection_modifyitems(config, items):
    cuda = torch.cuda.is_available()
    ext = None
    for item in items:
        if item.get_closest_marker("gpu") and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (run by benchmarks/gpu_suite.py there)"))
        elif item.get_closest_marker("cuda_ext"):
            ext = _cuda_ext_available() if ext is None else ext
            if not ext:
                item.add_marker(pytest.mark.skip(reason=CUDA_EXT_REASON))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
