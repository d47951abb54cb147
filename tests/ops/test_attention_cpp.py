"""pyengine::attention_cpp (csrc/attention_cpu.cpp, backend="cpp" of pyengine.ops.attention.attention) against the
fp64 evaluation of the eager reference ``attention_ref``.

Each result is held to at most 2x the error of the same-precision eager ``attention_ref`` (with the
pyengine.testing.FLOOR floors): odd sizes (Nq != Nk, D = 1 / 9, N = 1, ragged key and query tails), strided views of
a fused QKV buffer, queries shared over the batch (stride 0), G > 1, every kernel dtype; the op's registration
(opcheck, autograd, torch.compile) and the errors."""
import importlib

import pytest
import torch

from pyengine.backends import BackendUnavailableError
from pyengine.ops.attention import attention, attention_cpp_op, attention_ref
from pyengine.testing import assert_close, fused_qkv_views, same_bits_at_every_cpu_width

attention_module = importlib.import_module("pyengine.ops.attention")  # pyengine.ops.attention is the function

pytestmark = pytest.mark.skipif(not hasattr(attention_module.cpp_extension(), "attention_cpu"),
                                reason="pyengine._C built without csrc/attention_cpu.cpp")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["fp32", "bf16", "fp16"]


def check(q, k, v, name="attention cpp"):
    out = attention(q, k, v, backend="cpp")
    B, G, Nq, H, D = q.shape
    assert out.shape == (B, Nq, G, H, D) and out.dtype == q.dtype and out.is_contiguous()
    assert not out.isnan().any()
    want = attention_ref(q.double(), k.double(), v.double())
    assert_close(f"{name} ({q.dtype})", out, want, attention_ref(q, k, v))
    return out


def rand(*shape, dtype=torch.float32, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed + sum(shape))
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def qkv(B, G, Nq, Nk, H, D, dtype, scale=1.0):
    return (rand(B, G, Nq, H, D, dtype=dtype, scale=scale, seed=1), rand(B, G, Nk, H, D, dtype=dtype, seed=2),
            rand(B, G, Nk, H, D, dtype=dtype, seed=3))


# (B, G, Nq, Nk, H, D): the model shapes (shrunk in B where that changes nothing), odd sizes, N = 1, D = 1 / 9,
# key counts on either side of the 8 / 16 / 32 tiles, query counts that leave a partial 4-row block, D > 64.
SHAPES = [
    (2, 3, 81, 81, 8, 64),     # MHFormer-81, G = 3 hypotheses
    (2, 1, 81, 81, 8, 64),
    (16, 1, 34, 34, 9, 9),     # MHFormer's small-head attention
    (17, 1, 17, 17, 8, 32),    # MixSTE spatial
    (1, 1, 243, 243, 8, 32),   # MixSTE temporal
    (1, 1, 351, 351, 2, 32),
    (3, 2, 5, 7, 3, 1),
    (2, 1, 1, 1, 2, 8),
    (1, 1, 1, 33, 1, 16),
    (2, 3, 33, 1, 2, 9),
    (1, 2, 6, 15, 1, 48),
    (1, 1, 9, 40, 2, 80),
    (1, 1, 3, 9, 1, 130),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape", SHAPES, ids=["x".join(map(str, s)) for s in SHAPES])
def test_matches_reference(shape, dtype):
    check(*qkv(*shape, dtype))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_large_scores_and_late_maxima(dtype):
    """Peaked softmax rows (large scores) whose maxima sit in the last keys: the max subtraction matters."""
    q, k, v = qkv(2, 1, 27, 81, 2, 16, dtype, scale=3.0)
    k = k.clone()
    k[:, :, -5:] *= 8
    check(q, k, v)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("layout", ["qkv-major", "group-major"])
def test_strided_views_of_a_fused_qkv_buffer(layout, dtype):
    """q, k, v as views of one fused projection output ``[B*N, 3*G*H*D]``: no copy, the kernel reads strides."""
    B, N, G, H, D = 3, 27, 3, 2, 32
    buf = rand(B * N, 3 * G * H * D, dtype=dtype)
    q, k, v = fused_qkv_views(buf, B, N, G, H, D, layout)
    assert not q.is_contiguous() and not k.is_contiguous()
    out = check(q, k, v)
    assert torch.equal(out, attention(q.contiguous(), k.contiguous(), v.contiguous(), backend="cpp"))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_queries_shared_across_the_batch(dtype):
    """HoT's TRA: learned queries ``[1, 1, Nq, H, D]`` expanded over the batch and the groups (strides 0)."""
    B, G, Nq, Nk, H, D = 3, 2, 27, 17, 2, 16
    q = rand(1, 1, Nq, H, D, dtype=dtype).expand(B, G, -1, -1, -1)
    assert q.stride(0) == q.stride(1) == 0
    out = check(q, rand(B, G, Nk, H, D, dtype=dtype), rand(B, G, Nk, H, D, dtype=dtype, seed=5))
    assert out.shape == (B, Nq, G, H, D)


def test_result_does_not_depend_on_the_thread_count():
    q, k, v = qkv(1, 1, 83, 81, 2, 64, torch.float32)  # 2 heads: the query rows are split into blocks
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = attention(q, k, v, backend="cpp")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, attention(q, k, v, backend="cpp"))


