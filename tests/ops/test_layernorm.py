"""pyengine::layernorm (Triton, under the interpreter on CI) against an fp64 evaluation of layernorm_ref; the
op's registration (opcheck, compile, export, autograd); argument errors."""
import pytest
import torch

from pyengine.backends import BackendUnavailableError
from pyengine.ops.layernorm import layernorm, layernorm_op, layernorm_ref
from pyengine.testing import FLOOR, assert_close, rel_error



def make_case(M, K, P=None, residual=False, seed=0, offset=0.5):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    return {"x": offset + randn(M, K), "weight": 1 + 0.2 * randn(K), "bias": 0.1 * randn(K),
            "add": 0.5 * randn(P, K) if P else None, "residual": randn(M, K) if residual else None}


def cast(t, dtype):
    return {k: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}


def check(t, dtype, eps, x=None):
    want = layernorm_ref(**t, eps=eps)
    low = cast(t, dtype)
    if x is not None:
        low["x"] = x
    got = layernorm(**low, eps=eps)
    eager = layernorm(**low, eps=eps, backend="reference")
    assert got.shape == want.shape and got.dtype == dtype and not got.isnan().any()
    # bound max(2 * eager error, FLOOR[dtype]) == 2 * max(eager error, FLOOR[dtype] / 2)
    assert_close(f"layernorm ({dtype})", got, want, eager, floor=FLOOR[dtype] / 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_mhg_norm_plus_pos_embed(dtype):
    """MHG: LN(F, eps 1e-5)(x) + pos_embed[token] with rows = (batch, 34 tokens), F = 27 (< one chunk)."""
    check(make_case(2 * 34, 27, P=34, seed=1), dtype, 1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_wide_rows_several_chunks_with_residual(dtype):
    check(make_case(37, 200, residual=True, seed=2), dtype, 1e-6)


def test_plain_and_strided_rows_and_large_mean():
    t = make_case(21, 72, seed=3, offset=300.0)  # |mean| >> std: the chunked statistics must not cancel
    check(t, torch.float32, 1e-6)
    wide = torch.randn(21, 100, dtype=torch.float64)
    wide[:, 10:82] = t["x"]
    view = wide.float()[:, 10:82]
    assert not view.is_contiguous()
    check(t, torch.float32, 1e-6, x=view)


def test_pattern_rows_not_a_multiple():
    check(make_case(23, 16, P=5, residual=True, seed=4), torch.float32, 1e-6)


def test_gradcheck_fp64():
    t = make_case(6, 5, P=4, residual=True, seed=5)
    names = ["x", "weight", "bias", "add", "residual"]
    leaves = [t[n].clone().requires_grad_() for n in names]

    def f(*args):
        return layernorm(**dict(zip(names, args)), eps=1e-5)

    assert torch.autograd.gradcheck(f, leaves, fast_mode=True)


def test_backward_formula_matches_autograd_of_the_reference():
    t = make_case(9, 6, P=4, residual=True, seed=6)
    leaves = {k: v.clone().requires_grad_() for k, v in t.items()}
    y = layernorm_ref(**leaves, eps=1e-5)
    grad = torch.randn_like(y)
    want = torch.autograd.grad(y, list(leaves.values()), grad)
    from pyengine.ops.layernorm import _backward

    class Ctx:
        saved_tensors = (t["x"], t["weight"])
        eps, add_rows, has_residual = 1e-5, 4, True

    got = _backward(Ctx, grad)
    got = [got[0], got[1], got[2], got[4], got[5]]
    for name, a, b in zip(leaves, got, want):
        assert rel_error(a, b) < 1e-12, name


def test_opcheck():
    t = cast(make_case(7, 9, P=3, residual=True, seed=7), torch.float32)
    torch.library.opcheck(layernorm_op, (t["x"], t["weight"], t["bias"], 1e-6, t["add"], t["residual"]))
    torch.library.opcheck(layernorm_op, (t["x"], t["weight"], t["bias"], 1e-5, None, None))


def test_torch_compile_and_export():
    t = cast(make_case(5, 8, P=5, seed=8), torch.float32)

    def f(x, w, b, a):
        return layernorm(x, w, b, eps=1e-6, add=a)

    args = (t["x"], t["weight"], t["bias"], t["add"])
    want = layernorm_ref(*args[:3], eps=1e-6, add=args[3])
    assert rel_error(torch.compile(f, fullgraph=True, backend="aot_eager")(*args), want) < 1e-5

    class M(torch.nn.Module):
        def forward(self, *a):
            return f(*a)

    assert rel_error(torch.export.export(M(), args).module()(*args), want) < 1e-5


def test_bad_arguments():
    t = cast(make_case(4, 6, P=2), torch.float32)
    x, w, b = t["x"], t["weight"], t["bias"]
    with pytest.raises(ValueError, match=r"x: expected a 2-D tensor"):
        layernorm(x[0], w, b, eps=1e-6)
    with pytest.raises(ValueError, match=r"weight: expected shape \[6\], got \[5\]"):
        layernorm(x, w[:5], b, eps=1e-6)
    with pytest.raises(ValueError, match=r"add: expected shape \[P, 6\]"):
        layernorm(x, w, b, eps=1e-6, add=torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"residual: expected shape \[4, 6\]"):
        layernorm(x, w, b, eps=1e-6, residual=torch.zeros(4, 5))
    with pytest.raises(TypeError, match=r"bias: expected dtype torch.float32 \(the dtype of x\), got torch.float16"):
        layernorm(x, w, b.half(), eps=1e-6)
    with pytest.raises(ValueError, match=r"x: expected unit column stride"):
        layernorm(torch.zeros(6, 4).t(), w, b, eps=1e-6)
    with pytest.raises(ValueError, match=r"eps: expected a finite number >= 0"):
        layernorm(x, w, b, eps=float("nan"))
    with pytest.raises(BackendUnavailableError, match=r"backend='cpp' is not available"):
        layernorm(x, w, b, eps=1e-6, backend="cpp")
