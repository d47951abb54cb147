"""Drop-in modules pyengine.nn.susa (HSUSA, WSUSA, HWSUSA, SXShuffleUnit, PXShuffleUnit) against the eager
reference modules of pyengine/models/susa.py: state_dict compatibility, from_reference parameter sharing, and
outputs (C++ and Triton under the interpreter) within 2x the same-precision eager error of an fp64 evaluation."""
import copy

import pytest
import torch

from pyengine.backends import BackendUnavailableError
from pyengine.models import susa as ref
from pyengine.nn import susa as dn
from pyengine.testing import assert_close, randomize_, rel_error

CUDA = torch.cuda.is_available()
BACKENDS = ["cpp", "triton", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.cuda_ext])]


def device(backend):
    from pyengine.kernels._common import INTERPRETING
    return "cuda" if backend == "cuda" or (backend == "triton" and CUDA and not INTERPRETING) else "cpu"


def compare(reference, drop_in, x):
    """drop_in(x) vs the fp64 reference, bounded by 2x the same-precision eager error."""
    want = copy.deepcopy(reference).double()(x.double())
    eager_err = rel_error(reference(x), want)
    got = drop_in(x.to(next(drop_in.parameters()).device)).cpu()
    assert got.dtype == x.dtype and got.shape == want.shape
    cl = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    assert got.is_contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
    assert_close(f"{type(drop_in).__name__} ({x.dtype})", got, want, eager_err)  # floors: pyengine.testing.FLOOR


def build(ref_cls, args, backend, dtype=torch.float32, seed=0):
    r = randomize_(ref_cls(*args), seed=seed).eval().to(dtype)
    d = getattr(dn, ref_cls.__name__)(*args, backend=backend).eval().to(dtype)
    d.load_state_dict(r.state_dict(), strict=True)  # published keys load into the drop-in
    return r, d.to(device(backend))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", [ref.HSUSA, ref.WSUSA])
def test_susa_modules(cls, backend):
    for ln in (True, False):
        r, d = build(cls, (10, ln), backend)
        compare(r, d, torch.randn(2, 10, 7, 5))


@pytest.mark.parametrize("mode", [None, "hw", "wh"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_hwsusa_modes(backend, mode):
    for hw_shuffle in (False, True):
        r, d = build(ref.HWSUSA, (8, mode, True, hw_shuffle), backend, seed=1)
        compare(r, d, torch.randn(2, 8, 8, 6))
    r, d = build(ref.HWSUSA, (8, mode), backend)  # default: LN off, no shuffle
    compare(r, d, torch.randn(1, 8, 7, 5))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("cls", [ref.SXShuffleUnit, ref.PXShuffleUnit])
def test_units(cls, backend):
    r, d = build(cls, (20, 20), backend, seed=2)
    compare(r, d, torch.randn(2, 20, 8, 6))
    compare(r, d, torch.randn(1, 20, 7, 5).contiguous(memory_format=torch.channels_last))


@pytest.mark.parametrize("cls", [ref.SXShuffleUnit, ref.PXShuffleUnit])
def test_units_cpp_published_sizes_and_fp16(cls):
    r, d = build(cls, (40, 40), "cpp", seed=3)
    compare(r, d, torch.randn(2, 40, 16, 12))
    compare(r, d, torch.randn(1, 40, 64, 48).contiguous(memory_format=torch.channels_last))
    r, d = build(cls, (20, 20), "cpp", dtype=torch.float16, seed=4)
    compare(r, d, torch.randn(2, 20, 16, 12).half())


@pytest.mark.parametrize("ref_cls,args", [(ref.HSUSA, (10,)), (ref.WSUSA, (10, False)), (ref.HWSUSA, (8, "hw")),
                                          (ref.SXShuffleUnit, (20, 20)), (ref.PXShuffleUnit, (20, 20))])
def test_from_reference_shares_parameters(ref_cls, args):
    r = randomize_(ref_cls(*args), seed=5).eval()
    d = getattr(dn, ref_cls.__name__).from_reference(r, backend="cpp")
    assert type(d) is getattr(dn, ref_cls.__name__) and not d.training
    rp, dp = dict(r.named_parameters()), dict(d.named_parameters())
    assert rp.keys() == dp.keys() and all(rp[k] is dp[k] for k in rp)
    x = torch.randn(1, args[0], 8, 6)
    compare(r, d, x)
    with torch.no_grad():  # shared, not copied: an update of the reference shows in the drop-in
        next(iter(rp.values())).mul_(1.5)
    compare(r, d, x)
    with pytest.raises(TypeError, match=r"from_reference: expected a pyengine.models.susa"):
        getattr(dn, ref_cls.__name__).from_reference(torch.nn.Identity())


def test_parameter_cache_follows_replaced_and_reloaded_parameters():
    """The drop-ins convert their parameters once and reuse them; a parameter swapped for another tensor, or
    reloaded in place, is picked up on the next call."""
    r = randomize_(ref.SXShuffleUnit(8, 8), seed=8).eval()
    d = dn.SXShuffleUnit.from_reference(r, backend="cpp")
    x = torch.randn(2, 8, 6, 5)
    compare(r, d, x)
    r.branch2[2].conv.conv.weight.data = torch.randn(4, 4, 1, 1)  # a new tensor (new data pointer)
    compare(r, d, x)
    r.load_state_dict(randomize_(ref.SXShuffleUnit(8, 8), seed=9).state_dict())  # in place (new version)
    compare(r, d, x)


def test_errors():
    with pytest.raises(ValueError, match=r"HSUSA: x height H=97 exceeds the limit H <= 96"):
        dn.HSUSA(4, backend="cpp")(torch.randn(1, 4, 97, 5))
    with pytest.raises(ValueError, match=r"WSUSA: x width W=73 exceeds the limit W <= 72"):
        dn.WSUSA(4, backend="cpp")(torch.randn(1, 4, 5, 73))
    with pytest.raises(ValueError, match=r"HWSUSA: x must have C=8 channels"):
        dn.HWSUSA(8, backend="cpp")(torch.randn(1, 6, 5, 5))
    with pytest.raises(BackendUnavailableError, match=r"backend='gpu'"):
        dn.HSUSA(4, backend="gpu")
    with pytest.raises(RuntimeError, match=r"inference-only; call .eval\(\)"):
        dn.SXShuffleUnit(8, 8, backend="cpp")(torch.randn(1, 8, 5, 5))


def test_reference_backend_and_training_mode():
    r = randomize_(ref.SXShuffleUnit(8, 8), seed=6)  # training mode: batch statistics
    d = dn.SXShuffleUnit.from_reference(r, backend="reference")
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(d(x), r(x))


def test_compile_and_export_smoke():
    r = randomize_(ref.PXShuffleUnit(8, 8), seed=7).eval()
    d = dn.PXShuffleUnit.from_reference(r, backend="cpp")
    x = torch.randn(1, 8, 6, 5)
    want = d(x)
    torch.testing.assert_close(torch.compile(d, fullgraph=True, backend="aot_eager")(x), want)
    torch.testing.assert_close(torch.export.export(d, (x,)).module()(x), want)
