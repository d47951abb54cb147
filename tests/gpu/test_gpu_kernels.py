"""Every op's GPU implementations against its fp64 reference, on a real GPU (the GPU suite's first step; skipped
without CUDA). The flash-attention rule: a kernel's relative error is at most twice the same-precision eager
composition's (with a per-dtype floor); outputs are poisoned first (NaN) so an unwritten element fails.
Shapes are the headline models' (MHFormer-351 rows, 17-joint and 243-frame attention, TPC at F = 351)."""
import pytest
import torch

from pyengine.models.tpc import dpc_knn_select
from pyengine.ops.attention import attention, attention_ref
from pyengine.ops.gather_tokens import gather_tokens, gather_tokens_ref
from pyengine.ops.layernorm import layernorm, layernorm_ref
from pyengine.ops.ln_linear import ln_linear, ln_linear_ref
from pyengine.ops.tpc_select import tpc_select
from pyengine.testing import assert_close, rel_error

pytestmark = pytest.mark.gpu
GPU_FLOOR = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}  # looser than pyengine.testing.FLOOR
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def randn(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, device="cuda", dtype=torch.float64) * scale).to(dtype)


def assert_2x_eager(got, eager, want, dtype, what):
    assert torch.isfinite(got).all(), f"{what}: non-finite output (unwritten or overflow)"
    assert_close(f"{what} ({dtype})", got, want, eager, floor=GPU_FLOOR[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,G,N,K,ln,act,res", [(2 * 351, 3, 1536, 512, True, "none", False),  # SHR LN + QKV
                                                (2 * 351, 1, 1024, 1536, True, "gelu", False),  # MLP fc1
                                                (2 * 351, 1, 1536, 1024, False, "none", True),  # fc2 + residual
                                                (2 * 243 * 17, 1, 768, 256, True, "none", False),  # MixSTE qkv
                                                (37, 2, 40, 24, True, "gelu", True)])  # ragged
def test_ln_linear(dtype, M, G, N, K, ln, act, res):
    x = randn(M, G * K, dtype=dtype)
    w, b = randn(G, N, K, dtype=dtype, scale=K ** -0.5), randn(G, N, dtype=dtype, scale=0.1)
    lw, lb = (randn(G, K, dtype=dtype, scale=0.2) + 1, randn(G, K, dtype=dtype, scale=0.1)) if ln else (None, None)
    r = randn(M, G * N, dtype=dtype) if res else None
    kw = dict(ln_weight=lw, ln_bias=lb, activation=act, residual=r)
    want = ln_linear_ref(x.double(), w.double(), b.double(),
                         **{k: (v.double() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()})
    got = ln_linear(x, w, b, backend="triton", **kw)
    assert got.dtype == dtype and got.is_cuda
    assert_2x_eager(got, ln_linear_ref(x, w, b, **kw), want, dtype, "ln_linear")
    if dtype == torch.float32:  # TF32 allowed: within tf32's own error (~1e-3), never NaN
        tf = ln_linear(x, w, b, backend="triton", allow_tf32=True, **kw)
        assert rel_error(tf, want) < 5e-3


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M,K,add,res", [(2 * 34, 351, True, False), (2 * 243 * 17, 512, False, True),
                                         (33, 27, True, True)])
def test_layernorm(dtype, M, K, add, res):
    x, w, b = randn(M, K, dtype=dtype), randn(K, dtype=dtype, scale=0.2) + 1, randn(K, dtype=dtype, scale=0.1)
    a = randn(34 if M % 34 == 0 else M, K, dtype=dtype) if add else None  # a pattern repeating every 34 rows
    r = randn(M, K, dtype=dtype) if res else None
    want = layernorm_ref(x.double(), w.double(), b.double(), eps=1e-6, add=None if a is None else a.double(),
                         residual=None if r is None else r.double())
    got = layernorm(x, w, b, eps=1e-6, add=a, residual=r, backend="triton")
    assert_2x_eager(got, layernorm_ref(x, w, b, eps=1e-6, add=a, residual=r), want, dtype, "layernorm")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,G,Nq,Nk,H,D", [(2, 3, 351, 351, 8, 64),   # SHR, 3 hypotheses
                                          (2 * 243, 1, 17, 17, 8, 32),  # MixSTE spatial
                                          (2, 17, 243, 243, 8, 32),  # MixSTE temporal
                                          (2, 1, 34, 34, 9, 39),  # MHG over 34 tokens, head dim 39
                                          (3, 2, 5, 7, 2, 3)])
def test_attention(dtype, B, G, Nq, Nk, H, D):
    q, k, v = randn(B, G, Nq, H, D, dtype=dtype), randn(B, G, Nk, H, D, dtype=dtype), randn(B, G, Nk, H, D, dtype=dtype)
    want = attention_ref(q.double(), k.double(), v.double())
    got = attention(q, k, v, backend="triton")
    assert_2x_eager(got, attention_ref(q, k, v), want, dtype, "attention")


def test_attention_shared_queries_stride_zero():
    """TRA's queries: one [F, C] projection read with batch / joint stride 0."""
    q = randn(1, 1, 243, 8, 32).expand(2, 17, 243, 8, 32)
    k, v = randn(2, 17, 81, 8, 32), randn(2, 17, 81, 8, 32)
    want = attention_ref(q.double(), k.double(), v.double())
    assert_2x_eager(attention(q, k, v, backend="triton"), attention_ref(q, k, v), want, torch.float32, "TRA")


@pytest.mark.parametrize("N,C,keep,center", [(351, 1536, 117, 175), (243, 512, 81, None), (27, 20, 9, None)])
def test_tpc_select_triton(N, C, keep, center):
    x = randn(4, N, C)
    got = tpc_select(x, keep, center=center, backend="triton")
    assert got.is_cuda and got.dtype == torch.int64 and got.shape == (4, keep)
    assert torch.equal(got.cpu(), tpc_select(x.cpu(), keep, center=center, backend="cpp"))
    assert torch.equal(got.cpu(), dpc_knn_select(x.cpu(), keep, center=center))


@pytest.mark.cuda_ext
@pytest.mark.parametrize("N,C,keep,center", [(351, 1536, 117, 175), (243, 512, 81, None)])
def test_tpc_select_cuda_equals_triton(N, C, keep, center):
    x = randn(16, N, C)
    assert torch.equal(tpc_select(x, keep, center=center, backend="cuda"),
                       tpc_select(x, keep, center=center, backend="triton"))


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_tokens(dtype):
    x = randn(4, 351, 3 * 512, dtype=dtype)
    index = torch.sort(torch.rand(4, 351, device="cuda").argsort(dim=1)[:, :117], dim=1).values
    add = randn(117, 512, dtype=dtype)
    got = gather_tokens(x, index, add, backend="triton")
    want = gather_tokens_ref(x.double(), index, add.double())
    assert_2x_eager(got, gather_tokens_ref(x, index, add), want, dtype, "gather_tokens")
    assert torch.equal(gather_tokens(x, index, backend="triton"), gather_tokens_ref(x, index))


def test_float64_is_refused_on_the_gpu():
    from pyengine.backends import BackendUnavailableError
    x = randn(8, 16, dtype=torch.float64)
    with pytest.raises(BackendUnavailableError, match="float64"):
        layernorm(x, x[0], x[0], eps=1e-6, backend="triton")
    with pytest.raises(BackendUnavailableError, match="float64"):
        gather_tokens(x[None], torch.zeros(1, 2, dtype=torch.long, device="cuda"), backend="triton")
