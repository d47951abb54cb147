"""pyengine::attention_amx / attention_amx_out (csrc/attention_amx.cpp: AMX bf16 tiles) against the fp64 evaluation
of the eager reference ``attention_ref``.

Each result is held to at most 2x the error of the same-precision (bf16) eager ``attention_ref`` (with the
pyengine.testing.FLOOR floor): the model shapes (MHFormer B=16 G=3 N=81, HoT/MotionBERT N=351, MixSTE B=1 G=17
N=243), N = 1, Nq != Nk, ragged query / key tails (N = 17, 33, 100), D = 32 / 64 / 128 / 256 and padded D (1, 40,
72); strided views of a fused QKV buffer, queries shared over the batch (stride 0), ``out`` a column slice of a bigger
buffer (the rest untouched), thread-count independence; the ops' registration (opcheck, fake tensors, autograd,
torch.compile) and the errors. Skipped where the CPU / OS has no AMX-BF16."""
import importlib

import pytest
import torch

from pyengine.backends import BackendUnavailableError
from pyengine.ops.attention import attention, attention_ref
from pyengine.ops.attention_amx import (amx_available, attention_amx, attention_amx_op, attention_amx_out,
                                        attention_amx_out_op)
from pyengine.testing import assert_close, fused_qkv_views, rel_error

amx_module = importlib.import_module("pyengine.ops.attention_amx")  # pyengine.ops may export the function by name

pytestmark = pytest.mark.skipif(not amx_available(), reason="needs pyengine._C with attention_amx_cpu and a CPU / OS "
                                "with AMX-BF16 (Sapphire Rapids or later, Linux >= 5.16 tile-data permission)")

BF16 = torch.bfloat16


def rand(*shape, scale=1.0, seed=0, dtype=BF16):
    g = torch.Generator().manual_seed(seed + sum(shape))
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def qkv(B, G, Nq, Nk, H, D, scale=1.0):
    return (rand(B, G, Nq, H, D, scale=scale, seed=1), rand(B, G, Nk, H, D, seed=2), rand(B, G, Nk, H, D, seed=3))


def check(q, k, v, out=None, name="attention amx"):
    if out is None:
        out = attention_amx(q, k, v)
        B, G, Nq, H, D = q.shape
        assert out.shape == (B, Nq, G, H, D) and out.dtype == BF16 and out.is_contiguous()
    else:
        attention_amx_out(q, k, v, out)
    assert not out.isnan().any()
    want = attention_ref(q.double(), k.double(), v.double())
    assert_close(name, out, want, attention_ref(q, k, v))
    return out


# (B, G, Nq, Nk, H, D)
SHAPES = [
    (16, 3, 81, 81, 8, 64),    # MHFormer-81, G = 3 hypotheses
    (2, 3, 351, 351, 8, 64),   # HoT / MotionBERT-style length
    (1, 17, 243, 243, 8, 64),  # MixSTE-style: B = 1, many groups
    (1, 1, 1, 1, 1, 64),
    (2, 1, 17, 17, 2, 64),     # ragged tails: one full 16-row block + 1 row, keys 17 -> 32
    (1, 2, 33, 33, 3, 64),
    (1, 1, 100, 100, 2, 64),
    (2, 1, 27, 81, 2, 64),     # Nq != Nk
    (1, 2, 81, 5, 2, 64),
    (1, 1, 1, 130, 2, 64),
    (2, 1, 50, 47, 2, 32),
    (1, 1, 40, 70, 2, 128),
    (1, 1, 19, 35, 1, 256),
    (2, 1, 33, 29, 2, 40),     # D zero-padded to a multiple of 32
    (1, 1, 17, 9, 2, 72),
    (2, 2, 5, 7, 3, 1),
]


@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_matches_reference(shape):
    check(*qkv(*shape))


def test_large_scores_and_late_maxima():
    """Peaked softmax rows whose maxima sit in the last keys (past the last full 16-key tile)."""
    q, k, v = qkv(2, 1, 27, 81, 2, 64, scale=3.0)
    k = k.clone()
    k[:, :, -5:] *= 8
    check(q, k, v)


@pytest.mark.parametrize("layout", ["qkv-major", "group-major"])
def test_strided_views_of_a_fused_qkv_buffer(layout):
    """q, k, v as views of one fused projection output ``[B*N, 3*G*H*D]``: no copy, the kernel reads strides."""
    B, N, G, H, D = 3, 45, 3, 2, 64
    buf = rand(B * N, 3 * G * H * D)
    q, k, v = fused_qkv_views(buf, B, N, G, H, D, layout)
    assert not q.is_contiguous() and not k.is_contiguous()
    out = check(q, k, v)
    assert torch.equal(out, attention_amx(q.contiguous(), k.contiguous(), v.contiguous()))


