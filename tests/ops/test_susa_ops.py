"""pyengine::susa / pyengine::susa_into (Triton under the interpreter, C++; CUDA when there is a GPU) against the
eager SUSA modules of pyengine/models/susa.py evaluated in fp64; the op's registration; argument errors.

A kernel is held to at most 2x the error of the same-precision eager module (with a small floor). Interpreter
runs cost ~1 s per call, so the Triton matrix is smaller than the C++ one (64x48 at one channel count only)."""
import copy

import pytest
import torch

from pyengine.backends import BackendUnavailableError
from pyengine.models.susa import HSUSA, WSUSA
from pyengine.ops.susa import shuffle_index, susa, susa_into, susa_into_op, susa_op
from pyengine.testing import assert_close, dispatched_ops, randomize_, rel_error

CUDA = torch.cuda.is_available()


def device(impl):
    """Where an implementation runs: C++ on the CPU, CUDA on the GPU, Triton on the GPU when there is one and
    the interpreter is off (else on the CPU, interpreted)."""
    from pyengine.kernels._common import INTERPRETING
    return "cuda" if impl == "cuda" or (impl == "triton" and CUDA and not INTERPRETING) else "cpu"


def on(impl, *tensors):
    return tuple(None if t is None else t.to(device(impl)) for t in tensors)


def module_and_params(direction, c, ln, dtype, seed=0):
    cls = HSUSA if direction == "h" else WSUSA
    m = randomize_(cls(c, ln_enable=ln), seed=seed).to(dtype)
    ln_w, ln_b = (m.ln.weight, m.ln.bias) if ln else (None, None)
    params = (m.group_weight, m.mean_conv.conv.weight, m.mean_conv.conv.bias, m.conv.conv.weight, m.conv.conv.bias,
              ln_w, ln_b)
    return m, params


def check(impl, direction, c, h, w, ln, dtype=torch.float32, channels_last=False, n=2, seed=0):
    m, params = module_and_params(direction, c, ln, dtype, seed)
    x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed + 1)).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    want = copy.deepcopy(m).double()(x.double())  # same (rounded) parameters, in fp64
    eager_err = rel_error(m(x), want)
    got = susa(*on(impl, x, *params), direction=direction, backend=impl).cpu()
    assert got.dtype == dtype and got.shape == x.shape
    assert got.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert_close(f"{impl} ({dtype})", got, want, eager_err)  # floors: pyengine.testing.FLOOR
    return got


IMPLS = ["cpp", "triton", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.cuda_ext])]


@pytest.mark.parametrize("ln", [True, False])
@pytest.mark.parametrize("direction", ["h", "w"])
@pytest.mark.parametrize("c,hw", [(10, (8, 6)), (20, (16, 12)), (40, (7, 5))])
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_reference_fp32(impl, c, hw, direction, ln):
    check(impl, direction, c, *hw, ln)


@pytest.mark.parametrize("c", [10, 20, 40])
@pytest.mark.parametrize("hw", [(8, 6), (16, 12), (7, 5), (64, 48)])
def test_cpp_all_published_sizes(c, hw):
    for direction in "hw":
        for ln in (True, False):
            check("cpp", direction, c, *hw, ln)


@pytest.mark.parametrize("direction", ["h", "w"])
@pytest.mark.parametrize("impl", IMPLS)
def test_largest_size(impl, direction):
    check(impl, direction, 20, 64, 48, True, n=1)


