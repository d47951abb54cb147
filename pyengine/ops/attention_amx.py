"""``pyengine::attention_amx``: multi-head attention on Intel AMX bf16 tiles (CPU), for bfloat16 q / k / v.

Same semantics as :func:`pyengine.ops.attention.attention` (the spec is
:func:`~pyengine.ops.attention.attention_ref`): per (b, g, h), ``out = softmax((q @ k^T) * D**-0.5) @ v``; q
``[B, G, Nq, H, D]``, k / v ``[B, G, Nk, H, D]``, any strides with a unit last-dim stride (views into a fused QKV
projection; batch stride 0 for shared queries), the result ``[B, Nq, G, H, D]`` bfloat16.

The kernel (``csrc/attention_amx.cpp``) runs both products on AMX tiles (``TDPBF16PS``: bf16 products, fp32
accumulation) and the softmax in fp32 with AVX-512. Per (b, g, h) it packs K and V once into the tiles' VNNI
operand layouts (Nk and D zero-padded to multiples of 32); then per 32 query rows (two 16-row tile blocks, 2 x 2
accumulator tiles, so that each K / V tile load feeds two products) it computes the fp32 scores ``S = Q K^T``, the
row maximum, ``p = exp((s - max) * D**-0.5)`` (as ``2^y``: ``VREDUCEPS``, a degree-3 polynomial with relative error
< 8e-5, ``VSCALEFPS``) rounded to bf16 and summed in fp32 *after* the rounding (the weights that multiply V sum to
exactly the divisor), ``O = P V`` in fp32 tiles, and ``O / sum`` rounded to bf16 once. The 32-row units go through
a two-slot software pipeline. OpenMP splits (b, g, h) -- and the query units of a head when there are fewer than 4
heads a thread -- over the threads; results do not depend on the thread count. Its relative error against the fp64
reference is at most the eager bf16 ``attention_ref``'s (whose scores and probabilities are rounded to bf16), mostly
0.3-0.5x of it: the final rounding of ``out`` to bf16 dominates.

Requirements (else :class:`~pyengine.backends.BackendUnavailableError`): a CPU and OS with AMX-BF16 (Intel Sapphire
Rapids or later: CPUID AMX-TILE, AMX-BF16, AVX512F/BW/VL/DQ, AVX512-BF16, and Linux's tile-data permission, which
the extension requests once), CPU tensors, bfloat16, ``1 <= D <= 256``. Other dtypes / head dims take
``attention(..., backend="cpp")``. :func:`amx_available` says whether this machine runs it.

Two registered ops:

* ``pyengine::attention_amx(q, k, v) -> Tensor`` (a new contiguous ``[B, Nq, G, H, D]``), with a fake
  (meta) implementation and an autograd formula: the backward recomputes the attention through ``attention_ref``
  under torch autograd (as ``pyengine::attention_cpp`` does; no fused backward kernel);
* ``pyengine::attention_amx_out(q, k, v, out) -> ()``, writing into ``out`` ``[B, Nq, G, H, D]`` bfloat16 with any
  strides and a unit last-dim stride (e.g. a column slice ``buf[:, :, g:g + 1]`` of a bigger buffer; nothing else
  of the buffer is touched; ``out`` must not overlap itself or q / k / v). Out ops have no derivative.
"""
import torch

from ..backends import BackendUnavailableError, cpp_extension, tracing
from ._direct import direct_call_ok
from .attention import _backward_cpp, _setup_context_cpp, check_attention_args, check_unit_head_stride

MAX_HEAD_DIM = 256
DTYPE = torch.bfloat16


def _extension_has_kernel(ext) -> bool:
    return hasattr(ext, "attention_amx_cpu") and hasattr(ext, "amx_bf16_available")


def amx_available() -> bool:
    """Whether ``pyengine._C`` has the AMX kernel and this CPU / OS can run it (CPUID, XCR0, Linux permission)."""
    try:
        ext = cpp_extension()
    except BackendUnavailableError:
        return False
    return _extension_has_kernel(ext) and bool(ext.amx_bf16_available())


def _extension():
    ext = cpp_extension()  # raises BackendUnavailableError when pyengine._C is missing
    if not _extension_has_kernel(ext):
        raise BackendUnavailableError("attention_amx: needs pyengine._C with attention_amx_cpu (this build predates "
                                      "csrc/attention_amx.cpp); rebuild it with `pip install --no-build-isolation "
                                      "-e .`")
    if not ext.amx_bf16_available():
        raise BackendUnavailableError("attention_amx: this CPU / OS does not run AMX-BF16 tiles (needs CPUID "
                                      "AMX-TILE, AMX-BF16, AVX512F/BW/VL/DQ and AVX512-BF16, and Linux's tile-data "
                                      "permission); use pyengine.ops.attention.attention(..., backend='cpp')")
    return ext


