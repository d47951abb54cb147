"""DPC-kNN token selection, side by side: the eager chains vs each pyengine implementation.

* ``eager_cdist``: the published chain (``torch.cdist`` matmul shortcut, top-k, density mask, min, top-k, sort),
  which is what a user runs today (its selection differs from the exact one on near-ties, see SPEC.md §2);
* ``reference``: pyengine's exact-distance eager reference (``pyengine.models.tpc.dpc_knn_select``);
* ``cpp``: ``pyengine.tpc_select(backend="cpp")`` (csrc/tpc_select_cpu.cpp).

On a GPU (skipped without CUDA) the same chains on CUDA tensors against ``triton`` (kernels/tpc_select.py) and
``cuda`` (csrc/tpc_select_cuda.cu), and the kept-token gather: eager indexing + the positional add vs the fused
``pyengine::gather_tokens`` Triton kernel (TPC-MHFormer: 3 hypotheses x C=512 at F=351 -> 117; HoT-MixSTE:
17 joints x C=512 at F=243 -> 81, pos_embed_token added).

Issue 4's CPU target: the C++ selection at least 3x faster than the eager chain at B = 8, F = 243, C = 512.
Run: ``.venv/bin/python -m pytest benchmarks/test_bench_tpc_select.py``"""
import pytest
import torch

import pyengine
from pyengine.models.tpc import dpc_knn_select
from pyengine.ops.gather_tokens import gather_tokens, gather_tokens_ref

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


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmarks need CUDA")

GPU_IMPLS = {
    "eager_cdist": eager_cdist_chain,
    "reference": dpc_knn_select,
    "triton": lambda x, keep: pyengine.tpc_select(x, keep, backend="triton"),
    "cuda": lambda x, keep: pyengine.tpc_select(x, keep, backend="cuda"),
}


def cuda_timed(fn):
    """Wrap ``fn`` so each timed call includes the kernels' completion."""
    def run(*args):
        out = fn(*args)
        torch.cuda.synchronize()
        return out
    return run


@needs_cuda
@pytest.mark.parametrize("impl", list(GPU_IMPLS))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_tpc_select_gpu(benchmark, impl, shape):
    B, F, C = SHAPES[shape]
    benchmark.group = f"tpc_select gpu {shape}"
    x = torch.randn(B, F, C, device="cuda")
    keep = F // 3
    fn = cuda_timed(GPU_IMPLS[impl])
    fn(x, keep)  # warm-up: compiles the Triton kernels / loads the extension
    index = benchmark(fn, x, keep)
    assert index.shape == (B, keep) and index.dtype == torch.int64


GATHER_SHAPES = {"mhformer-B8-F351-3x512": (8, 351, 3 * 512, 117, None),
                 "hot_mixste-B8-F243-17x512": (8, 243, 17 * 512, 81, 512)}


@needs_cuda
@pytest.mark.parametrize("impl", ["eager", "triton"])
@pytest.mark.parametrize("shape", list(GATHER_SHAPES))
def test_gather_tokens_gpu(benchmark, impl, shape):
    B, F, R, keep, add_width = GATHER_SHAPES[shape]
    benchmark.group = f"gather_tokens gpu {shape}"
    x = torch.randn(B, F, R, device="cuda", dtype=torch.bfloat16)
    index = torch.rand(B, F, device="cuda").argsort(-1)[:, :keep].sort(-1).values
    add = None if add_width is None else torch.randn(keep, add_width, device="cuda", dtype=torch.bfloat16)
    if impl == "eager":
        fn = cuda_timed(gather_tokens_ref)
    else:
        fn = cuda_timed(lambda x, index, add: gather_tokens(x, index, add, backend="triton"))
    fn(x, index, add)
    out = benchmark(fn, x, index, add)
    assert out.shape == (B, keep, R)