# Key counts around each width's tiles (8, 16, 24 = 16 + 8, 32, 2W + W), head dims that leave P@V column passes
# of 16 / 32 / 48 after the 64-column ones, query counts that leave a partial 4-row block.
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_every_kernel_width_gives_the_same_bits(dtype):
    cases = [qkv(1, 1, 7, Nk, 2, D, dtype, scale=3.0) for Nk in (1, 7, 8, 9, 16, 17, 24, 31, 33, 40, 48, 56, 81)
             for D in (9, 32, 48, 64, 80, 112, 130)]
    widths = same_bits_at_every_cpu_width(attention_module.cpp_extension().attention_cpu_kernels,
                                          lambda: [attention(q, k, v, backend="cpp") for q, k, v in cases])
    if len(widths) < 2:
        pytest.skip(f"this CPU runs only the {widths[0]} kernels: no other width to compare")


def test_kernel_width_names_are_checked():
    ext = attention_module.cpp_extension()
    with pytest.raises(RuntimeError, match=r'use must be "avx512", "avx2" or "baseline", got "avx1024"'):
        ext.attention_cpu_kernels("avx1024")


def test_empty_batch_and_queries():
    for shape_q, shape_k in (((0, 1, 5, 2, 8), (0, 1, 7, 2, 8)), ((2, 1, 0, 2, 8), (2, 1, 7, 2, 8))):
        out = attention(torch.randn(shape_q), torch.randn(shape_k), torch.randn(shape_k), backend="cpp")
        assert out.shape == (shape_q[0], shape_q[2], 1, 2, 8)


def test_gradients_recompute_through_the_reference():
    q, k, v = (t.double().requires_grad_(True) for t in qkv(2, 1, 3, 4, 2, 5, torch.float32))
    g = torch.randn(2, 3, 1, 2, 5, dtype=torch.float64)
    qf, kf, vf = (t.detach().float().requires_grad_(True) for t in (q, k, v))
    attention(qf, kf, vf, backend="cpp").backward(g.float())
    attention_ref(q, k, v).backward(g)
    for got, want in ((qf.grad, q.grad), (kf.grad, k.grad), (vf.grad, v.grad)):
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)


def test_opcheck():
    views = torch.randn(2, 5, 3, 1, 2, 8, requires_grad=True).permute(2, 0, 3, 1, 4, 5)  # fused qkv views
    torch.library.opcheck(attention_cpp_op, (views[0], views[1], views[2]))
    q, k, v = qkv(2, 2, 3, 6, 2, 9, torch.bfloat16)
    torch.library.opcheck(attention_cpp_op, (q, k, v))
    torch.library.opcheck(attention_cpp_op, (q.half(), k.half(), v.half()))


def test_torch_compile_fullgraph():
    q, k, v = qkv(2, 1, 5, 7, 2, 16, torch.float32)

    def f(q, k, v):
        return attention(q, k, v, backend="cpp") * 2

    compiled = torch.compile(f, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(q, k, v), attention_ref(q, k, v) * 2, rtol=1e-5, atol=1e-6)


def test_bad_arguments():
    q, k, v = qkv(2, 1, 5, 7, 2, 8, torch.float32)
    with pytest.raises(TypeError, match=r"k: expected dtype torch.float32 \(q's\), got torch.bfloat16"):
        attention(q, k.bfloat16(), v, backend="cpp")
    with pytest.raises(TypeError, match=r"v: expected dtype torch.bfloat16 \(q's\), got torch.float16"):
        attention(q.bfloat16(), k.bfloat16(), v.half(), backend="cpp")
    with pytest.raises(BackendUnavailableError, match=r"backend='cpp' takes float32 / float16 / bfloat16, got q "
                                                      r"of dtype torch.float64; use backend='reference'"):
        attention(q.double(), k.double(), v.double(), backend="cpp")
    with pytest.raises(ValueError, match=r"q: expected a unit stride on the last \(head\) dim"):
        attention(rand(2, 1, 5, 2, 16)[..., ::2], k, v, backend="cpp")
    with pytest.raises(ValueError, match=r"v: expected Nk=7 keys"):
        attention(q, k, rand(2, 1, 6, 2, 8), backend="cpp")
    with pytest.raises(ValueError, match=r"k: expected at least one key"):
        attention(q, rand(2, 1, 0, 2, 8), rand(2, 1, 0, 2, 8), backend="cpp")
    with pytest.raises(RuntimeError, match=r"attention_cpu: q, k, v must have one dtype"):  # the C++ checks
        attention_module.cpp_extension().attention_cpu(q, k.half(), v)


def test_not_on_cuda():
    """A non-CPU tensor (meta stands in for CUDA here) is refused with a message naming the CUDA backends."""
    meta = torch.empty(1, 1, 2, 1, 8, device="meta")
    with pytest.raises(BackendUnavailableError, match=r"backend='cpp' runs on CPU tensors, got q on meta; use "
                                                      r"backend='triton'"):
        attention(meta, meta, meta, backend="cpp")
    assert attention_cpp_op(meta, meta, meta).device.type == "meta"  # the raw op on meta: its fake (shapes only)


def test_extension_without_the_kernel(monkeypatch):
    monkeypatch.setattr(attention_module, "cpp_extension", lambda: object())
    q, k, v = qkv(1, 1, 2, 2, 1, 8, torch.float32)
    with pytest.raises(BackendUnavailableError, match=r"needs pyengine._C with attention_cpu"):
        attention(q, k, v, backend="cpp")