@pytest.mark.parametrize("n", [1, 3, 4, 9])
def test_cpp_work_splits(n):
    """The C++ op gives whole samples to threads when the batch divides evenly (or is large), and otherwise runs
    every thread on one sample at a time (channels / row blocks, with barriers); with two threads, n = 1 and 3
    take the second path, 4 and 9 the first. Both, in fp32 (x read in place) and fp16 (converted planes), both
    memory formats."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for direction, dtype, cl in (("h", torch.float32, False), ("w", torch.float16, False),
                                     ("h", torch.float32, True), ("w", torch.float32, True)):
            check("cpp", direction, 20, 64, 48, True, dtype=dtype, channels_last=cl, n=n, seed=n)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("dtype,shape", [(torch.float16, (10, 16, 12)), (torch.float16, (20, 7, 5)),
                                         (torch.bfloat16, (10, 8, 6))])
@pytest.mark.parametrize("impl", IMPLS)
def test_half_precision(impl, dtype, shape):
    for direction in "hw":
        check(impl, direction, *shape, ln=True, dtype=dtype)
    check(impl, "h", *shape, ln=False, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("impl", IMPLS)
def test_channels_last(impl, dtype):
    for direction in "hw":
        check(impl, direction, 20, 16, 12, True, dtype=dtype, channels_last=True)


@pytest.mark.parametrize("block_hw", [(8, 6), (16, 12), (32, 24)])
def test_triton_gpu_launch_configs_under_interpreter(monkeypatch, block_hw):
    """The interpreter normally runs whole samples per program; run the configurations a GPU picks too."""
    from pyengine.kernels import susa as tk
    monkeypatch.setattr(tk, "INTERPRETING", False)
    check("triton", "h", 10, *block_hw, True, n=1)
    check("triton", "w", 10, *block_hw, False, n=1)


@pytest.mark.parametrize("impl", IMPLS)
def test_into_strided_input_and_shuffled_output_poisoned(impl):
    """x is a channel slice of a larger tensor (channels-last too); results land at shuffled channels of a
    NaN-filled output; every other channel stays NaN."""
    for channels_last in (False, True):
        c, h, w = 12, 9, 7
        m, params = module_and_params("w", c, True, torch.float32, seed=3)
        big = torch.randn(2, 3 * c, h, w)
        if channels_last:
            big = big.contiguous(memory_format=torch.channels_last)
        x = big[:, c:2 * c]
        want = m.double()(x.double())
        out = torch.full((2, 2 * c, h, w), float("nan"))
        index = shuffle_index(2 * c, 4, offset=c, count=c)  # second half of a 4-group shuffle
        out_d = out.to(device(impl))
        susa_into(*on(impl, x, *params), out=out_d, out_index=index.to(device(impl)), direction="w", backend=impl)
        out = out_d.cpu()
        got = out[:, index.long()]
        assert rel_error(got, want) <= 2e-6
        rest = torch.ones(2 * c, dtype=torch.bool)
        rest[index.long()] = False
        assert torch.isnan(out[:, rest]).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_every_element_written(impl):
    """Every output element comes from the kernel: a NaN-poisoned full-size output has no NaN left."""
    c = 10
    _, params = module_and_params("h", c, True, torch.float32)
    x = torch.randn(2, c, 7, 5, device=device(impl))
    out = torch.full_like(x, float("nan"))
    index = torch.arange(c, dtype=torch.int32, device=device(impl))
    susa_into(*on(impl, x, *params), out=out, out_index=index, direction="h", backend=impl)
    assert not torch.isnan(out).any()


def test_shuffle_index_matches_channel_shuffle():
    from pyengine.models.susa import channel_shuffle
    for c, g in [(8, 2), (12, 4), (12, 1)]:
        x = torch.arange(c, dtype=torch.float32).reshape(1, c, 1, 1)
        y = channel_shuffle(x, g).flatten()
        index = shuffle_index(c, g)
        assert torch.equal(y[index.long()], torch.arange(c, dtype=torch.float32))


def test_errors():
    _, p = module_and_params("h", 4, True, torch.float32)
    _, pw = module_and_params("w", 4, True, torch.float32)
    x = torch.randn(1, 4, 8, 6)
    with pytest.raises(ValueError, match=r"H=97 exceeds the limit H <= 96"):
        susa(torch.randn(1, 4, 97, 6), *p, direction="h")
    with pytest.raises(ValueError, match=r"W=73 exceeds the limit W <= 72"):
        susa(torch.randn(1, 4, 6, 73), *pw, direction="w")
    with pytest.raises(ValueError, match=r"H, W <= 96"):
        susa(torch.randn(1, 4, 6, 97), *p, direction="h")
    with pytest.raises(TypeError, match=r"float32, float16 or bfloat16, got torch.float64"):
        susa(x.double(), *p)
    with pytest.raises(ValueError, match=r"4-D"):
        susa(x[0], *p)
    with pytest.raises(ValueError, match=r"conv_w must have 16 elements"):
        susa(x, p[0], p[1], p[2], torch.ones(3, 3), *p[4:])
    with pytest.raises(ValueError, match=r"both be given"):
        susa(x, *p[:5], p[5], None)
    with pytest.raises(ValueError, match=r"direction must be 'h'"):
        susa(x, *p, direction="x")
    with pytest.raises(BackendUnavailableError, match=r"backend='nope'"):
        susa(x, *p, backend="nope")
    with pytest.raises(BackendUnavailableError, match=r"CUDA tensors"):
        susa(x, *p, backend="cuda")
    with pytest.raises(ValueError, match=r"out_index must be an int32 tensor \[4\]"):
        susa_into(x, *p, out=torch.empty(1, 4, 8, 6), out_index=torch.arange(4))
    with pytest.raises(ValueError, match=r"out_index values must lie in \[0, 4\)"):
        susa_into(x, *p, out=torch.empty(1, 4, 8, 6), out_index=torch.arange(1, 5, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"out must be \[N=1, C_out, H=8, W=6\]"):
        susa_into(x, *p, out=torch.empty(1, 4, 8, 5), out_index=torch.arange(4, dtype=torch.int32))


@pytest.mark.skipif(CUDA, reason="checks the error raised where the extension has no CUDA")
def test_cuda_impl_unavailable_without_cuda():
    _, p = module_and_params("h", 4, True, torch.float32)
    x = torch.randn(1, 4, 8, 6)
    args = [t.float().reshape(4, 4) if t.numel() == 16 else t.float().reshape(-1) for t in p]
    with pytest.raises(BackendUnavailableError, match=r"built with CUDA"):
        susa_op(x, *args, True, "cuda")


def _raw_args(direction="h", c=4, ln=True):
    _, p = module_and_params(direction, c, ln, torch.float32)
    return tuple(None if t is None else (t.detach().float().reshape(c, c) if t.numel() == c * c and c > 1
                                         else t.detach().float().reshape(-1).contiguous()) for t in p)


@pytest.mark.parametrize("impl", ["cpp", "triton"])
def test_opcheck(impl):
    x = torch.randn(1, 4, 5, 3)
    torch.library.opcheck(susa_op, (x, *_raw_args(), True, impl))
    if impl == "cpp":
        out = torch.zeros(1, 8, 5, 3)
        torch.library.opcheck(susa_into_op, (x, *_raw_args("w", ln=False), False, out,
                                             torch.tensor([1, 3, 5, 7], dtype=torch.int32), impl))


def test_torch_compile_and_export():
    _, p = module_and_params("h", 4, True, torch.float32)
    x = torch.randn(2, 4, 6, 5)
    want = susa(x, *p, backend="cpp")

    def f(x):
        return susa(x, *p, backend="cpp") * 2

    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(x), want * 2)

    class M(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(x.shape[0], 8, x.shape[2], x.shape[3])
            return susa_into(x, *p, out=out, out_index=torch.tensor([0, 2, 4, 6], dtype=torch.int32))

    got = torch.export.export(M(), (x,)).module()(x)
    torch.testing.assert_close(got[:, 0::2], want)
    assert (got[:, 1::2] == 0).all()


def test_eager_calls_skip_the_dispatch_but_modes_and_the_profiler_see_the_ops():
    """Plain eager calls run the C++ implementation directly (pyengine/ops/_direct.py); under a dispatch mode
    and under the profiler the registered ops run, with bit-identical results."""
    _, params = module_and_params("h", 6, True, torch.float32, seed=11)
    x = torch.randn(2, 6, 5, 4)
    index = shuffle_index(12, 2, offset=0, count=6)
    direct = susa(x, *params, direction="h")
    direct_into = susa_into(x, *params, out=torch.zeros(2, 12, 5, 4), out_index=index, direction="h")
    traced, ops = dispatched_ops(susa, x, *params, direction="h")
    traced_into, ops_into = dispatched_ops(susa_into, x, *params, out=torch.zeros(2, 12, 5, 4), out_index=index,
                                           direction="h")
    assert "pyengine.susa.default" in ops and "pyengine.susa_into.default" in ops_into
    assert torch.equal(direct, traced) and torch.equal(direct_into, traced_into)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        susa(x, *params, direction="h")
    assert any(e.name == "pyengine::susa" for e in prof.events())
    out = torch.zeros(2, 12, 5, 4)
    version = out._version
    susa_into(x, *params, out=out, out_index=index, direction="h")
    assert out._version > version  # the direct path bumps out's version like the mutating op does


def test_triton_kernel_never_writes_an_out_of_range_channel():
    """The raw op (no wrapper value check): an out_index outside out's channels is skipped, not written."""
    from pyengine.kernels import susa as tk
    m, params = module_and_params("h", 4, True, torch.float32)
    x = torch.randn(1, 4, 5, 3)
    p = [None if t is None else t.detach().reshape(-1).float().contiguous() if t.dim() != 2 else t.detach().float()
         for t in params]
    p[3] = params[3].detach().reshape(4, 4).float().contiguous()
    guard = torch.full((1, 6, 5, 3), 7.0)  # 4 real channels + 2 guard channels past the view below
    out = guard[:, :4]
    index = torch.tensor([0, 1, 2, 4], dtype=torch.int32)  # 4 is past out's 4 channels
    tk.susa_into(x, *p, True, out, index)
    assert torch.all(guard[:, 4:] == 7.0), "wrote past out's channels"
    assert torch.all(out[:, 3] == 7.0) and not torch.all(out[:, :3] == 7.0)
