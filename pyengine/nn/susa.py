"""Drop-in SUSA modules backed by the fused ``pyengine::susa`` kernels (SPEC.md §3).

Each class subclasses its eager reference in :mod:`pyengine.models.susa`, so it has the same constructor
arguments, parameter names and state_dict keys (a reference or published state_dict loads with ``strict=True``),
and adds ``backend=``:

* ``"cpp"`` (CPU tensors), ``"triton"`` (CUDA tensors, or CPU under ``TRITON_INTERPRET=1``), ``"cuda"``;
* ``"auto"``: ``"cpp"`` for CPU inputs, ``"triton"`` for CUDA inputs;
* ``"reference"``: the eager reference forward.

They are fused modules like the others in :mod:`pyengine.nn` (:class:`pyengine.nn._common.Fused`): the kernel of
each op (``susa``, ``dwconv3x3``) comes from ``pyengine.dispatch.resolve`` for the backend on x's device (cached
per device), the modules call them through ``dispatch.Ops``, and ``set_backend`` / ``report()`` work as for every
fused model.

Channel split, concat and channel shuffle cost no copies: the kernels read channel slices through strides and
write each result channel straight to its shuffled position (an int32 index table per SUSA, kept as a
non-persistent buffer). The units' 3x3 depthwise conv + BatchNorm is one depthwise conv with BN folded into it
(``pyengine::dwconv3x3`` in C++ on CPU, ATen's ``F.conv2d`` on CUDA), so the units are inference-only: they raise in
training mode (call ``.eval()``). Converted parameters and the fold are cached per parameter version.

``Cls.from_reference(module, backend)`` builds the drop-in around an existing reference module, sharing its
parameters (no copies), e.g. to swap the modules of a loaded model in place.
"""
import torch

from ..backends import BACKENDS, BackendUnavailableError
from ..models import susa as ref
from ..ops.dwconv3x3 import fold_batchnorm
from ..ops.susa import check_input, new_output, prepare_params, shuffle_index
from ._common import Fused, version_cached

__all__ = ["HSUSA", "WSUSA", "HWSUSA", "SXShuffleUnit", "PXShuffleUnit"]


def _check_backend(backend, what):
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"{what}: backend={backend!r} is not available (choose from {BACKENDS})")
    return backend


def _params(m):
    """Fused-op parameters of a (reference or drop-in) H/W-SUSA module, as passed to :func:`susa`."""
    ln_w, ln_b = (m.ln.weight, m.ln.bias) if m.ln_enable else (None, None)
    return (m.group_weight, m.mean_conv.conv.weight, m.mean_conv.conv.bias, m.conv.conv.weight, m.conv.conv.bias,
            ln_w, ln_b)


def _cached(owner, name, sources, build):
    """``build()`` cached on the drop-in ``owner`` per version of its sources (``version_cached``), so a call does
    not redo the parameter conversions; under torch.compile the conversions are traced into the graph instead."""
    if torch.compiler.is_compiling():
        return build()
    return version_cached(owner, name, sources, build)


def _prepared(owner, name, m):
    """The fused-op parameters of H/W-SUSA ``m`` (fp32, contiguous), cached on ``owner``."""
    src = _params(m)
    return _cached(owner, name, src, lambda: prepare_params(m.channels, *src))


def _run(owner, name, m, x, direction, ops, out=None, out_index=None):
    """SUSA ``m`` (reference or drop-in H/W-SUSA, held by ``owner`` as ``name``) on x through the fused op."""
    h_wise = check_input(x, m.group_weight, direction)
    return ops.susa(x, _prepared(owner, name, m), h_wise, out, out_index)


def _folded_dwconv(owner, x, m, ops):
    """3x3 depthwise conv + BatchNorm of ``m`` (``branch2[1]`` of a unit) on x, BN folded into the conv
    (``ops.dwconv3x3.fold_batchnorm``), on the ``dwconv3x3`` kernel of ``ops`` (C++ on CPU, ATen's ``F.conv2d`` --
    cuDNN -- on CUDA). The fold is cached per parameter version, like the SUSA parameters."""
    sources = (m.conv.weight, m.bn.weight, m.bn.bias, m.bn.running_mean, m.bn.running_var, m.bn.eps)
    weight, bias = _cached(owner, "branch2.1", sources, lambda: fold_batchnorm(m.conv.weight, m.bn))
    return ops.dwconv3x3(x, weight, bias)


def _share_susa(dst, src):
    dst.conv, dst.mean_conv, dst.group_weight = src.conv, src.mean_conv, src.group_weight
    if src.ln_enable:
        dst.ln, dst.sigmoid = src.ln, src.sigmoid


def _finish(new, module):
    p = next(module.parameters())
    new.train(module.training)
    return new.to(p.device)  # only the index buffers move; the shared parameters are already there


