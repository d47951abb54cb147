"""``pyengine::onednn_linear``: ``act(x @ weight.T + bias) + residual`` as ONE oneDNN inner-product primitive on
CPU, the bias, GELU and residual add fused into its epilogue.

Why: ATen's CPU ``F.linear`` in fp32 calls MKL's sgemm, which on AMD CPUs runs a generic code path: measured on
this project's 2-core AMD EPYC (AVX-512, no AMX), oneDNN's fp32 inner product is ~2x faster for the models'
shapes (``benchmarks/results/2026-12-02-cpu-anchors.md``), and each separate GELU / add pass is a full read and
write of the activations that the epilogue avoids. On Intel CPUs MKL is at peak and this may not win, so the
engine's ``auto`` measures both once per process and picks (``pyengine.dispatch.cpu_gemm_choice``).

* :func:`onednn_linear_ref`: the spec, plain PyTorch (``F.linear`` -> ``F.gelu`` -> ``+ residual``).
* :func:`onednn_linear`: validates and runs ``backend`` ("reference" or "onednn").
* ``onednn_linear_op``: the registered op (``torch.ops.mkldnn._linear_pointwise``), a fake impl for compile /
  export and an autograd formula in plain PyTorch (it recomputes the pre-activation; fp32 math).

CPU tensors, float32 or bfloat16. bf16 runs natively with AVX-512 BF16 / AMX (:func:`onednn_bf16_native`), is
emulated, slowly, on other AVX-512 CPUs, and does not run at all on AVX2-only CPUs (e.g. AMD Zen 3: oneDNN creates
no bf16 inner product there, and torch's weight prepacking needs AVX-512BW/VL/DQ or AVX-NE-CONVERT), which
:func:`onednn_bf16_runs` finds out once per process by running a tiny one; ``backend="onednn"`` then raises
``BackendUnavailableError`` for bf16 and ``auto`` runs ATen's GEMM, saying so. fp32 products are exact fp32
(oneDNN's default math mode; pyengine never sets ``torch.backends.mkldnn`` to tf32 / bf16 math).
"""
import math
import time
from typing import Optional

import torch
import torch.nn.functional as F

from ..backends import BackendUnavailableError, op_backend, tracing

ACTIVATIONS = ("none", "gelu")
DTYPES = (torch.float32, torch.bfloat16)
BACKENDS = ("reference", "onednn")


def onednn_available() -> bool:
    """oneDNN is in this torch build and enabled (``torch.backends.mkldnn``)."""
    return (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


def onednn_bf16_native() -> bool:
    """The CPU has bf16 dot-product instructions (AVX-512 BF16 or AMX) that oneDNN uses for bf16 GEMMs."""
    return onednn_available() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


_BF16_PROBE = []  # [(runs, why)] once per process: oneDNN's bf16 support depends on the CPU, not on the call


def onednn_bf16_runs() -> bool:
    """oneDNN runs a bf16 inner product (and torch prepacks bf16 weights for it) on this CPU: found out once by
    running a tiny one, since what oneDNN supports depends on ISA details no torch flag reports."""
    return _bf16_probe()[0]


def onednn_bf16_missing() -> str:
    """Why :func:`onednn_bf16_runs` is False (``""`` where it runs)."""
    return _bf16_probe()[1]


def _bf16_probe():
    if not _BF16_PROBE:
        if not onednn_available():
            _BF16_PROBE.append((False, "this torch build has no (enabled) oneDNN"))
        else:
            x, w = torch.ones(2, 16, dtype=torch.bfloat16), torch.ones(16, 16, dtype=torch.bfloat16)
            try:
                with torch.no_grad():
                    torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")
                    torch.ops.mkldnn._reorder_linear_weight(w, 2)
                _BF16_PROBE.append((True, ""))
            except RuntimeError as exc:
                # oneDNN's message, up to its "Run workload with ONEDNN_VERBOSE" advice
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(". Run workload")[0]
                _BF16_PROBE.append((False, f"this CPU's oneDNN has no bf16 inner product ({first[:200]})"))
    return _BF16_PROBE[0]


def onednn_linear_ref(x, weight, bias=None, *, activation="none", residual=None):
    """The eager composition: ``F.linear`` -> ``F.gelu`` (exact erf) if ``activation == "gelu"`` -> ``+ residual``."""
    y = F.linear(x, weight, bias)
    if activation == "gelu":
        y = F.gelu(y)
    return y if residual is None else y + residual


def check_onednn_linear_args(x, weight, bias, activation, residual) -> None:
    """Raise ``TypeError`` / ``ValueError`` naming the argument, the expected and the actual."""
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"onednn_linear: {name}: expected a torch.Tensor, got {type(t).__name__}")
    if x.dim() != 2:
        raise ValueError(f"onednn_linear: x: expected a 2-D tensor [M, K], got shape {list(x.shape)}")
    if weight.dim() != 2 or weight.shape[1] != x.shape[1]:
        raise ValueError(f"onednn_linear: weight: expected shape [N, {x.shape[1]}] (nn.Linear [out, in]), got "
                         f"{list(weight.shape)}")
    M, N = x.shape[0], weight.shape[0]
    for name, t, want in (("weight", weight, None), ("bias", bias, [N]), ("residual", residual, [M, N])):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"onednn_linear: {name}: expected a torch.Tensor or None, got {type(t).__name__}")
        if want is not None and list(t.shape) != want:
            raise ValueError(f"onednn_linear: {name}: expected shape {want}, got {list(t.shape)}")
        if t.dtype != x.dtype:
            raise TypeError(f"onednn_linear: {name}: expected dtype {x.dtype} (the dtype of x), got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"onednn_linear: {name}: expected device {x.device} (the device of x), got {t.device}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"onednn_linear: activation: expected one of {ACTIVATIONS}, got {activation!r}")


