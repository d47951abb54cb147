"""pyengine::group_layernorm (csrc/group_layernorm_cpu.cpp, backend="cpp" of pyengine.ops.group_layernorm) against
the fp64 evaluation of the eager reference ``group_layernorm_ref`` on the same (rounded) inputs.

Each result is held to 2x the error of the same-precision eager reference (bound ``max(2 * eager, FLOOR[dtype])``,
as tests/ops/test_layernorm.py), and bf16 / fp16 results additionally to one unit in the last place of the
correctly rounded value (one rounding): G = 1 / 3, K = 512 / 81 / 34 / 17 / 1000 / 1 (vector tails), in_cols default,
shared and permuted (CHI's), strided rows, ``out=`` as a column block of a bigger buffer, a large mean offset, the
thread count; the op's registration (opcheck, autograd, torch.compile) and the errors."""
import pytest
import torch

from pyengine.backends import BackendUnavailableError, cpp_extension
from pyengine.ops.group_layernorm import _backward, group_layernorm, group_layernorm_op, group_layernorm_ref
from pyengine.testing import FLOOR, assert_close, rel_error, same_bits_at_every_cpu_width

pytestmark = pytest.mark.skipif(not hasattr(cpp_extension(), "group_layernorm_cpu"),
                                reason="pyengine._C built without csrc/group_layernorm_cpu.cpp")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["fp32", "bf16", "fp16"]
MANTISSA = {torch.bfloat16: 7, torch.float16: 10}


def make(M, K_x, G, K, dtype, seed=0, offset=0.5, scale=1.0):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    x = offset + scale * randn(M, K_x)
    return x.to(dtype), (1 + 0.2 * randn(G, K)).to(dtype), (0.1 * randn(G, K)).to(dtype)


