"""pyengine::attention (flash-style Triton kernel, interpreter on CI) against the fp64 eager reference.

Each kernel result is held to at most 2x the error of the same-precision eager composition (``attention_ref`` in
that dtype) against an fp64 evaluation of the reference on the same (rounded) inputs, plus a small floor."""
import pytest
import torch

from pyengine.backends import BackendUnavailableError
from pyengine.kernels import attention as kernel
from pyengine.ops.attention import attention, attention_op, attention_ref
from pyengine.testing import assert_close, fused_qkv_views, rel_error

# additive floors: the bound is 2 * eager error + MARGIN[dtype]
MARGIN = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def check_close(q, k, v, **kwargs):
    """Run the op on q/k/v (any layout) and compare with fp64 and same-precision eager evaluations."""
    out = attention(q, k, v, **kwargs)
    B, G, Nq, H, D = q.shape
    assert out.shape == (B, Nq, G, H, D) and out.dtype == q.dtype and out.is_contiguous()
    want = attention_ref(q.double(), k.double(), v.double())
    eager = attention_ref(q, k, v)
    assert not out.isnan().any()
    assert_close(f"attention ({q.dtype})", out, want, eager, floor=0.0, margin=MARGIN[q.dtype])
    return out


def rand(*shape, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape) * scale).to(dtype)


