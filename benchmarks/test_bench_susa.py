"""SUSA, side by side: the eager reference modules vs the fused pyengine::susa implementations.

* CPU (issue 5's CPU target: C++ at least 3x faster than eager): batch 8, 40 channels at 64x48, for H-wise and
  W-wise SUSA (drop-in ``pyengine.nn.susa.*`` with backend="cpp" vs ``pyengine.models.susa.*``) and for the
  sequential and the parallel X-shuffle unit (40 channels in, their SUSAs on 20); fp32 (the target), fp16, bf16
  and channels-last fp32.
* GPU (skipped without CUDA): batch 64 at the X-HRNet-18 branch sizes (20 @ 64x48, 40 @ 32x24, 80 @ 16x12,
  160 @ 8x6): eager, torch.compile of the eager module, Triton, CUDA.

Timing and ``extra_info`` follow benchmarks/common.py (docs/benchmarks.md): ``bytes`` is the compulsory traffic
(weights + x read once + output written once); for H/W-SUSA ``bytes_moved`` is what the fused kernels move per
call (x read twice, the output written once, the fp32 row scratch written, read and rewritten by the gate
kernel and read once more, the weights): divide by the median time for the achieved bandwidth.
Run: ``.venv/bin/python -m pytest benchmarks/test_bench_susa.py``"""
import pytest
import torch
from common import time_rows

from pyengine.backends import cpp_extension
from pyengine.models import susa as ref
from pyengine.nn import susa as dn
from pyengine.testing import randomize_

CPU_SHAPE = (8, 40, 64, 48)
GPU_SIZES = {"C20-64x48": (20, 64, 48), "C40-32x24": (40, 32, 24), "C80-16x12": (80, 16, 12), "C160-8x6": (160, 8, 6)}
GPU_BATCH = 64
ROTATION = 4  # distinct inputs per row (benchmarks/common.py)


def extra(kind, impl, variant, n, c, h, w, module, itemsize=4):
    """extra_info: report.py's keys (``bytes``: compulsory traffic, weights + input + output) and, for the SUSA
    modules, ``bytes_moved`` (the fused kernels' traffic, see the module docstring)."""
    x = n * c * h * w * itemsize
    weights = sum(p.numel() * p.element_size() for p in module.parameters())
    info = {"impl": impl, "variant": variant, "dtype": "float32", "bytes": 2 * x + weights, "case": kind}
    if kind in ("HSUSA", "WSUSA"):
        info["bytes_moved"] = 3 * x + 4 * n * c * (h if kind == "HSUSA" else w) * 4 + weights
    return info


def make(kind, c, backend):
    args = (c, c) if kind.endswith("Unit") else (c,)
    r = randomize_(getattr(ref, kind)(*args)).eval()
    return r if backend == "eager" else getattr(dn, kind).from_reference(r, backend=backend)


CPU_VARIANTS = {"fp32": (torch.float32, False), "fp16": (torch.float16, False), "bf16": (torch.bfloat16, False),
                "fp32-channels_last": (torch.float32, True)}


@pytest.mark.parametrize("variant", list(CPU_VARIANTS))
@pytest.mark.parametrize("impl", ["eager", "cpp"])
@pytest.mark.parametrize("kind", ["HSUSA", "WSUSA", "SXShuffleUnit", "PXShuffleUnit"])
def test_susa_cpu(benchmark, kind, impl, variant):
    n, c, h, w = CPU_SHAPE
    dtype, channels_last = CPU_VARIANTS[variant]
    m = make(kind, c, impl).to(dtype)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    inputs = [torch.randn(n, c, h, w).to(dtype).contiguous(memory_format=fmt) for _ in range(ROTATION)]
    label = impl + ("-channels_last" if channels_last else "")
    info = extra(kind, "eager" if impl == "eager" else "pyengine", label, n, c, h, w, m, dtype.itemsize)
    info["dtype"] = str(dtype).removeprefix("torch.")
    out = time_rows(benchmark, m, inputs, group=f"susa cpu {kind} B{n}-C{c}-{h}x{w} {variant}", extra=info,
                    device="cpu")
    assert out.shape == inputs[0].shape and out.dtype == dtype


@pytest.mark.parametrize("impl", ["eager", "compile", "triton", "cuda"])
@pytest.mark.parametrize("size", list(GPU_SIZES))
@pytest.mark.parametrize("kind", ["HSUSA", "WSUSA"])
def test_susa_gpu(benchmark, kind, size, impl):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the GPU rows need one")
    if impl == "cuda" and not hasattr(cpp_extension(), "susa_cuda"):
        pytest.skip("pyengine._C was built without CUDA (torch without CUDA at build time)")
    c, h, w = GPU_SIZES[size]
    m = make(kind, c, "eager" if impl in ("eager", "compile") else impl).cuda()
    fn = torch.compile(m, dynamic=False) if impl == "compile" else m
    inputs = [torch.randn(GPU_BATCH, c, h, w, device="cuda") for _ in range(ROTATION)]
    variant = {"eager": "fp32", "compile": "default"}.get(impl, impl)
    info = extra(kind, impl if impl in ("eager", "compile") else "pyengine", variant, GPU_BATCH, c, h, w, m)
    out = time_rows(benchmark, fn, inputs, group=f"susa gpu {kind} B{GPU_BATCH}-{size}", extra=info, device="cuda",
                    warmup=5 if impl == "compile" else 2)
    assert out.shape == inputs[0].shape
