"""pyengine::dwconv3x3 (C++) against the fp64 evaluation of its eager reference (F.conv2d with groups=C); layouts,
dtypes, odd sizes, output memory format, every output element written, the op's registration, argument errors.

The kernel is held to at most 2x the error of the same-precision eager F.conv2d (with a small floor)."""
import pytest
import torch
import torch.nn.functional as F

from pyengine.backends import BackendUnavailableError, cpp_extension
from pyengine.ops import dwconv3x3 as dwconv3x3_exported
from pyengine.ops.dwconv3x3 import (dwconv3x3, dwconv3x3_op, dwconv3x3_ref, prepare_weights, run_prepared)
from pyengine.testing import assert_close, dispatched_ops, rel_error

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (N, C, H, W): C = 1, odd sizes, a single pixel, a width with a ragged 8-wide strip, the X-HRNet 64x48 size
SHAPES = [(1, 1, 1, 1), (3, 3, 2, 3), (1, 8, 7, 5), (3, 5, 9, 16), (1, 20, 64, 48), (3, 20, 13, 97), (1, 12, 1, 9)]
LAYOUTS = ["nchw", "channels_last", "channel_slice", "channel_slice_cl", "w_stride"]


def in_layout(x, layout):
    """x's values in one of LAYOUTS: NCHW, channels-last, a channel slice [:, 3:3 + C] of a larger tensor (NCHW or
    channels-last), or a non-contiguous W axis [..., ::2]. The rest of a larger tensor is NaN, so that a read
    outside x shows in the result."""
    n, c, h, w = x.shape
    if layout == "nchw":
        return x.contiguous()
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout in ("channel_slice", "channel_slice_cl"):
        fmt = torch.channels_last if layout == "channel_slice_cl" else torch.contiguous_format
        big = torch.full((n, c + 6, h, w), float("nan"), dtype=x.dtype).contiguous(memory_format=fmt)
        big[:, 3:3 + c] = x
        return big[:, 3:3 + c]
    assert layout == "w_stride"
    big = torch.full((n, c, h, 2 * w), float("nan"), dtype=x.dtype)
    big[..., ::2] = x
    return big[..., ::2]


def make_input(shape, layout, dtype=torch.float32, seed=0):
    return in_layout(torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype), layout)


def make_params(c, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(c, 1, 3, 3, generator=g), torch.randn(c, generator=g)


def expect_channels_last(x):
    return x.stride(1) < x.stride(3) and not x.is_contiguous()


def check(shape, layout, dtype):
    x = make_input(shape, layout, dtype)
    w, b = make_params(shape[1])
    want = dwconv3x3_ref(x.double(), w.double(), b.double())
    eager_err = rel_error(dwconv3x3_ref(x, w, b), want)
    got = dwconv3x3(x, w, b)
    assert got.dtype == dtype and got.shape == x.shape
    fmt = torch.channels_last if expect_channels_last(x) else torch.contiguous_format
    assert got.is_contiguous(memory_format=fmt)
    assert_close(f"dwconv3x3 {layout} ({dtype})", got, want, eager_err)  # floors: pyengine.testing.FLOOR
    return got


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference_fp32(shape, layout):
    check(shape, layout, torch.float32)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (3, 3, 2, 3), (3, 20, 13, 97), (1, 20, 64, 48)])
def test_half_precision(shape, dtype, layout):
    check(shape, layout, dtype)


@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("c", [1, 4, 7, 16, 40])
def test_channel_counts_and_batch(n, c):
    for layout in ("nchw", "channels_last"):
        check((n, c, 7, 5), layout, torch.float32)
        check((n, c, 6, 17), layout, torch.float32)


def test_output_memory_format():
    w, b = make_params(20)
    x = torch.randn(2, 20, 8, 6)
    assert dwconv3x3(x, w, b).is_contiguous()
    xc = x.contiguous(memory_format=torch.channels_last)
    got = dwconv3x3(xc, w, b)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    big = torch.randn(2, 30, 8, 6).contiguous(memory_format=torch.channels_last)
    assert dwconv3x3(big[:, 5:25], w, b).is_contiguous(memory_format=torch.channels_last)
    assert dwconv3x3(torch.randn(2, 20, 8, 12)[..., ::2], w, b).is_contiguous()


