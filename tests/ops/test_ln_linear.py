"""pyengine::ln_linear (Triton, under the interpreter on CI) against an fp64 evaluation of ln_linear_ref, on small
ragged shapes of each use case in MHFormer / MixSTE; the op's registration (opcheck, compile, export, autograd);
and the argument errors."""
import pytest
import torch

from pyengine.backends import BackendUnavailableError
from pyengine.ops.ln_linear import ln_linear, ln_linear_op, ln_linear_ref
from pyengine.testing import FLOOR, assert_close, rel_error


def make_case(M, K_x, G, N, K, *, ln=True, bias=True, residual=False, seed=0):
    """fp64 tensors with non-trivial LN affine, weights at fan-in scale and an offset mean in x."""
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    t = {"x": 0.5 + randn(M, K_x), "weight": randn(G, N, K) / K ** 0.5,
         "bias": 0.1 * randn(G, N) if bias else None,
         "ln_weight": 1 + 0.2 * randn(G, K) if ln else None, "ln_bias": 0.1 * randn(G, K) if ln else None,
         "residual": randn(M, G * N) if residual else None}
    return t


def cast(t, dtype):
    return {k: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}


def check_against_fp64(t, dtype, x=None, residual=None, **kw):
    """Run the kernel at ``dtype`` (``x`` / ``residual`` override the cast tensors, e.g. with strided views) and hold
    it to the eager error at the same dtype."""
    want = ln_linear_ref(**t, **kw)
    low = cast(t, dtype)
    if x is not None:
        low["x"] = x
    if residual is not None:
        low["residual"] = residual
    got = ln_linear(**low, **kw, backend="triton")
    eager = ln_linear(**low, **kw, backend="reference")
    assert got.shape == want.shape and got.dtype == dtype and got.is_contiguous()
    assert not got.isnan().any(), "unwritten or NaN output elements"
    # A kernel may be 2x as far from the fp64 result as eager PyTorch at the same precision, never held below
    # FLOOR[dtype]: max(2 * eager error, FLOOR[dtype]) == 2 * max(eager error, FLOOR[dtype] / 2)
    assert_close(f"ln_linear ({dtype})", got, want, eager, floor=FLOOR[dtype] / 2)
    return got


DTYPES = [torch.float32, torch.float16]


@pytest.mark.parametrize("dtype", DTYPES)
def test_shr_qkv_three_hypotheses(dtype):
    C = 24
    t = make_case(37, 3 * C, 3, 3 * C, C)
    check_against_fp64(t, dtype, in_cols=[0, C, 2 * C], eps=1e-6)
    check_against_fp64(t, dtype, eps=1e-6)  # the default in_cols for K_x == G*K is the same


@pytest.mark.parametrize("dtype", DTYPES)
def test_chi_step_any_order_and_repeated_offsets(dtype):
    C = 24
    t = make_case(37, 3 * C, 3, C, C, seed=1)
    check_against_fp64(t, dtype, in_cols=[C, 2 * C, 0])
    check_against_fp64(t, dtype, in_cols=[C, 2 * C, C])