def check_amx_args(q, k, v) -> None:
    """The common attention checks, then what the AMX kernel needs: CPU, bfloat16, unit head strides, D <= 256."""
    check_attention_args(q, k, v)
    if q.device.type != "cpu":
        raise BackendUnavailableError(f"attention_amx: runs on CPU tensors, got q on {q.device}; use "
                                      "pyengine.ops.attention.attention(..., backend='triton') on CUDA")
    if q.dtype != DTYPE:
        raise BackendUnavailableError(f"attention_amx: takes bfloat16 q / k / v, got q of dtype {q.dtype}; use "
                                      "pyengine.ops.attention.attention(..., backend='cpp')")
    D = q.shape[-1]
    if not 1 <= D <= MAX_HEAD_DIM:
        raise BackendUnavailableError(f"attention_amx: supports head dims 1..{MAX_HEAD_DIM}, got D={D}; use "
                                      "pyengine.ops.attention.attention(..., backend='cpp')")
    check_unit_head_stride(q, k, v)


def check_out(q, out) -> None:
    """``out`` must be a bfloat16 CPU tensor ``[B, Nq, G, H, D]`` with a unit last-dim stride, no stride-0 dims."""
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"attention_amx: out: expected a torch.Tensor, got {type(out).__name__}")
    if out.dtype != DTYPE:
        raise TypeError(f"attention_amx: out: expected dtype {DTYPE}, got {out.dtype}")
    if out.device != q.device:
        raise ValueError(f"attention_amx: out: expected device {q.device} (q's), got {out.device}")
    B, G, Nq, H, D = q.shape
    want = [B, Nq, G, H, D]
    if list(out.shape) != want:
        raise ValueError(f"attention_amx: out: expected shape {want} [B, Nq, G, H, D], got {list(out.shape)}")
    if D > 1 and out.stride(-1) != 1:
        raise ValueError(f"attention_amx: out: expected a unit stride on the last (head) dim, got strides "
                         f"{list(out.stride())}")
    if any(s == 0 and n > 1 for s, n in zip(out.stride(), out.shape)):
        raise ValueError(f"attention_amx: out: expected no stride-0 (expanded) dims, got strides "
                         f"{list(out.stride())} for shape {list(out.shape)}")


@torch.library.custom_op("pyengine::attention_amx", mutates_args=())
def attention_amx_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Raw op (AMX kernel, CPU, bf16): q ``[B, G, Nq, H, D]``, k / v ``[B, G, Nk, H, D]`` -> ``[B, Nq, G, H, D]``."""
    check_amx_args(q, k, v)
    B, G, Nq, H, D = q.shape
    out = torch.empty((B, Nq, G, H, D), dtype=q.dtype, device=q.device)
    _extension().attention_amx_cpu(q, k, v, out)
    return out


@attention_amx_op.register_fake
def _(q, k, v):
    B, G, Nq, H, D = q.shape
    return q.new_empty((B, Nq, G, H, D))


# the backward recomputes through the eager reference (no fused backward kernel), as pyengine::attention_cpp's
attention_amx_op.register_autograd(_backward_cpp, setup_context=_setup_context_cpp)


@torch.library.custom_op("pyengine::attention_amx_out", mutates_args=("out",))
def attention_amx_out_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor) -> None:
    """Raw op (AMX kernel, CPU, bf16): writes the attention into ``out`` ``[B, Nq, G, H, D]`` (any strides, unit
    last-dim stride)."""
    check_amx_args(q, k, v)
    check_out(q, out)
    _extension().attention_amx_cpu(q, k, v, out)


@attention_amx_out_op.register_fake
def _(q, k, v, out):
    return None


def _plain_eager(q, *others) -> bool:
    """A plain eager call (``ops._direct.direct_call_ok``) on plain tensors none of which needs a gradient."""
    return direct_call_ok(q) and all(type(t) is torch.Tensor and not (t.requires_grad and torch.is_grad_enabled())
                                     for t in others)


def attention_amx(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax((q @ k^T) * D**-0.5) @ v`` per (batch, group, head) on AMX tiles -> a new contiguous
    ``[B, Nq, G, H, D]`` bfloat16 tensor; see the module docstring. Differentiable (the backward recomputes through
    ``attention_ref``). Raises ``BackendUnavailableError`` where the kernel cannot run (no AMX, not CPU, not bf16,
    D > 256) and ``TypeError`` / ``ValueError`` for malformed arguments."""
    check_amx_args(q, k, v)
    if not tracing():
        _extension()
    if _plain_eager(q, k, v):  # the kernel itself, without the custom op's dispatch (ops/_direct.py)
        B, G, Nq, H, D = q.shape
        out = torch.empty((B, Nq, G, H, D), dtype=q.dtype, device=q.device)
        _extension().attention_amx_cpu(q, k, v, out)
        return out
    return attention_amx_op(q, k, v)


def attention_amx_out(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The same, written into ``out`` ``[B, Nq, G, H, D]`` bfloat16 (any strides with a unit last-dim stride, e.g. a
    column slice of a bigger buffer); returns ``out``. Not differentiable (an out= op)."""
    check_amx_args(q, k, v)
    check_out(q, out)
    if not tracing():
        _extension()
    if _plain_eager(q, k, v, out):  # the kernel itself, without the custom op's dispatch (ops/_direct.py)
        _extension().attention_amx_cpu(q, k, v, out)
        return out
    attention_amx_out_op(q, k, v, out)
    return out
