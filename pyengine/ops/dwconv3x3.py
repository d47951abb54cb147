"""``pyengine::dwconv3x3``: a 3x3 depthwise convolution, stride 1, zero padding 1, with bias, as a registered op.

The X-shuffle units of X-HRNet run ``W-SUSA -> 3x3 depthwise conv + BatchNorm -> H-SUSA``; with BN folded into
the conv's weight and bias, the middle step is this op. Per sample n and channel c:

    out[n, c, h, w] = bias[c] + sum_{i, j in 0..2} weight[c, 3i + j] * x[n, c, h + i - 1, w + j - 1]

(x read as zero outside ``[0, H) x [0, W)``), i.e. ``F.conv2d(x, weight.reshape(C, 1, 3, 3), bias, padding=1,
groups=C)`` (:func:`dwconv3x3_ref`).

Layout: ``x [N, C, H, W]`` float32 / float16 / bfloat16 with any strides (NCHW, channels-last, a channel slice
of a larger tensor, a strided W axis); the result has x's dtype and memory format (channels-last stays
channels-last). The parameters are fp32 ``weight [C, 9]`` (row-major 3x3 taps) and ``bias [C]``; all arithmetic is
fp32, rounded once to x's dtype.

Implementations (``impl`` of the raw op :func:`dwconv3x3_op`): ``"cpp"`` only (``csrc/dwconv3x3_cpu.cpp``:
OpenMP over planes (NCHW) or row bands (channels-last), read in place when fp32, 8-wide vectors walking down the
rows; every layout and dtype runs the same fp32 operations in the same order), for CPU tensors. There is no GPU
implementation: on CUDA, callers use cuDNN through ``F.conv2d`` (``backend="reference"`` here).

Inference only: the op has no autograd formula (backward through it raises), and :func:`prepare_weights` detaches
the parameters, so neither backend gives weight or bias gradients; train with ``F.conv2d`` itself.

Public entry points: :func:`dwconv3x3` (validates everything, converts the parameters, calls the op);
:func:`prepare_weights` (or :func:`fold_batchnorm`, for a conv followed by an eval-mode BatchNorm) +
:func:`run_prepared` (the same in two steps, for modules that cache the converted parameters and validate only x
per call).

Dispatch cost: a call through the registered op spends ~30 us in the custom-op machinery, as much as the kernel
itself at the X-HRNet sizes, so plain eager calls run the implementation directly and everything else (compile,
export, opcheck, modes, the profiler) goes through ``pyengine::dwconv3x3``: see ``pyengine/ops/_direct.py``.
"""
import torch
import torch.nn.functional as F

from ..backends import BackendUnavailableError, cpp_extension, op_backend
from ._direct import direct_call_ok
from ._nchw import check_nchw, new_output

__all__ = ["dwconv3x3", "dwconv3x3_ref", "dwconv3x3_op", "prepare_weights", "fold_batchnorm", "run_prepared"]

IMPLS = ("cpp",)
BACKENDS = ("cpp", "reference")


_ext = None


def _run_cpp(x, weight, bias):
    global _ext
    if _ext is None:
        _ext = cpp_extension()
    out = new_output(x, x.shape[1])
    _ext.dwconv3x3_cpu(x, weight, bias, out)
    return out


@torch.library.custom_op("pyengine::dwconv3x3", mutates_args=())
def dwconv3x3_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, impl: str) -> torch.Tensor:
    """Raw op (arguments already validated by :func:`dwconv3x3`): ``x [N, C, H, W]`` (any strides), ``weight``
    fp32 contiguous ``[C, 9]``, ``bias`` fp32 contiguous ``[C]``. Returns ``[N, C, H, W]`` in x's dtype and memory
    format."""
    if impl != "cpp":
        raise BackendUnavailableError(f"pyengine::dwconv3x3: impl={impl!r} is not available (available: "
                                      f"{', '.join(repr(i) for i in IMPLS)}; on CUDA use F.conv2d, i.e. cuDNN)")
    if x.device.type != "cpu":
        raise BackendUnavailableError(f"pyengine::dwconv3x3: impl='cpp' runs on CPU tensors, got x on {x.device} "
                                      f"(on CUDA use F.conv2d, i.e. cuDNN)")
    return _run_cpp(x, weight, bias)


@dwconv3x3_op.register_fake
def _(x, weight, bias, impl):
    return new_output(x, x.shape[1])


def dwconv3x3_ref(x, weight, bias):
    """Eager reference in x's dtype: ``F.conv2d`` with groups=C (weight of ``C * 9`` elements, bias ``[C]``)."""
    c = x.shape[1]
    return F.conv2d(x, weight.reshape(c, 1, 3, 3).to(x.dtype), bias.reshape(c).to(x.dtype), padding=1, groups=c)


# ---------------------------------------------------------------------------------------------------------------
# Validation and the public wrappers
# ---------------------------------------------------------------------------------------------------------------