def _check_runnable(x) -> None:
    """What the oneDNN primitive additionally needs (a missing capability, not a wrong argument)."""
    if not onednn_available():
        raise BackendUnavailableError("onednn_linear: backend='onednn' needs oneDNN (torch.backends.mkldnn), which "
                                      "this torch build lacks or has disabled")
    if x.device.type != "cpu":
        raise BackendUnavailableError(f"onednn_linear: backend='onednn' runs on CPU tensors, got {x.device}")
    if x.dtype not in DTYPES:
        raise BackendUnavailableError(f"onednn_linear: backend='onednn' takes float32 or bfloat16 (oneDNN's CPU "
                                      f"inner product), got {x.dtype}; use backend='reference'")
    if x.dtype == torch.bfloat16 and not onednn_bf16_runs():
        raise BackendUnavailableError(f"onednn_linear: backend='onednn' cannot run bfloat16 here: "
                                      f"{onednn_bf16_missing()}; use float32 or backend='reference'")


def _inner_product(x, weight, bias, activation, residual):
    """One oneDNN inner product with a fused epilogue; ``weight`` dense ``[N, K]`` or oneDNN-prepacked."""
    mk = torch.ops.mkldnn
    if residual is None:
        return mk._linear_pointwise(x, weight, bias, "gelu" if activation == "gelu" else "none", [],
                                    "none" if activation == "gelu" else "")  # "none": the exact (erf) GELU
    if activation == "gelu":  # oneDNN's epilogue is eltwise OR binary here: GELU fused, the add in place
        return mk._linear_pointwise(x, weight, bias, "gelu", [], "none").add_(residual)
    return mk._linear_pointwise.binary(x, residual, weight, bias, "add")


@torch.library.custom_op("pyengine::onednn_linear", mutates_args=())
def onednn_linear_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], activation: str,
                     residual: Optional[torch.Tensor]) -> torch.Tensor:
    """Raw op (arguments validated by :func:`onednn_linear`): one oneDNN inner product with a fused epilogue."""
    return _inner_product(x, weight, bias, activation, residual)