@pytest.mark.parametrize("dtype", DTYPES)
def test_output_projection_with_residual(dtype):
    C = 24
    t = make_case(37, 3 * C, 3, C, C, ln=False, residual=True, seed=2)
    check_against_fp64(t, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_single_group_with_column_slice_views(dtype):
    """G=1, x a column slice of a wider buffer and the residual the middle third of a [M, 3C] buffer: no copies."""
    C, M = 24, 37
    t = make_case(M, C, 1, C, C, ln=False, residual=True, seed=3)
    wide_x = torch.randn(M, 3 * C + 5, dtype=torch.float64)
    wide_x[:, 7:7 + C] = t["x"]
    buf = torch.randn(M, 3 * C, dtype=torch.float64)
    buf[:, C:2 * C] = t["residual"]
    x_view = wide_x.to(dtype)[:, 7:7 + C]
    res_view = buf.to(dtype)[:, C:2 * C]
    assert not x_view.is_contiguous() and not res_view.is_contiguous()
    check_against_fp64(t, dtype, x=x_view, residual=res_view)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mixing_mlp_fc1_gelu_then_fc2_residual(dtype):
    C, hid = 16, 40
    fc1 = make_case(29, 3 * C, 1, hid, 3 * C, seed=4)
    check_against_fp64(fc1, dtype, activation="gelu")
    fc2 = make_case(29, hid, 1, 3 * C, hid, ln=False, residual=True, seed=5)
    check_against_fp64(fc2, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mhg_encoder_token_width_not_a_power_of_two(dtype):
    F, B = 27, 2
    M = B * 34
    qkv = make_case(M, F, 1, 3 * F, F, seed=6)
    check_against_fp64(qkv, dtype)
    fc1 = make_case(M, F, 1, 2 * F, F, seed=7)
    check_against_fp64(fc1, dtype, activation="gelu")


def test_mhg_encoder_f81():
    F = 81
    check_against_fp64(make_case(34, F, 1, 3 * F, F, seed=8), torch.float16)


@pytest.mark.parametrize("dtype", DTYPES)
def test_mixste_rows_b_f_17(dtype):
    C, B, F = 32, 1, 3
    check_against_fp64(make_case(B * F * 17, C, 1, 3 * C, C, seed=9), dtype)


def test_bfloat16():
    C = 24
    check_against_fp64(make_case(37, 3 * C, 3, C, C, residual=True, seed=10), torch.bfloat16, in_cols=[C, 2 * C, 0],
                       activation="gelu")


def test_more_groups_than_one_launch_and_no_bias():
    """G = 6 > GROUPS_PER_LAUNCH (two launches); bias None; GELU and residual together."""
    t = make_case(21, 20, 6, 12, 20, bias=False, residual=True, seed=11)
    check_against_fp64(t, torch.float32, activation="gelu")


def test_tf32_flag_runs():
    t = make_case(19, 16, 1, 24, 16, seed=12)
    got = ln_linear(**cast(t, torch.float32), allow_tf32=True)
    assert rel_error(got, ln_linear_ref(**t)) < 1e-2  # tf32 on a GPU, exact fp32 under the interpreter


def test_no_output_element_left_unwritten():
    """Rows / columns just past the tile edges: every output is finite (torch.empty would leave garbage/NaN)."""
    for M, N in [(65, 65), (1, 1), (64, 129)]:
        t = make_case(M, 17, 2, N, 17, seed=M)
        y = ln_linear(**cast(t, torch.float32))
        assert y.shape == (M, 2 * N) and torch.isfinite(y).all()
        assert rel_error(y, ln_linear_ref(**t)) < 1e-5


def test_empty_rows():
    t = cast(make_case(0, 8, 2, 4, 8), torch.float32)
    assert ln_linear(**t).shape == (0, 8)


def test_gradcheck_fp64():
    t = make_case(5, 6, 2, 3, 4, residual=True, seed=13)  # K_x = 6 > K = 4: explicit offsets
    names = ["x", "weight", "bias", "ln_weight", "ln_bias", "residual"]
    leaves = [t[n].clone().requires_grad_() for n in names]

    def f(*args):
        return ln_linear(**dict(zip(names, args)), in_cols=[2, 0], activation="gelu", eps=1e-5)

    assert torch.autograd.gradcheck(f, leaves, fast_mode=True)  # fast mode: a few launches, not one per element

    def g(x, w):  # no LN, no bias, no residual
        return ln_linear(x, w, in_cols=[1, 1])

    assert torch.autograd.gradcheck(g, [leaves[0].detach().clone().requires_grad_(),
                                        leaves[1].detach().clone().requires_grad_()], fast_mode=True)


def test_opcheck():
    t = cast(make_case(9, 12, 2, 5, 6, residual=True, seed=14), torch.float32)
    torch.library.opcheck(ln_linear_op, (t["x"], t["weight"], t["bias"], t["ln_weight"], t["ln_bias"],
                                         t["residual"], [6, 0], 1e-6, "gelu", False))
    torch.library.opcheck(ln_linear_op, (t["x"], t["weight"], None, None, None, None, [0, 6], 1e-6, "none",
                                         False))


def test_torch_compile_and_export():
    t = cast(make_case(6, 8, 1, 4, 8, seed=15), torch.float32)

    def f(x, w, b, lw, lb):
        return ln_linear(x, w, b, ln_weight=lw, ln_bias=lb, activation="gelu")

    args = (t["x"], t["weight"], t["bias"], t["ln_weight"], t["ln_bias"])
    want = ln_linear_ref(*args[:3], ln_weight=args[3], ln_bias=args[4], activation="gelu")
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    assert rel_error(compiled(*args), want) < 1e-5

    class M(torch.nn.Module):
        def forward(self, *a):
            return f(*a)

    exported = torch.export.export(M(), args)
    assert rel_error(exported.module()(*args), want) < 1e-5


def test_bad_arguments():
    t = cast(make_case(4, 12, 2, 3, 6), torch.float32)
    x, w = t["x"], t["weight"]
    with pytest.raises(ValueError, match=r"x: expected a 2-D tensor"):
        ln_linear(x[None], w)
    with pytest.raises(ValueError, match=r"weight: expected a 3-D tensor"):
        ln_linear(x, w[0])
    with pytest.raises(ValueError, match=r"bias: expected shape \[2, 3\], got \[3\]"):
        ln_linear(x, w, t["bias"][0])
    with pytest.raises(ValueError, match=r"ln_weight: expected shape \[2, 6\]"):
        ln_linear(x, w, ln_weight=t["ln_weight"][:, :5], ln_bias=t["ln_bias"])
    with pytest.raises(ValueError, match=r"ln_weight / ln_bias: pass both"):
        ln_linear(x, w, ln_weight=t["ln_weight"])
    with pytest.raises(ValueError, match=r"residual: expected shape \[4, 6\], got \[4, 5\]"):
        ln_linear(x, w, residual=torch.zeros(4, 5))
    with pytest.raises(ValueError, match=r"in_cols\[1\]: expected an offset in \[0, K_x - K\] = \[0, 6\].* got 7"):
        ln_linear(x, w, in_cols=[0, 7])
    with pytest.raises(ValueError, match=r"in_cols\[0\]: .* got -1"):
        ln_linear(x, w, in_cols=[-1, 0])
    with pytest.raises(ValueError, match=r"in_cols: expected 2 column offsets"):
        ln_linear(x, w, in_cols=[0])
    with pytest.raises(ValueError, match=r"in_cols: x has 12 columns, which is neither"):
        ln_linear(torch.zeros(4, 12), torch.zeros(3, 3, 5))
    with pytest.raises(TypeError, match=r"weight: expected dtype torch.float32 \(the dtype of x\), got torch.float16"):
        ln_linear(x, w.half())
    with pytest.raises(TypeError, match=r"x: expected dtype float32, float16, bfloat16 or float64, got torch.int64"):
        ln_linear(x.long(), w)
    with pytest.raises(ValueError, match=r"x: expected unit column stride"):
        ln_linear(torch.zeros(12, 4).t(), w)
    with pytest.raises(ValueError, match=r"activation: expected one of \('none', 'gelu'\), got 'relu'"):
        ln_linear(x, w, activation="relu")
    with pytest.raises(ValueError, match=r"eps: expected a finite number >= 0"):
        ln_linear(x, w, eps=-1.0)
    with pytest.raises(BackendUnavailableError, match=r"backend='cuda' is not available"):
        ln_linear(x, w, backend="cuda")


def test_fp64_on_cuda_is_refused_clearly():
    from pyengine.kernels import ln_linear as kmod
    if not kmod.INTERPRETING:
        pytest.skip("checks the interpreter-only fp64 rule; runs under TRITON_INTERPRET=1")
    kmod.INTERPRETING = False  # pretend to be on a GPU machine, with a CPU tensor the device check would refuse
    try:
        t = make_case(3, 4, 1, 2, 4)
        with pytest.raises(BackendUnavailableError, match=r"float64 only under the interpreter"):
            ln_linear(**t)
    finally:
        kmod.INTERPRETING = True


@pytest.mark.parametrize("activation", ["none", "gelu"])
def test_backward_formula_matches_autograd_of_the_reference(activation):
    """The hand-written backward (pure PyTorch, no kernel) equals torch autograd through ln_linear_ref."""
    from pyengine.ops.ln_linear import ln_linear_backward
    t = make_case(7, 10, 3, 4, 5, seed=16)
    leaves = {k: v.clone().requires_grad_() for k, v in t.items() if v is not None}
    y = ln_linear_ref(**leaves, in_cols=[5, 0, 5], activation=activation, eps=1e-5)
    grad = torch.randn_like(y)
    want = torch.autograd.grad(y, [leaves[k] for k in ("x", "weight", "bias", "ln_weight", "ln_bias")], grad)
    got = ln_linear_backward(grad, t["x"], t["weight"], t["bias"], t["ln_weight"], t["ln_bias"], [5, 0, 5], 1e-5,
                             activation)
    for name, a, b in zip(("x", "weight", "bias", "ln_weight", "ln_bias"), got, want):
        assert rel_error(a, b) < 1e-12, name


@pytest.mark.parametrize("G,K_x,in_cols,ln,act,res", [
    (1, 24, None, True, "gelu", False), (1, 24, None, False, "none", True),  # one group: one GEMM, no concat
    (2, 24, [0, 0], False, "none", False),  # TRA's k | v: same columns, no LN -> one GEMM over [2N, K]
    (3, 72, None, True, "none", True), (2, 48, [24, 0], True, "gelu", False)])  # per-group GEMMs + concat
def test_aten_composition_equals_the_reference(G, K_x, in_cols, ln, act, res):
    from pyengine.ops.ln_linear import ln_linear_aten
    from pyengine.testing import dispatched_ops
    g = torch.Generator().manual_seed(G)
    x = torch.randn(37, K_x, generator=g, dtype=torch.float64)
    w, b = torch.randn(G, 16, 24, generator=g, dtype=torch.float64), torch.randn(G, 16, generator=g, dtype=torch.float64)
    kw = dict(in_cols=in_cols, activation=act, residual=torch.randn(37, G * 16, generator=g, dtype=torch.float64)
              if res else None)
    if ln:
        kw.update(ln_weight=torch.randn(G, 24, generator=g, dtype=torch.float64),
                  ln_bias=torch.randn(G, 24, generator=g, dtype=torch.float64))
    want = ln_linear_ref(x, w, b, **kw)
    got, ops = dispatched_ops(ln_linear_aten, x, w, b, **kw)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    assert not any("cat" in o for o in ops), ops  # inference: groups write their blocks of one output
    single = G == 1 or (not ln and in_cols == [0, 0])
    assert sum("addmm" in o for o in ops) == (1 if single else G), ops
    # Under autograd (out= has no derivative) several groups are concatenated, and gradients flow.
    xg = x.clone().requires_grad_()
    got, ops = dispatched_ops(ln_linear_aten, xg, w, b, **kw)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
    assert any("cat" in o for o in ops) != single, ops
    got.sum().backward()
    xr = x.clone().requires_grad_()
    ln_linear_ref(xr, w, b, **kw).sum().backward()
    assert torch.allclose(xg.grad, xr.grad, rtol=1e-12, atol=1e-12)


def test_sdpa_path_reads_one_group_views_without_copies():
    from pyengine.dispatch import sdpa_attention
    from pyengine.ops.attention import attention_ref
    from pyengine.testing import dispatched_ops
    qkv = torch.randn(2 * 9, 3 * 4 * 8, dtype=torch.float64).view(2, 9, 1, 3, 4, 8).permute(3, 0, 2, 1, 4, 5)
    q, k, v = qkv[0], qkv[1], qkv[2]  # [B, G=1, N, H, D] strided views of a fused QKV buffer
    got, ops = dispatched_ops(sdpa_attention, q, k, v)
    assert torch.allclose(got, attention_ref(q, k, v), rtol=1e-12, atol=1e-12) and got.is_contiguous()
    assert sum("copy" in o or "clone" in o for o in ops) <= 1, ops  # the output's layout change only
    for B, Gq in ((2, 3), (2, 1), (1, 3)):  # grouped (MHFormer's SHR), one query group for all, batch 1
        qkv = torch.randn(B * 9, 3 * 3 * 4 * 8, dtype=torch.float64).view(B, 9, 3, 3, 4, 8).permute(3, 0, 2, 1, 4, 5)
        q, k, v = qkv[0][:, :Gq], qkv[1], qkv[2]
        got, ops = dispatched_ops(sdpa_attention, q, k, v)
        assert torch.allclose(got, attention_ref(q.expand_as(k), k, v), rtol=1e-12, atol=1e-12)
        assert got.shape == (B, 9, 3, 4, 8) and got.is_contiguous()
        assert sum("copy" in o or "clone" in o for o in ops) <= 3, ops  # each group's output, written once


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_inference_runs_the_layernorm_prologue_on_the_cpp_kernel(dtype):
    """At CPU inference the LN prologue is pyengine's C++ kernel, reading each group's strided column block in place
    (F.layer_norm would copy it first); under autograd it is F.layer_norm. Both match the fp64 reference."""
    from pyengine.ops.group_layernorm import group_layernorm_runs
    from pyengine.ops.ln_linear import ln_linear_aten
    from pyengine.testing import assert_close, dispatched_ops
    if not group_layernorm_runs(torch.empty(0, dtype=dtype)):
        pytest.skip("pyengine._C has no group_layernorm_cpu (an older build)")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(37, 72, generator=g) + 3.0
    w, b = torch.randn(3, 16, 24, generator=g) * 0.2, torch.randn(3, 16, generator=g)
    lw, lb = torch.randn(3, 24, generator=g), torch.randn(3, 24, generator=g)
    args = [t.to(dtype) for t in (x, w, b, lw, lb)]
    kw = dict(in_cols=[24, 48, 0])
    want = ln_linear_ref(*(t.double() for t in args[:3]), ln_weight=args[3].double(), ln_bias=args[4].double(), **kw)
    eager = ln_linear_ref(*args[:3], ln_weight=args[3], ln_bias=args[4], **kw)
    got, ops = dispatched_ops(ln_linear_aten, *args[:3], ln_weight=args[3], ln_bias=args[4], **kw)
    assert not any("layer_norm" in o or "clone" in o for o in ops), ops
    assert_close(f"ln_linear C++ LN {dtype}", got, want, eager)
    xg = args[0].clone().requires_grad_()
    got_g, ops = dispatched_ops(ln_linear_aten, xg, *args[1:3], ln_weight=args[3], ln_bias=args[4], **kw)
    assert sum("native_layer_norm" in o for o in ops) == 3, ops
    assert_close(f"ln_linear autograd {dtype}", got_g.detach(), want, eager)


@pytest.mark.parametrize("gemm", ["aten", "onednn"])
@pytest.mark.parametrize("act,res", [("none", False), ("gelu", False), ("none", True)])
def test_mixed_precision_rounds_the_gemm_operands_only(gemm, act, res):
    """``compute_dtype=bf16`` on fp32 inputs (a float32 part of a bf16 model, e.g. MHFormer's MHG): LayerNorm in
    fp32, then the GEMM's input, weight and bias rounded to bf16 and the GEMM in bf16; an fp32 residual is added
    after, in fp32 (the output is then fp32, else bf16). Inference (weights cast once, through ``WeightCasts``)
    and autograd (``weight.to``) give the same bits, and an in-place weight update is seen."""
    from pyengine.ops.ln_linear import WeightCasts, ln_linear_aten
    from pyengine.ops.onednn_linear import onednn_bf16_runs
    if gemm == "onednn" and not onednn_bf16_runs():
        pytest.skip("this CPU's oneDNN runs no bf16 inner product")
    bf = torch.bfloat16
    g = torch.Generator().manual_seed(7)
    x = torch.randn(37, 24, generator=g) + 20.0  # LayerNorm of bf16-rounded rows would be ~5% off
    w, b = torch.randn(1, 16, 24, generator=g) * 0.2, torch.randn(1, 16, generator=g)
    lw, lb = 1 + 0.2 * torch.randn(1, 24, generator=g), 0.1 * torch.randn(1, 24, generator=g)
    r = torch.randn(37, 16, generator=g) if res else None
    kw = dict(ln_weight=lw, ln_bias=lb, eps=1e-6, activation=act, residual=r)
    # the composition it stands for: fp32 LayerNorm -> bf16 GEMM (+ GELU) -> + fp32 residual
    a = torch.nn.functional.layer_norm(x, (24,), lw[0], lb[0], 1e-6).to(bf)
    z = torch.nn.functional.linear(a.double(), w[0].to(bf).double(), b[0].to(bf).double())
    z = torch.nn.functional.gelu(z) if act == "gelu" else z
    want = z + r.double() if res else z
    casts = WeightCasts()
    with torch.no_grad():
        got = ln_linear_aten(x, w, b, gemm=gemm, compute_dtype=bf, casts=casts, **kw)
    assert got.dtype == (torch.float32 if res else bf) and len(casts) == 2  # weight and bias, cast once
    # bf16 GEMM output rounding (before the fp32 residual add) and GELU's bf16 rounding
    assert rel_error(got.double(), want) < 8e-3
    wg = w.clone().requires_grad_()
    autograd = ln_linear_aten(x, wg, b, gemm=gemm, compute_dtype=bf, casts=casts, **kw)
    assert torch.equal(autograd.detach(), got)
    autograd.float().sum().backward()
    assert wg.grad is not None and wg.grad.dtype == torch.float32 and wg.grad.abs().sum() > 0
    with torch.no_grad():
        w.mul_(2)  # in place: the cached bf16 copy must be remade
        again = ln_linear_aten(x, w, b, gemm=gemm, compute_dtype=bf, casts=casts, **kw)
        assert torch.equal(again, ln_linear_aten(x, w, b, gemm=gemm, compute_dtype=bf, casts=WeightCasts(), **kw))
        assert not torch.equal(again, got)


@pytest.mark.parametrize("gemm", ["aten", "onednn"])
def test_out_writes_the_column_block_in_place(gemm):
    """``out=``: the result written into a column block of a bigger buffer (the rest untouched), also where out is
    the residual itself (CHI's in-place update); only at inference."""
    from pyengine.ops.ln_linear import ln_linear_aten
    g = torch.Generator().manual_seed(8)
    X = torch.randn(37, 48, generator=g)
    o = torch.randn(37, 16, generator=g)
    w, b = torch.randn(1, 16, 16, generator=g) * 0.2, torch.randn(1, 16, generator=g)
    with torch.no_grad():
        want = ln_linear_ref(o, w, b, residual=X[:, 16:32])
        buf = torch.full((37, 48), float("nan"))
        got = ln_linear_aten(o, w, b, gemm=gemm, residual=X[:, 16:32], out=buf[:, 16:32])
        assert got.data_ptr() == buf[:, 16:32].data_ptr()
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-5)
        assert buf[:, :16].isnan().all() and buf[:, 32:].isnan().all()
        inplace = X.clone()
        ln_linear_aten(o, w, b, gemm=gemm, residual=inplace[:, 16:32], out=inplace[:, 16:32])
        assert torch.allclose(inplace[:, 16:32], want, rtol=1e-5, atol=1e-5)
        assert torch.equal(inplace[:, :16], X[:, :16]) and torch.equal(inplace[:, 32:], X[:, 32:])
    with pytest.raises(ValueError, match="out: only at inference"):
        ln_linear_aten(o, w.requires_grad_(), b, gemm=gemm, residual=X[:, 16:32], out=buf[:, 16:32])
