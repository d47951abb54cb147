"""``pyengine::tpc_select``: DPC-kNN token selection (SPEC.md §2, TPC) as one registered op.

Reference: :func:`pyengine.models.tpc.dpc_knn_select` (same rules: exact symmetric distances, ``tie_break``,
``noise``, ``center``). Implementations, chosen by ``impl``:

* ``"cpp"``: ``csrc/tpc_select_cpu.cpp``, OpenMP over samples, for CPU tensors (float32 / float64).

The Triton and CUDA implementations of the TPC issue register under the same op with their own ``impl``.
"""
from typing import Optional

import torch

from ..backends import BackendUnavailableError, cpp_extension
from ..models.tpc import check_select_args, density_noise, dpc_knn_select

IMPLS = ("cpp",)


@torch.library.custom_op("pyengine::tpc_select", mutates_args=())
def tpc_select_op(x: torch.Tensor, keep: int, k: int, center: int, index_ties: bool,
                  noise: Optional[torch.Tensor], impl: str) -> torch.Tensor:
    """Raw op: ``x [B, N, C]`` contiguous float32/float64, ``center`` -1 for none. Returns int64 ``[B, keep]``."""
    if impl == "cpp":
        return cpp_extension().tpc_select_cpu(x, keep, k, center, index_ties, noise)
    raise BackendUnavailableError(f"pyengine::tpc_select: impl={impl!r} is not available (available: {IMPLS})")


@tpc_select_op.register_fake
def _(x, keep, k, center, index_ties, noise, impl):
    return x.new_empty((x.shape[0], keep), dtype=torch.int64)


def tpc_select(x, keep, k=2, center=None, tie_break="index", noise=None, backend="cpp"):
    """Indices ``[B, keep]`` (int64, ascending) of the tokens DPC-kNN keeps; same contract as the reference
    :func:`pyengine.models.tpc.dpc_knn_select`, computed by ``backend`` ("reference" or "cpp")."""
    check_select_args(x, keep, k, center, tie_break)
    if backend == "reference":
        return dpc_knn_select(x, keep, k=k, center=center, tie_break=tie_break, noise=noise)
    if backend != "cpp":
        raise BackendUnavailableError(f"tpc_select: backend={backend!r} is not available "
                                      f"(available: 'reference', 'cpp')")
    if x.device.type != "cpu":
        raise BackendUnavailableError(f"tpc_select: backend='cpp' runs on CPU tensors, got x on {x.device}")
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()  # fp16 / bf16 features: select in float32
    noise = density_noise(noise, x.shape[:2], x.dtype, x.device)  # same draw as the reference makes
    if noise is not None:
        noise = noise.contiguous()
    return tpc_select_op(x.contiguous(), keep, k, -1 if center is None else center, tie_break == "index", noise,
                         "cpp")