def test_queries_shared_across_the_batch():
    """HoT's TRA: learned queries ``[1, 1, Nq, H, D]`` expanded over the batch and the groups (strides 0)."""
    B, G, Nq, Nk, H, D = 3, 2, 27, 17, 2, 64
    q = rand(1, 1, Nq, H, D).expand(B, G, -1, -1, -1)
    assert q.stride(0) == q.stride(1) == 0
    out = check(q, rand(B, G, Nk, H, D), rand(B, G, Nk, H, D, seed=5))
    assert torch.equal(out, attention_amx(q.contiguous(), rand(B, G, Nk, H, D), rand(B, G, Nk, H, D, seed=5)))


def test_matches_the_cpp_backend_closely():
    """The fp32 C++ kernel on the same bf16 inputs: both within bf16 rounding of each other."""
    q, k, v = qkv(2, 3, 81, 81, 8, 64)
    a, b = attention_amx(q, k, v).double(), attention(q, k, v, backend="cpp").double()
    assert (a - b).abs().max().item() <= 2e-2 * b.abs().max().item()


@pytest.mark.parametrize("D", [64, 40])
def test_out_is_a_column_slice_of_a_bigger_buffer(D):
    """``out = buf[:, :, g:g + 1]`` (strided rows): the slice is written, every other element of buf is untouched."""
    B, G, N, H = 2, 3, 37, 2
    buf = torch.full((B, N, G, H, D), 7.0, dtype=BF16)
    before = buf.clone()
    for g in range(G):
        q, k, v = qkv(B, 1, N, N, H, D)
        q, k, v = q * (g + 1), k, v + g
        out = buf[:, :, g:g + 1]
        assert not out.is_contiguous()
        check(q, k, v, out=out, name=f"attention amx out, group {g}")
        rest = torch.ones_like(buf, dtype=torch.bool)
        rest[:, :, :g + 1] = False
        assert torch.equal(buf[rest], before[rest])
        assert torch.equal(out, attention_amx(q, k, v))


def test_out_strided_with_padding_rows():
    """An ``out`` whose rows are separated by unused columns (a bigger buffer's head slice)."""
    B, G, N, H, D = 2, 1, 20, 2, 64
    big = torch.zeros(B, N, G, H, D + 32, dtype=BF16)
    out = big[..., 16:16 + D]
    q, k, v = qkv(B, G, N, N, H, D)
    check(q, k, v, out=out)
    assert not big[..., :16].any() and not big[..., 16 + D:].any()


@pytest.mark.parametrize("shape", [(1, 1, 83, 81, 2, 64), (1, 17, 243, 243, 8, 64), (4, 1, 33, 40, 1, 40)])
def test_result_does_not_depend_on_the_thread_count(shape):
    q, k, v = qkv(*shape)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = attention_amx(q, k, v)
        torch.set_num_threads(2)
        two = attention_amx(q, k, v)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


def test_empty_batch_and_queries():
    for shape_q, shape_k in (((0, 1, 5, 2, 64), (0, 1, 7, 2, 64)), ((2, 1, 0, 2, 64), (2, 1, 7, 2, 64))):
        q, k = torch.zeros(shape_q, dtype=BF16), torch.zeros(shape_k, dtype=BF16)
        out = attention_amx(q, k, k)
        assert out.shape == (shape_q[0], shape_q[2], 1, 2, 64)


def test_gradients_recompute_through_the_reference():
    q, k, v = qkv(2, 1, 19, 23, 2, 64)
    g = rand(2, 19, 1, 2, 64, seed=9)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    attention_amx(*leaves).backward(g)
    ref = [t.clone().requires_grad_(True) for t in (q, k, v)]
    attention_ref(*ref).backward(g)
    for got, want in zip(leaves, ref):  # the backward is attention_ref's on the same bf16 inputs
        assert torch.equal(got.grad, want.grad)
    exact = [t.double().requires_grad_(True) for t in (q, k, v)]
    attention_ref(*exact).backward(g.double())
    for got, want in zip(leaves, exact):  # and a sanity check of that bf16 backward against fp64
        assert rel_error(got.grad, want.grad) < 3e-2


def test_opcheck():
    views = rand(2, 5, 3, 1, 2, 64).permute(2, 0, 3, 1, 4, 5)  # fused qkv views [3, B, G, N, H, D]
    leaves = views.detach().requires_grad_(True)
    torch.library.opcheck(attention_amx_op, (leaves[0], leaves[1], leaves[2]))
    q, k, v = qkv(2, 2, 17, 6, 2, 40)
    torch.library.opcheck(attention_amx_op, (q, k, v))
    out = torch.zeros(2, 17, 2, 2, 40, dtype=BF16)
    torch.library.opcheck(attention_amx_out_op, (q, k, v, out))