# (B, G, Nq, Nk, H, D): ragged lengths (27, 34, 81), odd batches, every MHG head dim, G = 1 and 3, Nq != Nk.
SHAPES = [
    (3, 1, 27, 27, 2, 3),
    (1, 3, 34, 34, 3, 9),
    (3, 1, 34, 34, 1, 27),
    (1, 1, 34, 34, 2, 39),
    (1, 3, 81, 27, 2, 64),
    (3, 1, 27, 81, 1, 64),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_matches_reference(shape, dtype):
    B, G, Nq, Nk, H, D = shape
    check_close(rand(B, G, Nq, H, D, dtype=dtype), rand(B, G, Nk, H, D, dtype=dtype),
                rand(B, G, Nk, H, D, dtype=dtype))


def test_bfloat16():
    check_close(rand(3, 3, 34, 2, 27, dtype=torch.bfloat16), rand(3, 3, 81, 2, 27, dtype=torch.bfloat16),
                rand(3, 3, 81, 2, 27, dtype=torch.bfloat16))


@pytest.mark.parametrize("layout", ["qkv-major", "group-major"])
def test_strided_views_of_a_fused_qkv_buffer(layout):
    """q, k, v as views of one fused projection output ``[B*N, 3*G*H*D]``: no copy, the kernel reads strides."""
    B, N, G, H, D = 3, 27, 3, 2, 9
    buf = torch.randn(B * N, 3 * G * H * D)
    q, k, v = fused_qkv_views(buf, B, N, G, H, D, layout)
    assert not q.is_contiguous() and q.data_ptr() != k.data_ptr()
    out = check_close(q, k, v)
    torch.testing.assert_close(out.view(B * N, G * H * D),
                               attention_ref(q, k, v).reshape(B * N, G * H * D), rtol=0, atol=1e-5)


def test_queries_shared_across_the_batch():
    """HoT's TRA: learned queries ``[1, 1, Nq, H, D]`` expanded over the batch and the joint groups (strides 0),
    Nq != Nk."""
    B, G, Nq, Nk, H, D = 3, 2, 27, 17, 2, 16
    q = torch.randn(1, 1, Nq, H, D).expand(B, G, -1, -1, -1)
    assert q.stride(0) == q.stride(1) == 0
    check_close(q, torch.randn(B, G, Nk, H, D), torch.randn(B, G, Nk, H, D))


def test_online_softmax_rescales_across_key_tiles():
    """Large scores whose row maxima sit in the last key tile: the running max and sum must be rescaled."""
    B, G, N, H, D = 1, 1, 81, 1, 16
    q = rand(B, G, N, H, D, scale=3.0)
    k = rand(B, G, N, H, D)
    k[:, :, -5:] *= 8.0  # the dominant keys come last (second 64-key tile)
    check_close(q, k, rand(B, G, N, H, D))


def test_output_is_fully_written():
    """The launcher writes into a NaN-poisoned output: any element the kernel skips stays NaN."""
    q, k, v = rand(3, 3, 34, 2, 9), rand(3, 3, 81, 2, 9), rand(3, 3, 81, 2, 9)
    out = torch.full((3, 34, 3, 2, 9), float("nan"))
    got = kernel.attention_fwd(q, k, v, out=out)
    assert got is out and not out.isnan().any()
    torch.testing.assert_close(out, attention_ref(q, k, v), rtol=1e-5, atol=1e-6)


def test_allow_tf32_runs():
    # The interpreter computes TF32 dots exactly; on the GPU the error is TF32's (~1e-3 relative).
    q, k, v = rand(1, 1, 27, 2, 39), rand(1, 1, 27, 2, 39), rand(1, 1, 27, 2, 39)
    out = attention(q, k, v, allow_tf32=True)
    assert rel_error(out, attention_ref(q.double(), k.double(), v.double())) < 5e-3


def test_reference_backend():
    q, k, v = rand(2, 1, 5, 2, 3), rand(2, 1, 7, 2, 3), rand(2, 1, 7, 2, 3)
    assert torch.equal(attention(q, k, v, backend="reference"), attention_ref(q, k, v))


def test_empty_batch_and_queries():
    for shape_q, shape_k in (((0, 1, 5, 2, 8), (0, 1, 7, 2, 8)), ((2, 1, 0, 2, 8), (2, 1, 7, 2, 8))):
        out = attention(torch.randn(shape_q), torch.randn(shape_k), torch.randn(shape_k))
        assert out.shape == (shape_q[0], shape_q[2], 1, 2, 8)


def test_every_pickable_config_is_compile_checked():
    listed = {(c.constexprs["BLOCK_M"], c.constexprs["BLOCK_N"], c.constexprs["BLOCK_D"], c.num_warps,
               c.num_stages, c.signature["q_ptr"], c.constexprs["ALLOW_TF32"]) for c in kernel.sm90_cases()}
    variants = [(torch.float32, False), (torch.float32, True), (torch.float16, False), (torch.bfloat16, False)]
    for dtype, tf32 in variants:
        for nq, nk in ((1, 1), (17, 17), (34, 34), (243, 81), (81, 243), (351, 351), (5000, 3)):
            for d in range(1, kernel.MAX_HEAD_DIM + 1):
                cfg = kernel.pick_config(nq, nk, d, dtype, tf32)
                assert cfg + ("*" + kernel.SIG[dtype], tf32) in listed, (nq, nk, d, dtype, tf32, cfg)


def test_gradcheck():
    """fp64 (interpreter only) through the op; backward recomputes through the reference. The queries are
    expanded over the batch, as in TRA, so their gradient sums over it."""
    # Tiny: every numerical-Jacobian column is two interpreted launches of B*G*H programs.
    q = torch.randn(1, 1, 2, 1, 2, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 1, 3, 1, 2, dtype=torch.float64, requires_grad=True)
    v = torch.randn(2, 1, 3, 1, 2, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda q, k, v: attention(q.expand(2, -1, -1, -1, -1), k, v), (q, k, v))


def test_opcheck():
    # Strided views of one qkv buffer, with gradients; B*G*H = 2 programs per (interpreted) launch.
    qkv = torch.randn(2, 5, 3, 1, 1, 3, requires_grad=True).permute(2, 0, 3, 1, 4, 5)
    torch.library.opcheck(attention_op, (qkv[0], qkv[1], qkv[2], False))


def test_torch_compile_and_export():
    q, k, v = rand(2, 1, 5, 2, 3), rand(2, 1, 7, 2, 3), rand(2, 1, 7, 2, 3)
    want = attention_ref(q, k, v)

    def f(q, k, v):
        return attention(q, k, v)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(q, k, v), want)

    class Attend(torch.nn.Module):
        def forward(self, q, k, v):
            return f(q, k, v)

    exported = torch.export.export(Attend(), (q, k, v))
    torch.testing.assert_close(exported.module()(q, k, v), want)