def test_layouts_and_paths_bit_identical():
    """Every layout and dtype path runs the same fp32 operations in the same order: identical fp32 results."""
    w, b = make_params(20)
    for shape in [(2, 20, 13, 97), (1, 20, 64, 48), (3, 20, 2, 3)]:
        results = [dwconv3x3(make_input(shape, layout), w, b) for layout in LAYOUTS]
        for r in results[1:]:
            assert torch.equal(r, results[0])
        x = make_input(shape, "nchw")
        assert torch.equal(dwconv3x3_op(x, *prepare_weights(w, b, 20), "cpp"), results[0])  # through the op


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_output_element_written(layout):
    """The raw kernel into NaN-filled outputs of several layouts (one a strided view into a larger NaN tensor):
    no NaN is left in the output, nothing outside it is touched, and the values equal the op's."""
    ext = cpp_extension()
    w, b = make_params(20)
    w9, b1 = prepare_weights(w, b, 20)
    for shape in [(2, 20, 13, 97), (1, 20, 64, 48), (3, 20, 1, 1)]:
        for dtype in (torch.float32, torch.bfloat16):
            x = make_input(shape, layout, dtype)
            want = dwconv3x3_op(x, w9, b1, "cpp")
            n, c, h, wd = shape
            big = torch.full((n, c, h, 2 * wd), float("nan"), dtype=dtype)
            outs = [torch.full(shape, float("nan"), dtype=dtype),
                    torch.full(shape, float("nan"), dtype=dtype).contiguous(memory_format=torch.channels_last),
                    big[..., ::2]]
            for out in outs:
                ext.dwconv3x3_cpu(x, w9, b1, out)
                assert not out.isnan().any()
                assert torch.equal(out, want)
            assert big[..., 1::2].isnan().all()


def test_weight_formats_and_dtypes():
    x = torch.randn(2, 6, 9, 10)
    w, b = make_params(6)
    want = dwconv3x3(x, w, b)
    assert torch.equal(dwconv3x3(x, w.reshape(6, 9), b), want)
    assert torch.equal(dwconv3x3(x, w.reshape(6, 3, 3), b), want)
    assert torch.equal(dwconv3x3(x, w.double(), b.double()), want)
    w9, b1 = prepare_weights(w.half(), b.half(), 6)
    assert w9.dtype == b1.dtype == torch.float32 and w9.shape == (6, 9) and w9.is_contiguous()
    torch.testing.assert_close(run_prepared(x, w9, b1), dwconv3x3(x, w.half().float(), b.half().float()))