def test_fake_tensors_and_meta():
    from torch._subclasses.fake_tensor import FakeTensorMode

    q, k, v = qkv(2, 3, 9, 11, 2, 64)
    with FakeTensorMode() as mode:
        fq, fk, fv = (mode.from_tensor(t) for t in (q, k, v))
        out = attention_amx_op(fq, fk, fv)
        assert out.shape == (2, 9, 3, 2, 64) and out.dtype == BF16
        fo = mode.from_tensor(torch.empty(2, 9, 3, 2, 64, dtype=BF16))
        assert attention_amx_out_op(fq, fk, fv, fo) is None
    meta = torch.empty(1, 1, 2, 1, 64, device="meta", dtype=BF16)
    assert attention_amx_op(meta, meta, meta).device.type == "meta"  # the raw op on meta: its fake (shapes only)


def test_torch_compile_fullgraph():
    q, k, v = qkv(2, 1, 5, 7, 2, 64)

    def f(q, k, v):
        return attention_amx(q, k, v) * 2

    compiled = torch.compile(f, fullgraph=True, backend="eager")
    assert torch.equal(compiled(q, k, v), attention_amx(q, k, v) * 2)


def test_bad_arguments():
    q, k, v = qkv(2, 1, 5, 7, 2, 64)
    with pytest.raises(BackendUnavailableError, match=r"attention_amx: takes bfloat16 q / k / v, got q of dtype "
                                                      r"torch.float32; use .*backend='cpp'"):
        attention_amx(q.float(), k.float(), v.float())
    with pytest.raises(TypeError, match=r"k: expected dtype torch.bfloat16 \(q's\), got torch.float32"):
        attention_amx(q, k.float(), v)
    with pytest.raises(BackendUnavailableError, match=r"supports head dims 1..256, got D=264"):
        attention_amx(*qkv(1, 1, 3, 3, 1, 264))
    with pytest.raises(ValueError, match=r"q: expected a unit stride on the last \(head\) dim"):
        attention_amx(rand(2, 1, 5, 2, 128)[..., ::2], k, v)
    with pytest.raises(ValueError, match=r"v: expected Nk=7 keys"):
        attention_amx(q, k, rand(2, 1, 6, 2, 64))
    with pytest.raises(ValueError, match=r"out: expected shape \[2, 5, 1, 2, 64\] \[B, Nq, G, H, D\], got "
                                         r"\[2, 1, 5, 2, 64\]"):
        attention_amx_out(q, k, v, torch.empty(2, 1, 5, 2, 64, dtype=BF16))
    with pytest.raises(TypeError, match=r"out: expected dtype torch.bfloat16, got torch.float32"):
        attention_amx_out(q, k, v, torch.empty(2, 5, 1, 2, 64))
    with pytest.raises(ValueError, match=r"out: expected a unit stride on the last \(head\) dim"):
        attention_amx_out(q, k, v, torch.empty(2, 5, 1, 2, 128, dtype=BF16)[..., ::2])
    with pytest.raises(ValueError, match=r"out: expected no stride-0"):
        attention_amx_out(q, k, v, torch.empty(2, 1, 1, 2, 64, dtype=BF16).expand(2, 5, 1, 2, 64))
    with pytest.raises(TypeError, match=r"out: expected a torch.Tensor, got list"):
        attention_amx_out(q, k, v, [])
    with pytest.raises(RuntimeError, match=r"attention_amx_cpu: q, k, v, out must be bfloat16"):  # the C++ checks
        amx_module._extension().attention_amx_cpu(q, k, v, torch.empty(2, 5, 1, 2, 64))
    qc = q.contiguous()  # G = 1: [B, 1, Nq, H, D] has the memory of [B, Nq, 1, H, D]
    with pytest.raises(RuntimeError, match=r"refer to a single memory location"):
        attention_amx_out(qc, k, v, qc.view(2, 5, 1, 2, 64))


def test_not_on_cuda():
    """A non-CPU tensor (meta stands in for CUDA here) is refused with a message naming the CUDA backend."""
    meta = torch.empty(1, 1, 2, 1, 64, device="meta", dtype=BF16)
    with pytest.raises(BackendUnavailableError, match=r"attention_amx: runs on CPU tensors, got q on meta"):
        attention_amx(meta, meta, meta)


def test_extension_without_the_kernel(monkeypatch):
    monkeypatch.setattr(amx_module, "cpp_extension", lambda: object())
    assert not amx_module.amx_available()
    q, k, v = qkv(1, 1, 2, 2, 1, 64)
    with pytest.raises(BackendUnavailableError, match=r"needs pyengine._C with attention_amx_cpu"):
        attention_amx(q, k, v)


def test_cpu_without_amx(monkeypatch):
    class NoAmx:
        attention_amx_cpu = staticmethod(lambda *a: None)
        amx_bf16_available = staticmethod(lambda: False)

    monkeypatch.setattr(amx_module, "cpp_extension", lambda: NoAmx())
    assert not amx_module.amx_available()
    q, k, v = qkv(1, 1, 2, 2, 1, 64)
    with pytest.raises(BackendUnavailableError, match=r"does not run AMX-BF16"):
        attention_amx(q, k, v)
