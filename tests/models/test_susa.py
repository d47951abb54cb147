"""Tests for the SUSA eager references (pyengine/models/susa.py) against SPEC.md §3 and §6.

The reference computations below are written independently from the SPEC formulas (einsum / explicit loops in
fp64, no call into the module code); the modules under test are compared to them with a relative error bound.
"""
import importlib.util
import itertools
import math
import pathlib

import pytest
import torch

try:
    from pyengine.models.susa import (
        HSUSA, HWSUSA, PXShuffleUnit, SXShuffleUnit, WSUSA, channel_shuffle,
    )
except Exception:  # pragma: no cover - only while another part of the package is broken mid-edit
    _path = pathlib.Path(__file__).resolve().parents[2] / "pyengine" / "models" / "susa.py"
    _spec = importlib.util.spec_from_file_location("_susa_under_test", _path)
    _mod = importlib.util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
    HSUSA, HWSUSA, PXShuffleUnit = _mod.HSUSA, _mod.HWSUSA, _mod.PXShuffleUnit
    SXShuffleUnit, WSUSA, channel_shuffle = _mod.SXShuffleUnit, _mod.WSUSA, _mod.channel_shuffle

LN_EPS = 1e-5
BN_EPS = 1e-5
SIZES_C = [10, 20, 40]
SIZES_HW = [(8, 6), (16, 12), (7, 5)]
TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


# ----------------------------------------------------------------------------------------------------------------
# Independent fp64 reference (SPEC.md §3)
# ----------------------------------------------------------------------------------------------------------------

def _softmax(v, dim):
    e = torch.exp(v - v.amax(dim=dim, keepdim=True))
    return e / e.sum(dim=dim, keepdim=True)


def _gate(a, p, ln_enable):
    """a: [N, C, L] scores -> conv1x1 (C x C, bias) -> optional LN over C + sigmoid."""
    a = torch.einsum("dc,ncl->ndl", p["conv_w"], a) + p["conv_b"][None, :, None]
    if ln_enable:
        mu = a.mean(dim=1, keepdim=True)
        var = ((a - mu) ** 2).mean(dim=1, keepdim=True)
        a = (a - mu) / torch.sqrt(var + LN_EPS) * p["ln_w"][None, :, None] + p["ln_b"][None, :, None]
        a = 1.0 / (1.0 + torch.exp(-a))
    return a


def ref_hsusa(x, p, ln_enable):
    """H-wise SUSA in fp64. x [N, C, H, W]; p holds fp64 tensors (group_weight as a flat vector)."""
    n, c, h, w = x.shape
    g = p["group_weight"][:h]
    q = (x * g[None, None, :, None]).sum(dim=2) / h  # mean over H -> [N, C, W]
    q = q * p["mean_w"][None, :, None] + p["mean_b"][None, :, None]  # depthwise 1x1 conv
    q = _softmax(q, dim=2)  # over W
    a = torch.einsum("nchw,ncw->nch", x, q)  # one score per row
    a = _gate(a, p, ln_enable)
    return x * a[:, :, :, None]


def ref_wsusa(x, p, ln_enable):
    """W-wise SUSA in fp64: the mirror image of ref_hsusa."""
    n, c, h, w = x.shape
    g = p["group_weight"][:w]
    q = (x * g[None, None, None, :]).sum(dim=3) / w  # mean over W -> [N, C, H]
    q = q * p["mean_w"][None, :, None] + p["mean_b"][None, :, None]
    q = _softmax(q, dim=2)  # over H
    a = torch.einsum("nchw,nch->ncw", x, q)  # one score per column
    a = _gate(a, p, ln_enable)
    return x * a[:, :, None, :]


def shuffle_perm(c, groups):
    """Explicit ShuffleNet permutation: output channel j*g + i takes input channel i*(C/g) + j."""
    per = c // groups
    perm = [None] * c
    for i in range(groups):
        for j in range(per):
            perm[j * groups + i] = i * per + j
    return perm


def ref_shuffle(x, groups):
    return x[:, shuffle_perm(x.shape[1], groups)]


