"""DPC-kNN token selection, side by side: the eager chains vs each pyengine implementation.

* ``eager_cdist``: the published chain (``torch.cdist`` matmul shortcut, top-k, density mask, min, top-k, sort),
  which is what a user runs today (its selection differs from the exact one on near-ties, see SPEC.md §2);
* ``reference``: pyengine's exact-distance eager reference (``pyengine.models.tpc.dpc_knn_select``);
* ``cpp``: ``pyengine.tpc_select(backend="cpp")`` (csrc/tpc_select_cpu.cpp).

Issue 4's CPU target: the C++ selection at least 3x faster than the eager chain at B = 8, F = 243, C = 512.
Run: ``.venv/bin/python -m pytest benchmarks/test_tpc_select.py``"""
import pytest
import torch

import pyengine
from pyengine.models.tpc import dpc_knn_select

SHAPES = {"B8-F243-C512": (8, 243, 512), "B8-F351-C1536": (8, 351, 1536)}


@torch.no_grad()
def eager_cdist_chain(x, keep):
    """The published selection without its random noise term (so runs are comparable)."""
    dist = torch.cdist(x, x) / x.shape[-1] ** 0.5
    rho = (-(dist.topk(2, dim=-1, largest=False).values ** 2).mean(-1)).exp()
    mask = (rho[:, None, :] > rho[:, :, None]).to(x.dtype)
    dist_max = dist.flatten(1).max(-1).values[:, None, None]
    delta = (dist * mask + dist_max * (1 - mask)).min(-1).values
    return (delta * rho).topk(keep, dim=-1).indices.sort(-1).values


IMPLS = {
    "eager_cdist": eager_cdist_chain,
    "reference": dpc_knn_select,
    "cpp": lambda x, keep: pyengine.tpc_select(x, keep, backend="cpp"),
}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_tpc_select_cpu(benchmark, impl, shape):
    B, F, C = SHAPES[shape]
    benchmark.group = f"tpc_select cpu {shape}"
    x = torch.randn(B, F, C)
    keep = F // 3
    fn = IMPLS[impl]
    fn(x, keep)  # warm-up (loads the extension for cpp)
    index = benchmark(fn, x, keep)
    assert index.shape == (B, keep) and index.dtype == torch.int64
