"""``pyengine::tpc_select``: DPC-kNN token selection (SPEC.md §2, TPC) as one registered op.

Reference: :func:`pyengine.models.tpc.dpc_knn_select` (same rules: exact symmetric distances, ``tie_break``,
``noise``, ``center``). Implementations, chosen by ``impl``:

* ``"cpp"``: ``csrc/tpc_select_cpu.cpp``, OpenMP over samples, for CPU tensors (float32 / float64).
* ``"triton"``: ``kernels/tpc_select.py``, two launches (distance tiles, then one program per sample), for CUDA
  tensors (or CPU tensors under ``TRITON_INTERPRET=1``); float32 / float16 / bfloat16 features, fp32 math.
* ``"cuda"``: ``csrc/tpc_select_cuda.cu`` (glue ``csrc/tpc_select_cuda_glue.cpp``), the same two kernels in CUDA
  C++, for float32 CUDA tensors; present in ``pyengine._C`` only when it was built against a CUDA torch.

All three compute the distances with the same arithmetic (16 fp32 partial sums, fp64 combination, see
``docs/tpc.md``), so they return identical indices, also on exact ties (equal features, mutual nearest
neighbours), and the reference's wherever its scores are not within rounding of each other.
"""
from typing import Optional

import torch

from ..backends import BackendUnavailableError, cpp_extension, device_guard, op_backend
from ..models.tpc import check_select_args, density_noise, dpc_knn_select

tpc_select_ref = dpc_knn_select  # the eager reference, under the op's name (pyengine/models/tpc.py)
IMPLS = ("cpp", "triton", "cuda")
BACKENDS = ("reference",) + IMPLS
GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _cuda_extension():
    ext = cpp_extension()
    if not hasattr(ext, "tpc_select_cuda"):
        raise BackendUnavailableError("tpc_select: backend='cuda' needs pyengine._C built against a CUDA torch "
                                      "(this build has no CUDA kernels)")
    return ext


@torch.library.custom_op("pyengine::tpc_select", mutates_args=())
def tpc_select_op(x: torch.Tensor, keep: int, k: int, center: int, index_ties: bool,
                  noise: Optional[torch.Tensor], impl: str) -> torch.Tensor:
    """Raw op: ``x [B, N, C]`` contiguous (cpp: float32/float64 on CPU; triton: float32/16/bf16; cuda: float32 on
    CUDA), ``center`` -1 for none, ``noise`` None or ``[B, N]`` (cpp: x's dtype; triton/cuda: float32).
    Returns int64 ``[B, keep]``, ascending."""
    if impl == "cpp":
        return cpp_extension().tpc_select_cpu(x, keep, k, center, index_ties, noise)
    if impl == "triton":
        from ..kernels.tpc_select import tpc_select_triton  # imported late: triton reads TRITON_INTERPRET on import
        with device_guard(x):
            return tpc_select_triton(x, keep, k, center, index_ties, noise)
    if impl == "cuda":
        with device_guard(x):
            return _cuda_extension().tpc_select_cuda(x, keep, k, center, index_ties, noise)
    raise BackendUnavailableError(f"pyengine::tpc_select: impl={impl!r} is not available (available: {IMPLS})")


@tpc_select_op.register_fake
def _(x, keep, k, center, index_ties, noise, impl):
    return x.new_empty((x.shape[0], keep), dtype=torch.int64)


def tpc_select(x, keep, *, k=2, center=None, tie_break="index", noise=None, backend="auto"):
    """Indices ``[B, keep]`` (int64, ascending) of the tokens DPC-kNN keeps; same contract as the reference
    :func:`pyengine.models.tpc.dpc_knn_select`, computed by ``backend`` ("reference", "cpp", "triton", "cuda", or
    "auto", the default: "cpp" on CPU, "triton" on CUDA; ``pyengine.backends.op_backend``)."""
    backend = op_backend("tpc_select", backend, x)
    check_select_args(x, keep, k, center, tie_break)
    if backend == "reference":
        return dpc_knn_select(x, keep, k=k, center=center, tie_break=tie_break, noise=noise)
    if backend not in IMPLS:
        raise BackendUnavailableError(f"tpc_select: backend={backend!r} is not available "
                                      f"(available: {', '.join(repr(b) for b in BACKENDS)})")
    center_arg = -1 if center is None else center
    if backend == "cpp":
        if x.device.type != "cpu":
            raise BackendUnavailableError(f"tpc_select: backend='cpp' runs on CPU tensors, got x on {x.device}")
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()  # fp16 / bf16 features: select in float32
        noise = density_noise(noise, x.shape[:2], x.dtype, x.device)  # same draw as the reference makes
        if noise is not None:
            noise = noise.contiguous()
        return tpc_select_op(x.contiguous(), keep, k, center_arg, tie_break == "index", noise, "cpp")
    # triton / cuda: fp32 selection math; float64 features would be silently rounded, so they are refused.
    if x.dtype not in GPU_DTYPES:
        raise BackendUnavailableError(f"tpc_select: backend={backend!r} takes float32/float16/bfloat16 features "
                                      f"(fp32 math), got {x.dtype}; use backend='cpp' or 'reference' for float64")
    if backend == "triton":
        from ..kernels._common import check_triton_device
        from ..kernels.tpc_select import MAX_F
        check_triton_device(x, op="tpc_select")
        if x.shape[1] > MAX_F:
            raise BackendUnavailableError(f"tpc_select: backend='triton' supports at most {MAX_F} tokens, "
                                          f"got N={x.shape[1]}")
    else:
        if x.device.type != "cuda":
            raise BackendUnavailableError(f"tpc_select: backend='cuda' runs on CUDA tensors, got x on {x.device}")
        _cuda_extension()
        if x.shape[1] > 1024:
            raise BackendUnavailableError(f"tpc_select: backend='cuda' supports at most 1024 tokens, "
                                          f"got N={x.shape[1]}")
        x = x.float()  # the CUDA kernels read float32 (fp16 / bf16 -> fp32 is exact)
    noise = density_noise(noise, x.shape[:2], torch.float32, x.device)  # rho is float32 here
    if noise is not None:
        noise = noise.contiguous()
    return tpc_select_op(x.contiguous(), keep, k, center_arg, tie_break == "index", noise, backend)