def ref_dwconv_bn(x, p):
    """3x3 depthwise conv (padding 1, no bias) then BatchNorm in eval mode, by explicit shifts."""
    n, c, h, w = x.shape
    xp = torch.zeros(n, c, h + 2, w + 2, dtype=x.dtype)
    xp[:, :, 1:-1, 1:-1] = x
    y = torch.zeros_like(x)
    for dy in range(3):
        for dx in range(3):
            y += xp[:, :, dy:dy + h, dx:dx + w] * p["dw_w"][None, :, dy, dx, None, None]
    y = (y - p["rm"][None, :, None, None]) / torch.sqrt(p["rv"][None, :, None, None] + BN_EPS)
    return y * p["bn_w"][None, :, None, None] + p["bn_b"][None, :, None, None]


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------

def randomize(module, seed):
    """Give every parameter and BN buffer random values (group_weight included) so nothing is trivially 1/0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.named_parameters():
            r = torch.randn(t.shape, generator=gen, dtype=torch.float64)
            if name.endswith("group_weight"):
                r = 0.5 + torch.rand(t.shape, generator=gen, dtype=torch.float64)  # 0.5 .. 1.5
            elif name.endswith("conv.conv.weight") and t.shape[1] > 1:
                r = r / math.sqrt(t.shape[1])
            t.copy_(r)
        for name, t in module.named_buffers():
            if name.endswith("running_mean"):
                t.copy_(0.3 * torch.randn(t.shape, generator=gen, dtype=torch.float64))
            elif name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen, dtype=torch.float64))
    return module.eval()


def susa_params(sd, prefix=""):
    """Pull one SUSA's tensors out of a state_dict as flat fp64 tensors."""
    p = {
        "group_weight": sd[prefix + "group_weight"].double().flatten(),
        "mean_w": sd[prefix + "mean_conv.conv.weight"].double().flatten(),
        "mean_b": sd[prefix + "mean_conv.conv.bias"].double(),
        "conv_w": sd[prefix + "conv.conv.weight"].double()[:, :, 0, 0],
        "conv_b": sd[prefix + "conv.conv.bias"].double(),
    }
    if prefix + "ln.weight" in sd:
        p["ln_w"] = sd[prefix + "ln.weight"].double()
        p["ln_b"] = sd[prefix + "ln.bias"].double()
    return p


def dwbn_params(sd, prefix):
    return {
        "dw_w": sd[prefix + "conv.weight"].double()[:, 0],
        "rm": sd[prefix + "bn.running_mean"].double(),
        "rv": sd[prefix + "bn.running_var"].double(),
        "bn_w": sd[prefix + "bn.weight"].double(),
        "bn_b": sd[prefix + "bn.bias"].double(),
    }


def rel_err(out, ref):
    return ((out.double() - ref).abs().max() / ref.abs().max()).item()