class _StripeSUSA(Fused):
    """The fused forward shared by H-wise and W-wise SUSA; subclasses set the direction and their reference."""

    DIRECTION, REFERENCE, LIMIT = "h", ref.HSUSA, {"max_h": ref.GROUP_WEIGHT_H}

    def __init__(self, channels: int, ln_enable: bool = True, backend: str = "auto"):
        super().__init__(channels, ln_enable)
        self.backend = _check_backend(backend, type(self).__name__)

    def forward(self, x):
        ref._check_input(x, type(self).__name__, self.channels, **self.LIMIT)
        ops = self.ops_for(x)
        if ops.impl["susa"] == "reference":
            return super().forward(x)
        return _run(self, "self", self, x.to(self.group_weight.dtype), self.DIRECTION, ops)

    @classmethod
    def from_reference(cls, module, backend: str = "auto"):
        if not isinstance(module, cls.REFERENCE):
            raise TypeError(f"{cls.__name__}.from_reference: expected a pyengine.models.susa."
                            f"{cls.REFERENCE.__name__}, got {type(module).__name__}")
        new = cls(module.channels, module.ln_enable, backend=backend)
        _share_susa(new, module)
        return _finish(new, module)


class HSUSA(_StripeSUSA, ref.HSUSA):
    """H-wise SUSA (a gate per row) on the fused kernel. ``HSUSA(channels, ln_enable=True, backend="auto")``."""

    report_parts = {"H-wise SUSA, one fused op": ("susa",)}


class WSUSA(_StripeSUSA, ref.WSUSA):
    """W-wise SUSA (a gate per column) on the fused kernel. ``WSUSA(channels, ln_enable=True, backend="auto")``."""

    report_parts = {"W-wise SUSA, one fused op": ("susa",)}

    DIRECTION, REFERENCE, LIMIT = "w", ref.WSUSA, {"max_w": ref.GROUP_WEIGHT_W}


def _hw_indices(h_channels, w_channels, groups, shuffle, scale=1, base=0):
    """Output channels of the H-wise and the W-wise part of an HW-SUSA (concat, then optional shuffle),
    mapped through ``base + scale * channel``."""
    c = h_channels + w_channels
    g = groups if shuffle else 1
    return (shuffle_index(c, g, 0, h_channels, scale=scale, base=base),
            shuffle_index(c, g, h_channels, w_channels, scale=scale, base=base))


def _hw_write(owner, name, m, x, out, h_index, w_index, ops):
    """HW-SUSA ``m`` (its ``hconv`` / ``wconv`` parameters; held by ``owner`` as ``name``) on x, written into out
    at the given channels."""
    x1 = x.narrow(1, 0, m.h_channels)
    x2 = x.narrow(1, m.h_channels, m.w_channels)
    _run(owner, name + ".hconv", m.hconv, x1, "h", ops, out, h_index)
    _run(owner, name + ".wconv", m.wconv, x2, "w", ops, out, w_index)


class HWSUSA(Fused, ref.HWSUSA):
    """HW-SUSA on the fused kernel: H-wise SUSA on the first ``h_channels``, W-wise on the rest, written straight
    to their concatenated (and, with ``hw_shuffle``, shuffled) positions.
    ``HWSUSA(channels, mode=None, ln_enable=False, hw_shuffle=False, backend="auto")``."""

    report_parts = {"HW-SUSA: both halves written to their shuffled channels, no copies": ("susa",)}

    def __init__(self, channels: int, mode=None, ln_enable: bool = False, hw_shuffle: bool = False,
                 backend: str = "auto"):
        super().__init__(channels, mode, ln_enable, hw_shuffle)
        self.backend = _check_backend(backend, type(self).__name__)
        h_index, w_index = _hw_indices(self.h_channels, self.w_channels, self.shuffle_groups, self.hw_shuffle)
        self.register_buffer("h_index", h_index, persistent=False)
        self.register_buffer("w_index", w_index, persistent=False)

    def forward(self, x):
        ref._check_input(x, "HWSUSA", self.channels, max_h=ref.GROUP_WEIGHT_H, max_w=ref.GROUP_WEIGHT_W)
        ops = self.ops_for(x)
        if ops.impl["susa"] == "reference":
            return super().forward(x)
        x = x.to(self.hconv.group_weight.dtype)
        out = new_output(x, self.channels)
        _hw_write(self, "self", self, x, out, self.h_index, self.w_index, ops)
        return out

    @classmethod
    def from_reference(cls, module, backend: str = "auto"):
        if not isinstance(module, ref.HWSUSA):
            raise TypeError(f"{cls.__name__}.from_reference: expected a pyengine.models.susa.HWSUSA, got "
                            f"{type(module).__name__}")
        new = cls(module.channels, module.mode, module.hconv.ln_enable, module.hw_shuffle, backend=backend)
        new.hconv, new.wconv = module.hconv, module.wconv
        return _finish(new, module)