def test_bad_arguments():
    q, k, v = rand(2, 1, 5, 2, 8), rand(2, 1, 7, 2, 8), rand(2, 1, 7, 2, 8)
    with pytest.raises(ValueError, match=r"q: expected a 5-d tensor \[B, G, N, H, D\], got shape \[1, 5, 2, 8\]"):
        attention(q[0], k, v)
    with pytest.raises(ValueError, match=r"k: expected B=2 .* got \[3, 1, 7, 2, 8\]"):
        attention(q, rand(3, 1, 7, 2, 8), v)
    with pytest.raises(ValueError, match=r"v: expected G=1 .* got \[2, 3, 7, 2, 8\]"):
        attention(q, k, rand(2, 3, 7, 2, 8))
    with pytest.raises(ValueError, match=r"k: expected H=2 .* got \[2, 1, 7, 4, 8\]"):
        attention(q, rand(2, 1, 7, 4, 8), v)
    with pytest.raises(ValueError, match=r"v: expected D=8 .* got \[2, 1, 7, 2, 4\]"):
        attention(q, k, rand(2, 1, 7, 2, 4))
    with pytest.raises(ValueError, match=r"v: expected Nk=7 keys .* got \[2, 1, 6, 2, 8\]"):
        attention(q, k, rand(2, 1, 6, 2, 8))
    with pytest.raises(ValueError, match=r"k: expected at least one key"):
        attention(q, rand(2, 1, 0, 2, 8), rand(2, 1, 0, 2, 8))
    with pytest.raises(TypeError, match=r"k: expected dtype torch.float32 \(q's\), got torch.float16"):
        attention(q, k.half(), v)
    with pytest.raises(TypeError, match=r"q: expected a floating-point tensor, got torch.int64"):
        attention(q.long(), k.long(), v.long())
    with pytest.raises(ValueError, match=r"v: expected device cpu \(q's\), got meta"):
        attention(q, k, v.to("meta"))
    with pytest.raises(ValueError, match=r"q: expected a unit stride on the last \(head\) dim"):
        attention(rand(2, 1, 5, 2, 16)[..., ::2], k, v)
    with pytest.raises(BackendUnavailableError, match=r"backend='cuda' is not available"):
        attention(q, k, v, backend="cuda")
    with pytest.raises(BackendUnavailableError, match=r"head dims up to 128, got D=129"):
        attention(rand(1, 1, 2, 1, 129), rand(1, 1, 2, 1, 129), rand(1, 1, 2, 1, 129))


def test_unavailable_triton_cases(monkeypatch):
    from pyengine.ops.attention import _check_kernel_args
    meta = torch.empty(1, 1, 2, 1, 8, dtype=torch.float64, device="meta")  # stands in for a CUDA fp64 tensor
    with pytest.raises(BackendUnavailableError, match=r"float64 only on CPU under the interpreter"):
        _check_kernel_args(meta, meta, meta)
    import pyengine.kernels._common as common
    monkeypatch.setattr(common, "INTERPRETING", False)
    q = rand(1, 1, 2, 1, 8)
    with pytest.raises(BackendUnavailableError, match=r"needs CUDA tensors .* got a tensor on cpu"):
        attention(q, q, q)


def test_launch_grid_keeps_heads_on_axis_0(monkeypatch):
    """CUDA limits grid axis 1 to 65535 programs; MixSTE's spatial attention has B*F*H = 64*243*8 heads, so the
    (b, g, h) index must be on axis 0 (limit 2**31 - 1) and the few query tiles on axis 1."""
    grids = []

    class Recorder:
        def __getitem__(self, grid):
            grids.append(grid)
            return lambda *args, **kwargs: None

    monkeypatch.setattr(kernel, "_attention_fwd_kernel", Recorder())
    q = torch.empty(15552, 1, 17, 8, 64, device="meta")
    monkeypatch.setattr(kernel, "check_triton_device", lambda *a, **k: None)
    kernel.attention_fwd(q, q, q)
    assert grids == [(15552 * 8, 1)]