def check(x, w, b, in_cols=None, eps=1e-5, out=None, name="group_layernorm"):
    """Run the cpp backend, compare with the fp64 reference on the same inputs; returns the result."""
    dtype = x.dtype
    if out is None:
        got = group_layernorm(x, w, b, in_cols=in_cols, eps=eps)
        assert got.is_contiguous()
    else:
        with torch.no_grad():
            got = group_layernorm(x, w, b, in_cols=in_cols, eps=eps, out=out)
        assert got is out
    want = group_layernorm_ref(x.double(), w.double(), b.double(), in_cols=in_cols, eps=eps)
    eager = group_layernorm_ref(x, w, b, in_cols=in_cols, eps=eps)
    assert got.shape == want.shape and got.dtype == dtype and not got.isnan().any()
    assert_close(f"{name} ({dtype})", got, want, eager, floor=FLOOR[dtype] / 2)
    if dtype in MANTISSA:  # one rounding of an fp32-accurate value: within 1 ulp of the correctly rounded result
        ulp = torch.exp2(torch.floor(torch.log2(want.abs().clamp_min(1e-30))) - MANTISSA[dtype])
        excess = (got.double() - want).abs() - (ulp + 1e-5)
        assert excess.max().item() <= 0, f"{name} ({dtype}): more than 1 ulp from the correctly rounded result"
    return got


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("G", [1, 3])
@pytest.mark.parametrize("K", [512, 81, 34, 17, 1000, 1])
def test_groups_and_widths_default_in_cols(dtype, G, K):
    check(*make(29, G * K, G, K, dtype, seed=K + G))


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_mhformer_shape(dtype):
    """MHFormer's fused CPU path: three hypotheses [1296, 3 * 512] in one buffer, eps 1e-6."""
    check(*make(1296, 3 * 512, 3, 512, dtype, seed=1), eps=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_in_cols_shared_permuted_and_overlapping(dtype):
    C = 64
    x, w, b = make(33, C, 3, C, dtype, seed=2)  # K_x == K: the default is [0, 0, 0] (every group reads x)
    shared = check(x, w, b, name="shared default")
    assert torch.equal(shared, check(x, w, b, in_cols=[0, 0, 0], name="shared"))
    x, w, b = make(33, 3 * C, 3, C, dtype, seed=3)
    check(x, w, b, in_cols=[1 * C, 2 * C, 0], name="CHI permuted")
    x, w, b = make(33, 100, 3, C, dtype, seed=4)
    check(x, w, b, in_cols=[36, 0, 17], name="overlapping")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_strided_rows_and_out_column_block(dtype):
    G, K = 3, 81
    big, w, b = make(40, G * K + 11, G, K, dtype, seed=5)
    x = big[:, 4:4 + G * K]
    assert not x.is_contiguous() and x.stride(0) == G * K + 11
    want = group_layernorm(x.contiguous(), w, b, eps=1e-5)
    assert torch.equal(check(x, w, b), want)  # the row stride changes nothing
    buf = torch.full((40, G * K + 20), 7.0, dtype=dtype)
    out = buf[:, 13:13 + G * K]
    check(x, w, b, out=out, name="out= column block")
    assert torch.equal(out, want)
    assert (buf[:, :13] == 7).all() and (buf[:, 13 + G * K:] == 7).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("offset", [1000.0, 1e4])
def test_large_mean_offset(dtype, offset):
    """|mean| >> std: the statistics must not lose the deviations to the offset (bf16 x at 1e3 / 1e4 has a coarse
    grid, spread 30 so that rows are not constant)."""
    scale = 1.0 if dtype == torch.float32 else 30.0
    check(*make(37, 3 * 200, 3, 200, dtype, seed=6, offset=offset, scale=scale), eps=1e-6)


def test_eps_and_constant_rows():
    x, w, b = make(5, 2 * 40, 2, 40, torch.float32, seed=7)
    x[1] = 3.0  # a constant row: x - mean = 0 exactly, the output is the bias
    got = check(x, w, b, eps=1e-5)
    assert torch.equal(got[1], b.reshape(-1))
    check(x, w, b, eps=0.1)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_result_does_not_depend_on_the_thread_count(dtype):
    """M odd: with 2 threads the second block starts at an odd row, so the rows the kernel pairs differ from the
    1-thread run's."""
    x, w, b = make(1295, 3 * 512, 3, 512, dtype, seed=8)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = group_layernorm(x, w, b, eps=1e-6)
        torch.set_num_threads(2)
        two = group_layernorm(x, w, b, eps=1e-6)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, two)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_rows_alone_match_rows_in_pairs(dtype):
    """The kernel runs rows two at a time; a row normalised on its own (M = 1) gives the same bits."""
    x, w, b = make(7, 2 * 81, 2, 81, dtype, seed=14)
    full = group_layernorm(x, w, b, eps=1e-5)
    for m in range(7):
        assert torch.equal(group_layernorm(x[m:m + 1], w, b, eps=1e-5), full[m:m + 1]), m


# K around the 16-lane steps and the 64-value sweeps (tails of 1 .. 15 lanes), odd and even row counts (rows in
# pairs on AVX-512, one at a time on AVX2 / baseline), a large mean offset, strided groups.
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_every_kernel_width_gives_the_same_bits(dtype):
    cases = [(make(M, G * K + 3, G, K, dtype, seed=K, offset=off), [3 + g * K for g in range(G)][::-1])
             for M, K, G, off in ((7, 1, 1, 0.5), (6, 15, 3, 0.5), (5, 16, 1, 100.0), (9, 17, 2, 0.5), (4, 63, 1, 0.5),
                                  (3, 64, 3, 0.5), (8, 81, 3, 1e3), (11, 351, 1, 0.5), (6, 512, 3, 0.5),
                                  (5, 1000, 1, 0.5))]
    widths = same_bits_at_every_cpu_width(
        cpp_extension().group_layernorm_cpu_kernels,
        lambda: [group_layernorm(x, w, b, in_cols=cols, eps=1e-5) for (x, w, b), cols in cases])
    if len(widths) < 2:
        pytest.skip(f"this CPU runs only the {widths[0]} kernels: no other width to compare")