def test_prepared_parameters_are_detached():
    conv = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4)
    w9, b1 = prepare_weights(conv.weight, conv.bias, 4)
    assert not w9.requires_grad and not b1.requires_grad
    x = torch.randn(1, 4, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(run_prepared(x, w9, b1), conv(x), rtol=1e-5, atol=1e-6)


def test_reference_backend():
    x = torch.randn(2, 5, 7, 6)
    w, b = make_params(5)
    assert torch.equal(dwconv3x3(x, w, b, backend="reference"), F.conv2d(x, w, b, padding=1, groups=5))
    assert dwconv3x3_exported is dwconv3x3


def test_no_autograd():
    """Inference only: an input that needs a gradient goes through the registered op, whose backward refuses."""
    x = torch.randn(1, 3, 4, 5, requires_grad=True)
    w, b = make_params(3)
    y = dwconv3x3(x, w, b)
    torch.testing.assert_close(y.detach(), dwconv3x3(x.detach(), w, b))
    with pytest.raises(RuntimeError, match=r"autograd"):
        y.sum().backward()


def test_dispatch_modes_see_the_op():
    """Plain eager calls skip the custom-op dispatch; under a dispatch mode the registered op is what runs."""
    x = torch.randn(1, 3, 4, 5)
    w, b = make_params(3)
    y, ops = dispatched_ops(dwconv3x3, x, w, b)
    assert "pyengine.dwconv3x3.default" in ops
    assert torch.equal(y, dwconv3x3(x, w, b))


def test_opcheck():
    w9, b1 = prepare_weights(*make_params(5), 5)
    torch.library.opcheck(dwconv3x3_op, (torch.randn(2, 5, 7, 6), w9, b1, "cpp"))
    torch.library.opcheck(dwconv3x3_op, (torch.randn(1, 5, 4, 9).contiguous(memory_format=torch.channels_last),
                                         w9, b1, "cpp"))
    torch.library.opcheck(dwconv3x3_op, (torch.randn(1, 5, 3, 3).half(), w9, b1, "cpp"))


def test_torch_compile_and_export():
    w, b = make_params(4)
    x = torch.randn(2, 4, 6, 5)
    want = dwconv3x3(x, w, b)

    def f(x):
        return dwconv3x3(x, w, b) * 2

    torch.testing.assert_close(torch.compile(f, fullgraph=True, backend="aot_eager")(x), want * 2)

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(w.clone())
            self.bias = torch.nn.Parameter(b.clone())

        def forward(self, x):
            return dwconv3x3(x, self.weight, self.bias)

    ep = torch.export.export(M(), (x,))
    assert "pyengine.dwconv3x3" in str(ep.graph)
    torch.testing.assert_close(ep.module()(x), want)


def test_argument_errors():
    x = torch.randn(1, 4, 5, 6)
    w, b = make_params(4)
    with pytest.raises(TypeError, match=r"x must be a torch.Tensor"):
        dwconv3x3(x.numpy(), w, b)
    with pytest.raises(ValueError, match=r"x must be 4-D \[N, C, H, W\], got 3-D"):
        dwconv3x3(x[0], w, b)
    with pytest.raises(TypeError, match=r"x must be float32, float16 or bfloat16, got torch.int64"):
        dwconv3x3(x.long(), w, b)
    with pytest.raises(TypeError, match=r"x must be float32, float16 or bfloat16, got torch.float64"):
        dwconv3x3(x.double(), w, b)
    with pytest.raises(ValueError, match=r"x must have N, C, H, W >= 1, got shape \[1, 4, 0, 6\]"):
        dwconv3x3(x[:, :, :0], w, b)
    with pytest.raises(ValueError, match=r"weight must be \[4, 1, 3, 3\], \[4, 9\] or \[4, 3, 3\].*got shape \[4, 8\]"):
        dwconv3x3(x, torch.randn(4, 8), b)
    with pytest.raises(ValueError, match=r"weight must be .*got shape \[36\]"):
        dwconv3x3(x, w.reshape(-1), b)
    with pytest.raises(ValueError, match=r"weight must be .*got shape \[5, 1, 3, 3\]"):
        dwconv3x3(x, torch.randn(5, 1, 3, 3), b)
    with pytest.raises(TypeError, match=r"weight must be a torch.Tensor"):
        dwconv3x3(x, w.tolist(), b)
    with pytest.raises(TypeError, match=r"weight must be a floating-point tensor, got torch.int64"):
        dwconv3x3(x, w.long(), b)
    with pytest.raises(ValueError, match=r"bias must be \[4\] \(one value per channel\), got shape \[4, 1\]"):
        dwconv3x3(x, w, b[:, None])
    with pytest.raises(TypeError, match=r"bias must be a torch.Tensor"):
        dwconv3x3(x, w, None)
    with pytest.raises(TypeError, match=r"bias must be a floating-point tensor"):
        dwconv3x3(x, w, b.int())
    with pytest.raises(ValueError, match=r"weight and bias must be on one device"):
        dwconv3x3(x, w.to("meta"), b)
    with pytest.raises(ValueError, match=r"weight and bias are on meta, expected x's device cpu"):
        dwconv3x3(x, w.to("meta"), b.to("meta"))
    with pytest.raises(BackendUnavailableError, match=r"backend='cpp' runs on CPU tensors, got x on meta"):
        dwconv3x3(x.to("meta"), w.to("meta"), b.to("meta"))
    with pytest.raises(BackendUnavailableError, match=r"backend='cuda' is not available"):
        dwconv3x3(x, w, b, backend="cuda")
    w9, b1 = prepare_weights(w, b, 4)
    with pytest.raises(ValueError, match=r"prepared weight is for C=4 channels, x has C=3"):
        run_prepared(x[:, :3], w9, b1)
    with pytest.raises(BackendUnavailableError, match=r"impl='triton' is not available.*cuDNN"):
        dwconv3x3_op(x, w9, b1, "triton")


def test_cpp_checks():
    """The C++ entry point's own checks (a second line behind the Python validation)."""
    ext = cpp_extension()
    x = torch.randn(1, 4, 5, 6)
    w9, b1 = prepare_weights(*make_params(4), 4)
    with pytest.raises(RuntimeError, match=r"weight must be a contiguous float32 CPU tensor \[C=4, 9\]"):
        ext.dwconv3x3_cpu(x, w9.double(), b1, torch.empty_like(x))
    with pytest.raises(RuntimeError, match=r"bias must be a contiguous float32 CPU tensor \[C=4\]"):
        ext.dwconv3x3_cpu(x, w9, b1[:3], torch.empty_like(x))
    with pytest.raises(RuntimeError, match=r"out must be a CPU tensor of x's dtype"):
        ext.dwconv3x3_cpu(x, w9, b1, torch.empty_like(x).half())
    with pytest.raises(RuntimeError, match=r"x must be float32, float16 or bfloat16"):
        ext.dwconv3x3_cpu(x.double(), w9, b1, torch.empty_like(x).double())
    with pytest.raises(RuntimeError, match=r"x must be 4-D"):
        ext.dwconv3x3_cpu(x[0], w9, b1, torch.empty_like(x))