def prepare_weights(weight, bias, channels):
    """Validate the parameters of a depthwise 3x3 conv over ``channels`` channels and return them as the op takes
    them: ``(weight [C, 9], bias [C])``, fp32, contiguous, detached. ``weight`` may be ``[C, 1, 3, 3]`` (the
    ``nn.Conv2d`` layout), ``[C, 9]`` or ``[C, 3, 3]``, any floating dtype; ``bias`` ``[C]``."""
    c = channels
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"dwconv3x3: weight must be a torch.Tensor [{c}, 1, 3, 3], got {type(weight).__name__}")
    if weight.shape not in ((c, 1, 3, 3), (c, 9), (c, 3, 3)):
        raise ValueError(f"dwconv3x3: weight must be [{c}, 1, 3, 3], [{c}, 9] or [{c}, 3, 3] (C * 9 = {c * 9} "
                         f"elements for C={c} channels), got shape {list(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"dwconv3x3: weight must be a floating-point tensor, got {weight.dtype}")
    if not isinstance(bias, torch.Tensor):
        raise TypeError(f"dwconv3x3: bias must be a torch.Tensor [{c}], got {type(bias).__name__}")
    if bias.shape != (c,):
        raise ValueError(f"dwconv3x3: bias must be [{c}] (one value per channel), got shape {list(bias.shape)}")
    if not bias.is_floating_point():
        raise TypeError(f"dwconv3x3: bias must be a floating-point tensor, got {bias.dtype}")
    if not (weight.is_cpu and bias.is_cpu) and weight.device != bias.device:
        raise ValueError(f"dwconv3x3: weight and bias must be on one device, got weight on {weight.device} and "
                         f"bias on {bias.device}")
    return _as_f32(weight, (c, 9)), _as_f32(bias, (c,))


def _as_f32(t, shape):
    # detached, reshaped, fp32, contiguous; each step only where needed (this runs per call in dwconv3x3)
    if t.requires_grad:
        t = t.detach()
    if t.shape != shape:
        t = t.reshape(shape)
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    return t if t.is_contiguous() else t.contiguous()


def fold_batchnorm(weight, bn):
    """A depthwise 3x3 conv ``weight`` (``[C, 1, 3, 3]``, no bias) followed by the eval-mode BatchNorm ``bn``
    (running statistics), folded into one conv's parameters as the op takes them: fp32 ``(weight [C, 9], bias [C])``.
    The X-shuffle units' ``branch2[1]`` (conv + BN) is this fold run by :func:`run_prepared`."""
    scale = bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)
    w9 = (weight.float() * scale.reshape(-1, 1, 1, 1)).reshape(-1, 9).contiguous()
    return w9, (bn.bias.float() - bn.running_mean.float() * scale).contiguous()


def run_prepared(x, w9, b, *, backend="auto"):
    """The op on ``x`` with parameters from :func:`prepare_weights` (``w9 [C, 9]``, ``b [C]`` fp32 contiguous).
    Validates x, that the parameters match its channels and device, and ``backend`` ("cpp", "reference" or
    "auto": "cpp" on CPU, "reference" -- F.conv2d, cuDNN -- on CUDA); returns ``[N, C, H, W]`` in x's dtype and
    memory format."""
    backend = op_backend("dwconv3x3", backend, x)
    check_nchw(x, "dwconv3x3")
    if w9.shape[0] != x.shape[1]:
        raise ValueError(f"dwconv3x3: the prepared weight is for C={w9.shape[0]} channels, x has C={x.shape[1]}")
    return _dispatch(x, w9, b, backend)


def _dispatch(x, w9, b, backend):
    if not (x.is_cpu and w9.is_cpu) and w9.device != x.device:
        raise ValueError(f"dwconv3x3: weight and bias are on {w9.device}, expected x's device {x.device}")
    if backend == "cpp":
        if not x.is_cpu:
            raise BackendUnavailableError(f"dwconv3x3: backend='cpp' runs on CPU tensors, got x on {x.device}; on "
                                          f"CUDA use backend='reference' (F.conv2d, i.e. cuDNN)")
        return _run_cpp(x, w9, b) if direct_call_ok(x) else dwconv3x3_op(x, w9, b, "cpp")
    if backend == "reference":
        return dwconv3x3_ref(x, w9, b)
    raise BackendUnavailableError(f"dwconv3x3: backend={backend!r} is not available (available: "
                                  f"{', '.join(repr(i) for i in BACKENDS)})")


def dwconv3x3(x, weight, bias, *, backend="auto"):
    """``F.conv2d(x, weight, bias, padding=1, groups=C)`` for a depthwise 3x3 ``weight`` (``[C, 1, 3, 3]``,
    ``[C, 9]`` or ``[C, 3, 3]``) and ``bias [C]``, computed by ``backend``: ``"cpp"`` (the C++ op, CPU tensors),
    ``"reference"`` (``F.conv2d``) or ``"auto"`` (the default: "cpp" on CPU, "reference" on CUDA). Returns
    ``[N, C, H, W]`` in x's dtype and memory format. Inference only."""
    backend = op_backend("dwconv3x3", backend, x)
    check_nchw(x, "dwconv3x3")
    w9, b = prepare_weights(weight, bias, x.shape[1])
    return _dispatch(x, w9, b, backend)