def test_kernel_width_names_are_checked():
    with pytest.raises(RuntimeError, match=r'use must be "avx512", "avx2" or "baseline", got "sse"'):
        cpp_extension().group_layernorm_cpu_kernels("sse")


def test_empty_rows():
    x, w, b = make(0, 3 * 8, 3, 8, torch.float32)
    assert group_layernorm(x, w, b, eps=1e-5).shape == (0, 24)


def test_backward_formula_matches_autograd_of_the_reference():
    """fp64: _backward against torch autograd of group_layernorm_ref, with groups sharing columns of x and columns
    no group reads."""
    x, w, b = make(9, 20, 3, 6, torch.float64, seed=9)
    in_cols = [4, 0, 4]
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]
    y = group_layernorm_ref(*leaves, in_cols=in_cols, eps=1e-5)
    grad = torch.randn_like(y)
    want = torch.autograd.grad(y, leaves, grad)

    class Ctx:
        saved_tensors = (x, w)
        eps = 1e-5

    Ctx.in_cols = in_cols
    got = _backward(Ctx, grad)
    assert got[3] is None and got[4] is None
    for name, a, e in zip(("x", "weight", "bias"), got, want):
        assert rel_error(a, e) < 1e-12, name
    assert (got[0][:, 10:] == 0).all()