def rand_x(shape, seed, dtype=torch.float64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def ref_hwsusa(x, sd, prefix, mode, ln_enable, hw_shuffle):
    c = x.shape[1]
    hc, wc, g = {None: (c // 2, c // 2, 2), "hw": (c // 4 * 3, c // 4, 4), "wh": (c // 4, c // 4 * 3, 4)}[mode]
    assert hc + wc == c
    out = torch.cat([ref_hsusa(x[:, :hc], susa_params(sd, prefix + "hconv."), ln_enable),
                     ref_wsusa(x[:, hc:], susa_params(sd, prefix + "wconv."), ln_enable)], dim=1)
    return ref_shuffle(out, g) if hw_shuffle else out


# ----------------------------------------------------------------------------------------------------------------
# H-wise and W-wise SUSA
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,ref", [(HSUSA, ref_hsusa), (WSUSA, ref_wsusa)], ids=["H", "W"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("ln_enable", [True, False], ids=["ln", "noln"])
@pytest.mark.parametrize("c", SIZES_C)
@pytest.mark.parametrize("hw", SIZES_HW, ids=lambda s: f"{s[0]}x{s[1]}")
def test_susa_matches_reference(cls, ref, dtype, ln_enable, c, hw):
    h, w = hw
    m = randomize(cls(c, ln_enable=ln_enable).to(dtype), seed=c * 100 + h)
    x = rand_x((2, c, h, w), seed=c + w, dtype=dtype)
    with torch.no_grad():
        out = m(x)
    assert out.dtype == dtype and out.shape == x.shape
    ref_out = ref(x.double(), susa_params(m.state_dict()), ln_enable)
    err = rel_err(out, ref_out)
    assert err < TOL[dtype], f"relative error {err:.3e}"


def test_group_weight_slice_matters():
    """Changing group_weight entries beyond H must not change the H-wise output; within H it must."""
    m = randomize(HSUSA(10).double(), seed=1)
    x = rand_x((1, 10, 7, 5), seed=2)
    with torch.no_grad():
        base = m(x)
        m.group_weight[:, :, 7:] += 3.0
        assert torch.equal(m(x), base)
        m.group_weight[:, :, 3] += 3.0
        assert not torch.allclose(m(x), base)


def test_susa_keys_and_shapes():
    m = HSUSA(6)
    shapes = {k: list(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "group_weight": [1, 1, 96, 1],
        "conv.conv.weight": [6, 6, 1, 1], "conv.conv.bias": [6],
        "mean_conv.conv.weight": [6, 1, 1, 1], "mean_conv.conv.bias": [6],
        "ln.weight": [6], "ln.bias": [6],
    }
    assert list(WSUSA(6).group_weight.shape) == [1, 1, 1, 72]
    assert "ln.weight" not in WSUSA(6, ln_enable=False).state_dict()
    assert torch.equal(HSUSA(6).group_weight, torch.ones(1, 1, 96, 1))


def test_susa_computes_in_parameter_dtype():
    m = randomize(WSUSA(10).double(), seed=3)
    x32 = rand_x((1, 10, 8, 6), seed=4, dtype=torch.float32)
    out = m(x32)
    assert out.dtype == torch.float64
    assert rel_err(out, ref_wsusa(x32.double(), susa_params(m.state_dict()), True)) < 1e-12


# ----------------------------------------------------------------------------------------------------------------
# HW-SUSA and channel shuffle
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [None, "hw", "wh"])
@pytest.mark.parametrize("hw_shuffle", [False, True])
@pytest.mark.parametrize("ln_enable", [False, True])
def test_hwsusa_matches_composition(mode, hw_shuffle, ln_enable):
    c = 16
    m = randomize(HWSUSA(c, mode=mode, ln_enable=ln_enable, hw_shuffle=hw_shuffle).double(), seed=5)
    x = rand_x((2, c, 16, 12), seed=6)
    with torch.no_grad():
        out = m(x)
    ref_out = ref_hwsusa(x, m.state_dict(), "", mode, ln_enable, hw_shuffle)
    assert rel_err(out, ref_out) < 1e-12
    expected_h = {None: 8, "hw": 12, "wh": 4}[mode]
    assert m.hconv.group_weight.shape == (1, 1, 96, 1) and m.hconv.conv.conv.weight.shape[0] == expected_h
    assert m.wconv.conv.conv.weight.shape[0] == c - expected_h


def test_hwsusa_defaults():
    m = HWSUSA(8)
    assert m.mode is None and m.hw_shuffle is False
    assert not any(k.endswith("ln.weight") for k in m.state_dict())  # ln_enable defaults to False


@pytest.mark.parametrize("c,groups", [(8, 2), (12, 4), (12, 3), (6, 1), (10, 5)])
def test_channel_shuffle_permutation(c, groups):
    x = rand_x((2, c, 3, 4), seed=c)
    out = channel_shuffle(x, groups)
    perm = shuffle_perm(c, groups)
    for j in range(c):
        assert torch.equal(out[:, j], x[:, perm[j]])
    # shuffle with 2 groups interleaves the halves: 0, C/2, 1, C/2+1, ...
    if groups == 2:
        assert perm[:4] == [0, c // 2, 1, c // 2 + 1]


def test_channel_shuffle_errors():
    with pytest.raises(ValueError, match="divisible by groups=4"):
        channel_shuffle(torch.zeros(1, 6, 2, 2), 4)
    with pytest.raises(ValueError, match="4-D"):
        channel_shuffle(torch.zeros(6, 2, 2), 2)


# ----------------------------------------------------------------------------------------------------------------
# X-shuffle units
# ----------------------------------------------------------------------------------------------------------------

def _susa_keys(prefix, ln=True):
    keys = ["group_weight", "conv.conv.weight", "conv.conv.bias", "mean_conv.conv.weight", "mean_conv.conv.bias"]
    if ln:
        keys += ["ln.weight", "ln.bias"]
    return [prefix + k for k in keys]


DWBN_KEYS = ["branch2.1.conv.weight"] + [
    "branch2.1.bn." + k for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
]


def test_sx_unit_keys():
    m = SXShuffleUnit(8, 8)
    expected = _susa_keys("branch2.0.") + DWBN_KEYS + _susa_keys("branch2.2.")
    assert sorted(m.state_dict()) == sorted(expected)
    sd = m.state_dict()
    assert list(sd["branch2.0.group_weight"].shape) == [1, 1, 1, 72]  # W-SUSA first
    assert list(sd["branch2.2.group_weight"].shape) == [1, 1, 96, 1]  # H-SUSA last
    assert list(sd["branch2.1.conv.weight"].shape) == [4, 1, 3, 3]


def test_px_unit_keys():
    m = PXShuffleUnit(8, 8)
    expected = DWBN_KEYS[:]
    for i in (0, 2):
        expected += _susa_keys(f"branch2.{i}.hconv.") + _susa_keys(f"branch2.{i}.wconv.")
    assert sorted(m.state_dict()) == sorted(expected)
    assert list(m.state_dict()["branch2.0.hconv.conv.conv.weight"].shape) == [2, 2, 1, 1]


@pytest.mark.parametrize("cls", [SXShuffleUnit, PXShuffleUnit])
def test_unit_loads_published_state_dict_strict(cls):
    """A state_dict built only from the published key names and shapes loads strictly and is used."""
    src = randomize(cls(12, 12), seed=7)
    published = {k: v.clone() for k, v in src.state_dict().items()}
    dst = cls(12, 12).eval()
    dst.load_state_dict(published, strict=True)
    x = rand_x((1, 12, 8, 6), seed=8, dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("hw", SIZES_HW, ids=lambda s: f"{s[0]}x{s[1]}")
def test_sx_unit_matches_composition(dtype, hw):
    c, bf = 40, 20
    m = randomize(SXShuffleUnit(c, c), seed=9).to(dtype)
    x = rand_x((2, c, *hw), seed=10, dtype=dtype)
    with torch.no_grad():
        out = m(x)
    sd = m.state_dict()
    xd = x.double()
    y = ref_wsusa(xd[:, bf:], susa_params(sd, "branch2.0."), True)
    y = ref_dwconv_bn(y, dwbn_params(sd, "branch2.1."))
    y = ref_hsusa(y, susa_params(sd, "branch2.2."), True)
    ref_out = ref_shuffle(torch.cat([xd[:, :bf], y], dim=1), 2)
    assert out.dtype == dtype
    assert rel_err(out, ref_out) < TOL[dtype]
    # the untouched half lands on the even channels after the 2-group shuffle
    assert torch.equal(out[:, 0::2], x[:, :bf])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("hw", SIZES_HW, ids=lambda s: f"{s[0]}x{s[1]}")
def test_px_unit_matches_composition(dtype, hw):
    c, bf = 40, 20
    m = randomize(PXShuffleUnit(c, c), seed=11).to(dtype)
    x = rand_x((2, c, *hw), seed=12, dtype=dtype)
    with torch.no_grad():
        out = m(x)
    sd = m.state_dict()
    xd = x.double()
    y = ref_hwsusa(xd[:, bf:], sd, "branch2.0.", None, True, True)
    y = ref_dwconv_bn(y, dwbn_params(sd, "branch2.1."))
    y = ref_hwsusa(y, sd, "branch2.2.", None, True, True)
    ref_out = ref_shuffle(torch.cat([xd[:, :bf], y], dim=1), 2)
    assert rel_err(out, ref_out) < TOL[dtype]


# ----------------------------------------------------------------------------------------------------------------
# Channels-last
# ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: HSUSA(20), lambda: WSUSA(20), lambda: HSUSA(20, ln_enable=False),
    lambda: HWSUSA(20, mode="wh", ln_enable=True, hw_shuffle=True), lambda: HWSUSA(20),
    lambda: SXShuffleUnit(20, 20), lambda: PXShuffleUnit(20, 20),
], ids=["H", "W", "H-noln", "HW-wh", "HW", "SX", "PX"])
def test_channels_last_same_output(make):
    m = randomize(make(), seed=13)
    x = rand_x((2, 20, 7, 5), seed=14, dtype=torch.float32)
    xcl = x.contiguous(memory_format=torch.channels_last)
    assert not xcl.is_contiguous()
    with torch.no_grad():
        ref_out = m(x)
        out = m(xcl)
    assert torch.equal(out, ref_out)
    assert out.is_contiguous(memory_format=torch.channels_last)


# ----------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------

def test_error_height_limit():
    with pytest.raises(ValueError, match=r"H=97 exceeds the limit H <= 96"):
        HSUSA(4)(torch.zeros(1, 4, 97, 5))
    HSUSA(4)(torch.zeros(1, 4, 96, 200))  # W is unbounded for H-wise SUSA
    with pytest.raises(ValueError, match=r"H <= 96"):
        HWSUSA(4)(torch.zeros(1, 4, 97, 5))
    with pytest.raises(ValueError, match=r"H <= 96"):
        SXShuffleUnit(8, 8)(torch.zeros(1, 8, 97, 5))


def test_error_width_limit():
    with pytest.raises(ValueError, match=r"W=73 exceeds the limit W <= 72"):
        WSUSA(4)(torch.zeros(1, 4, 5, 73))
    WSUSA(4)(torch.zeros(1, 4, 200, 72))  # H is unbounded for W-wise SUSA
    with pytest.raises(ValueError, match=r"W <= 72"):
        PXShuffleUnit(8, 8)(torch.zeros(1, 8, 5, 73))


def test_error_channels():
    with pytest.raises(ValueError, match=r"C=4 channels.*got C=5"):
        HSUSA(4)(torch.zeros(1, 5, 3, 3))
    with pytest.raises(ValueError, match=r"C=8 channels.*got C=6"):
        SXShuffleUnit(8, 8)(torch.zeros(1, 6, 3, 3))
    with pytest.raises(ValueError, match=r"channels=6 cannot be split for mode='hw'"):
        HWSUSA(6, mode="hw")
    with pytest.raises(ValueError, match=r"channels=7 cannot be split for mode=None"):
        HWSUSA(7)
    with pytest.raises(ValueError, match=r"mode must be one of"):
        HWSUSA(8, mode="vh")
    with pytest.raises(ValueError, match=r"channels must be a positive integer"):
        WSUSA(0)
    with pytest.raises(ValueError, match=r"in_channels must equal 2 \* \(out_channels // 2\) = 8"):
        SXShuffleUnit(6, 8)
    with pytest.raises(ValueError, match=r"out_channels // 2 = 3 must be even"):
        PXShuffleUnit(6, 6)


def test_error_rank_and_dtype():
    with pytest.raises(ValueError, match=r"x must be 4-D.*got 3-D"):
        WSUSA(4)(torch.zeros(4, 3, 3))
    with pytest.raises(ValueError, match=r"x must be 4-D"):
        PXShuffleUnit(8, 8)(torch.zeros(1, 1, 8, 3, 3))
    with pytest.raises(TypeError, match=r"floating-point.*int64"):
        HSUSA(4)(torch.zeros(1, 4, 3, 3, dtype=torch.int64))


@pytest.mark.parametrize("cls", [SXShuffleUnit, PXShuffleUnit])
def test_error_stride(cls):
    with pytest.raises(ValueError, match=r"only stride=1 is supported, got stride=2"):
        cls(8, 8, stride=2)