class PackedWeights:
    """oneDNN-prepacked copies of bf16 weights (``mkldnn._reorder_linear_weight``), made once per weight version,
    used where they measure faster: packing is a layout chosen for one GEMM shape, and it is not always a win
    (measured on an AMX Xeon: 1.2x faster for ``702x512 @ 512x1536``, 1.7x *slower* for ``702x1536 @ 1536x1024``).
    So at its first use each weight's GEMM is timed both ways with that call's input (interleaved, best of 3; a tie
    keeps the dense weight) and the faster weight is kept. Used only where a prepacked (opaque) weight is safe:
    eager inference (no autograd, not compiling or exporting) on ordinary tensors. Dense and packed results are
    bit-identical, for every batch size, so the choice changes speed only.

    An entry is keyed by the weight's (data pointer, shape, strides) and remembers its ``_version``: an in-place
    update (``load_state_dict``, ``copy_``) repacks it; the entry holds the weight, so its memory (and pointer)
    cannot be reused by another tensor while cached. Stacked weights rebuilt after a change leave stale entries
    behind; the cache is cleared when it reaches ``MAX_ENTRIES``."""

    MAX_ENTRIES = 512

    def __init__(self):
        self._packs = {}

    @staticmethod
    def usable(x, weight) -> bool:
        return (x.dtype == torch.bfloat16 and x.device.type == "cpu" and not torch.is_grad_enabled()
                and not tracing() and not weight.is_inference())  # inference tensors have no version counter to key on

    def get(self, weight, x, bias=None):
        """The weight to run ``x @ weight.T`` with: the packed copy or ``weight`` itself, whichever measured faster
        for this weight at its first use (``x`` and ``bias`` are that use's)."""
        key = (weight.data_ptr(), tuple(weight.shape), tuple(weight.stride()))
        hit = self._packs.get(key)
        if hit is None or hit[0] != weight._version:
            if len(self._packs) >= self.MAX_ENTRIES:
                self._packs.clear()
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, x.shape[0])
            t_dense, t_packed = float("inf"), float("inf")
            for _ in range(3):  # interleaved; the first round also creates (and caches) both oneDNN primitives
                t_dense = min(t_dense, _time_once(lambda: _inner_product(x, weight, bias, "none", None)))
                t_packed = min(t_packed, _time_once(lambda: _inner_product(x, packed, bias, "none", None)))
            hit = (weight._version, weight, packed if t_packed < 0.97 * t_dense else weight)
            self._packs[key] = hit
        return hit[2]

    def __len__(self):
        return len(self._packs)

    def packed_count(self) -> int:
        """How many cached weights run prepacked (the rest measured faster dense)."""
        return sum(1 for _, w, use in self._packs.values() if use is not w)


def _time_once(fn):
    """Seconds one call of ``fn`` takes (the timer behind pyengine's measured CPU choices)."""
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def onednn_linear_prepacked(x, weight, bias, activation, residual, packs: Optional[PackedWeights]):
    """:func:`onednn_linear_op`'s result, from ``packs``' choice of weight (prepacked or dense) where there is a
    cache and :meth:`PackedWeights.usable`, else through the registered op (autograd, compile, export)."""
    if packs is not None and PackedWeights.usable(x, weight):
        return _inner_product(x, packs.get(weight, x, bias), bias, activation, residual)
    return onednn_linear_op(x, weight, bias, activation, residual)


@onednn_linear_op.register_fake
def _(x, weight, bias, activation, residual):
    return x.new_empty((x.shape[0], weight.shape[0]))


def _setup_context(ctx, inputs, output):
    x, weight, bias, activation, residual = inputs
    ctx.save_for_backward(x, weight, bias)
    ctx.activation, ctx.has_residual = activation, residual is not None


def _backward(ctx, grad):
    """``dx = dz @ W``, ``dW = dz^T x``, ``db = sum(dz)`` with ``dz = grad * GELU'(z)`` (z recomputed), fp32 math."""
    x, weight, bias = ctx.saved_tensors
    cd = torch.float32
    dz = grad.to(cd)
    if ctx.activation == "gelu":  # d/dz [z * Phi(z)] = Phi(z) + z * phi(z)
        z = F.linear(x.to(cd), weight.to(cd), None if bias is None else bias.to(cd))
        dz = dz * (0.5 * (1.0 + torch.erf(z * 0.5 ** 0.5)) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi))
    dx = (dz @ weight.to(cd)).to(x.dtype)
    dw = (dz.T @ x.to(cd)).to(weight.dtype)
    db = None if bias is None else dz.sum(dim=0).to(bias.dtype)
    return dx, dw, db, None, grad if ctx.has_residual else None


onednn_linear_op.register_autograd(_backward, setup_context=_setup_context)


def onednn_linear(x, weight, bias=None, *, activation="none", residual=None, backend="auto"):
    """``[M, N]`` in x's dtype: ``act(x @ weight.T + bias) + residual``. x ``[M, K]`` (any strides), weight
    ``[N, K]``, bias ``[N]``, residual ``[M, N]``, activation "none" or "gelu" (exact erf GELU).
    ``backend``: "onednn" (the registered op; CPU, float32 / bfloat16), "reference", or "auto" (the default:
    "onednn" for CPU tensors, else the reference; ``pyengine.backends.op_backend``)."""
    backend = op_backend("onednn_linear", backend, x)
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"onednn_linear: backend={backend!r} is not available (available: "
                                      f"{', '.join(repr(b) for b in BACKENDS)})")
    check_onednn_linear_args(x, weight, bias, activation, residual)
    if backend == "reference":
        return onednn_linear_ref(x, weight, bias, activation=activation, residual=residual)
    _check_runnable(x)
    return onednn_linear_op(x, weight, bias, activation, residual)