def _unit_from_reference(cls, reference, module, backend):
    """A drop-in unit around a reference unit, sharing its ``branch2`` (all of its parameters)."""
    if not isinstance(module, reference):
        raise TypeError(f"{cls.__name__}.from_reference: expected a pyengine.models.susa.{reference.__name__}, got "
                        f"{type(module).__name__}")
    new = cls(module.in_channels, module.out_channels, module.stride, backend=backend)
    new.branch2 = module.branch2
    return _finish(new, module)


class _FusedUnit(Fused):
    """The forward shared by both units: checks, the passthrough half, then the subclass's fused ``_branch2``."""

    def forward(self, x):
        what = type(self).__name__
        ref._check_input(x, what, self.in_channels, max_h=ref.GROUP_WEIGHT_H, max_w=ref.GROUP_WEIGHT_W)
        ops = self.ops_for(x)
        if ops.impl["susa"] == "reference":
            return super().forward(x)
        if self.training:
            raise RuntimeError(f"{what}: the fused unit folds BatchNorm's running statistics into the depthwise "
                               f"conv and is inference-only; call .eval() (or use backend='reference' to train)")
        x = x.to(self.branch2[1].conv.weight.dtype)
        out = new_output(x, self.in_channels)
        bf = self.branch_features
        # concat(x1, branch2(x2)) shuffled with 2 groups: x1's channel j goes to 2j, branch2's channel j to 2j + 1.
        out[:, 0::2].copy_(x[:, :bf])
        self._branch2(x.narrow(1, bf, bf), out, ops)
        return out


class SXShuffleUnit(_FusedUnit, ref.SXShuffleUnit):
    """Sequential X-shuffle unit on the fused kernels: W-SUSA (reads the second half of x in place) -> folded
    dw3x3 conv + BN -> H-SUSA written straight to the odd channels of the output; the first half is copied to the
    even channels. ``SXShuffleUnit(in_channels, out_channels, stride=1, backend="auto")``; inference only."""

    report_parts = {"W-SUSA -> dwconv+BN (folded; C++ dwconv3x3 on CPU, cuDNN on CUDA) -> H-SUSA into shuffled "
                    "channels": ("susa", "dwconv3x3")}

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, backend: str = "auto"):
        super().__init__(in_channels, out_channels, stride)
        self.backend = _check_backend(backend, type(self).__name__)
        self.register_buffer("out_index", shuffle_index(self.branch_features, 1, scale=2, base=1), persistent=False)

    def _branch2(self, x2, out, ops):
        t = _run(self, "branch2.0", self.branch2[0], x2, "w", ops)
        t = _folded_dwconv(self, t, self.branch2[1], ops)
        _run(self, "branch2.2", self.branch2[2], t, "h", ops, out, self.out_index)

    @classmethod
    def from_reference(cls, module, backend: str = "auto"):
        return _unit_from_reference(cls, ref.SXShuffleUnit, module, backend)


class PXShuffleUnit(_FusedUnit, ref.PXShuffleUnit):
    """Parallel X-shuffle unit on the fused kernels: HW-SUSA (reads the second half of x in place, writes its
    shuffled halves) -> folded dw3x3 conv + BN -> HW-SUSA written straight to the odd channels of the output
    (its own shuffle composed with the unit's); the first half is copied to the even channels.
    ``PXShuffleUnit(in_channels, out_channels, stride=1, backend="auto")``; inference only."""

    report_parts = {"HW-SUSA -> dwconv+BN (folded; C++ dwconv3x3 on CPU, cuDNN on CUDA) -> HW-SUSA into shuffled "
                    "channels": ("susa", "dwconv3x3")}

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, backend: str = "auto"):
        super().__init__(in_channels, out_channels, stride)
        self.backend = _check_backend(backend, type(self).__name__)
        hw = self.branch2[0]
        first = _hw_indices(hw.h_channels, hw.w_channels, hw.shuffle_groups, hw.hw_shuffle)
        last = _hw_indices(hw.h_channels, hw.w_channels, hw.shuffle_groups, hw.hw_shuffle, scale=2, base=1)
        for name, t in zip(("first_h_index", "first_w_index", "last_h_index", "last_w_index"), first + last):
            self.register_buffer(name, t, persistent=False)

    def _branch2(self, x2, out, ops):
        t = new_output(x2, self.branch_features)
        _hw_write(self, "branch2.0", self.branch2[0], x2, t, self.first_h_index, self.first_w_index, ops)
        t = _folded_dwconv(self, t, self.branch2[1], ops)
        _hw_write(self, "branch2.2", self.branch2[2], t, out, self.last_h_index, self.last_w_index, ops)

    @classmethod
    def from_reference(cls, module, backend: str = "auto"):
        return _unit_from_reference(cls, ref.PXShuffleUnit, module, backend)