def test_gradients_through_the_op_fp32():
    """fp32 end to end (the C++ forward + the registered backward) against the fp64 gradients, 2x the fp32 eager
    (autograd of the reference) error."""
    x, w, b = make(31, 3 * 40, 3, 40, torch.float32, seed=10)
    in_cols = [40, 80, 0]
    grad = torch.randn(31, 120, generator=torch.Generator().manual_seed(11))

    def grads(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (x, w, b)]
        return torch.autograd.grad(fn(*leaves, in_cols=in_cols, eps=1e-5), leaves, grad.to(dtype))

    want = grads(group_layernorm_ref, torch.float64)
    eager = grads(group_layernorm_ref, torch.float32)
    got = grads(group_layernorm, torch.float32)
    for name, a, e, ea in zip(("dx", "dweight", "dbias"), got, want, eager):
        assert a.dtype == torch.float32
        assert_close(f"group_layernorm {name}", a, e, ea, floor=FLOOR[torch.float32] / 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_opcheck(dtype):
    big, w, b = make(7, 3 * 9 + 2, 3, 9, dtype, seed=12)
    torch.library.opcheck(group_layernorm_op, (big[:, 1:28], w, b, [9, 18, 0], 1e-5))
    torch.library.opcheck(group_layernorm_op, (big[:, :9], w, b, [0, 0, 0], 1e-6))


def test_torch_compile():
    x, w, b = make(5, 3 * 8, 3, 8, torch.float32, seed=13)

    def f(x, w, b):
        return group_layernorm(x, w, b, in_cols=[8, 16, 0], eps=1e-6)

    want = group_layernorm_ref(x, w, b, in_cols=[8, 16, 0], eps=1e-6)
    assert rel_error(torch.compile(f, fullgraph=True, backend="aot_eager")(x, w, b), want) < 1e-5


def test_bad_arguments():
    x, w, b = make(4, 12, 2, 6, torch.float32)
    with pytest.raises(ValueError, match=r"x: expected a 2-D tensor \[M, K_x\], got shape \[12\]"):
        group_layernorm(x[0], w, b, eps=1e-6)
    with pytest.raises(TypeError, match=r"x: expected a torch.Tensor, got list"):
        group_layernorm([1.0], w, b, eps=1e-6)
    with pytest.raises(ValueError, match=r"weight: expected a 2-D tensor \[G, K\]"):
        group_layernorm(x, w[0], b, eps=1e-6)
    with pytest.raises(ValueError, match=r"bias: expected shape \[2, 6\] \(weight's\), got \[2, 5\]"):
        group_layernorm(x, w, b[:, :5], eps=1e-6)
    with pytest.raises(TypeError, match=r"bias: expected dtype torch.float32 \(the dtype of x\), got torch.bfloat16"):
        group_layernorm(x, w, b.bfloat16(), eps=1e-6)
    with pytest.raises(ValueError, match=r"x: expected unit column stride"):
        group_layernorm(torch.zeros(12, 4).t(), w, b, eps=1e-6)
    with pytest.raises(ValueError, match=r"in_cols: x has 10 columns, which is neither G\*K"):
        group_layernorm(x[:, :10], w, b, eps=1e-6)
    with pytest.raises(ValueError, match=r"in_cols: expected 2 column offsets \(one per group\), got 3"):
        group_layernorm(x, w, b, in_cols=[0, 0, 0], eps=1e-6)
    with pytest.raises(ValueError, match=r"in_cols\[1\]: expected an offset in \[0, K_x - K\] = \[0, 6\]"):
        group_layernorm(x, w, b, in_cols=[0, 7], eps=1e-6)
    with pytest.raises(TypeError, match=r"in_cols\[0\]: expected an int, got float"):
        group_layernorm(x, w, b, in_cols=[0.0, 6], eps=1e-6)
    with pytest.raises(ValueError, match=r"eps: expected a finite number >= 0, got nan"):
        group_layernorm(x, w, b, eps=float("nan"))
    with pytest.raises(BackendUnavailableError, match=r"backend='triton' is not available"):
        group_layernorm(x, w, b, eps=1e-6, backend="triton")
    with pytest.raises(BackendUnavailableError, match=r"backend='cpp' takes float32 / bfloat16 / float16"):
        group_layernorm(x.double(), w.double(), b.double(), eps=1e-6)
    assert group_layernorm(x.double(), w.double(), b.double(), eps=1e-6, backend="reference").dtype == torch.float64


def test_bad_out():
    x, w, b = make(4, 12, 2, 6, torch.float32)
    with pytest.raises(ValueError, match=r"out: expected shape \[M, G\*K\] = \[4, 12\], got \[4, 11\]"):
        group_layernorm(x, w, b, eps=1e-6, out=torch.empty(4, 11))
    with pytest.raises(TypeError, match=r"out: expected dtype torch.float32 \(the dtype of x\), got torch.bfloat16"):
        group_layernorm(x, w, b, eps=1e-6, out=torch.empty(4, 12, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match=r"out: expected unit column stride"):
        group_layernorm(x, w, b, eps=1e-6, out=torch.empty(12, 4).t())
    with pytest.raises(ValueError, match=r"out: only backend='cpp' writes into out="):
        group_layernorm(x, w, b, eps=1e-6, out=torch.empty(4, 12), backend="reference")
    with pytest.raises(ValueError, match=r"out: out= is the inference path \(no autograd\)"):
        group_layernorm(x, w.clone().requires_grad_(), b, eps=1e-6, out=torch.empty(4, 12))
    with torch.no_grad():  # allowed without a graph
        group_layernorm(x, w.clone().requires_grad_(), b, eps=1e-6, out=torch.empty(4, 12))
    with pytest.raises(RuntimeError, match=r"refer to a single memory location"):
        group_layernorm(x, w, b, eps=1e-6, out=x)


def test_raw_kernel_checks():
    """The C++ entry point re-checks what would otherwise read or write out of bounds."""
    ext = cpp_extension()
    x, w, b = make(4, 12, 2, 6, torch.float32)
    with pytest.raises(RuntimeError, match=r"in_cols entries must lie in \[0, K_x - K\] = \[0, 6\], got 7"):
        ext.group_layernorm_cpu(x, [0, 7], w, b, 1e-6)
    with pytest.raises(RuntimeError, match=r"in_cols must hold G = 2 offsets, got 1"):
        ext.group_layernorm_cpu(x, [0], w, b, 1e-6)
    with pytest.raises(RuntimeError, match=r"weight and bias must be CPU tensors of x's dtype"):
        ext.group_layernorm_cpu(x, [0, 6], w.double(), b, 1e-6)
    with pytest.raises(RuntimeError, match=r"out's rows must not overlap"):
        ext.group_layernorm_cpu(x, [0, 6], w, b, 1e-6, torch.empty(12).expand(4, 12))
