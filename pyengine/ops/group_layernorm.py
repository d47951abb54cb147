"""``pyengine::group_layernorm``: G LayerNorms over strided column slices of one row buffer, side by side::

    out[:, g*K:(g+1)*K] = LayerNorm(x[:, c_g:c_g+K]) * weight[g] + bias[g]        (c_g = in_cols[g])

x ``[M, K_x]`` (unit column stride, any row stride: e.g. MHFormer's three hypotheses ``[M, 3C]`` in one buffer, or
a column slice of a bigger one), weight / bias ``[G, K]``, ``in_cols`` the G column offsets (any order; groups may
share columns). Biased variance, statistics in fp32 (fp64 for the fp64 reference), one rounding to the output
dtype. The result ``[M, G*K]`` is what a grouped GEMM reads next (``pyengine.ops.ln_linear``'s ``in_cols`` rule:
``in_cols=None`` means ``[g*K]`` when ``K_x == G*K`` and ``[0]*G`` when ``K_x == K``).

It replaces G ``F.layer_norm`` calls on the slices (ATen copies each strided slice to a contiguous tensor first)
plus the ``torch.cat`` after them by one pass over the rows.

* :func:`group_layernorm_ref`: plain PyTorch (``F.layer_norm`` per group + ``torch.cat``), the spec.
* :func:`group_layernorm`: validates and runs ``backend`` ("cpp", the default, or "reference"). ``out=`` (cpp
  only) writes into a given ``[M, G*K]`` tensor (unit column stride, any row stride: e.g. a column block of a bigger
  buffer): that is the **inference path**, a direct call of the raw extension outside autograd and the op
  registry (it raises when autograd would need a graph, and is not for torch.compile / export tracing).
* ``group_layernorm_op``: the registered op (``csrc/group_layernorm_cpu.cpp``: OpenMP over blocks of rows,
  AVX-512 / AVX2 / baseline clones; float32 / bfloat16 / float16 CPU tensors), with a fake impl and an autograd
  formula written out in PyTorch (fp32 math, per group; gradients of groups sharing columns of x add up).
"""
from typing import List

import torch
import torch.nn.functional as F

from ..backends import BackendUnavailableError, cpp_extension
from ._checks import ROW_DTYPES, check_eps, check_in_cols, check_like, check_rows, check_tensor, default_in_cols


DTYPES = ROW_DTYPES
CPP_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BACKENDS = ("cpp", "reference")


def group_layernorm_ref(x, weight, bias, *, in_cols=None, eps):
    """``torch.cat([F.layer_norm(x[:, c:c+K], (K,), weight[g], bias[g], eps) for g, c in enumerate(in_cols)], 1)``."""
    G, K = weight.shape
    if in_cols is None:
        in_cols = default_in_cols(x.shape[1], G, K)
    return torch.cat([F.layer_norm(x[:, c:c + K], (K,), weight[g], bias[g], eps) for g, c in enumerate(in_cols)],
                     dim=1)


def check_group_layernorm_args(x, weight, bias, eps, in_cols) -> List[int]:
    """Raise ``TypeError`` / ``ValueError`` naming the argument, the expected and the actual; return the effective
    ``in_cols``."""
    op = "group_layernorm: "
    check_rows(x, "[M, K_x]", op)
    check_tensor("weight", weight, op)
    check_tensor("bias", bias, op)
    if weight.dim() != 2 or weight.shape[0] < 1 or weight.shape[1] < 1:
        raise ValueError(f"{op}weight: expected a 2-D tensor [G, K] with G, K >= 1 (one LayerNorm "
                         f"weight per group), got shape {list(weight.shape)}")
    G, K = weight.shape
    if list(bias.shape) != [G, K]:
        raise ValueError(f"{op}bias: expected shape {[G, K]} (weight's), got {list(bias.shape)}")
    check_like("weight", weight, x, op)
    check_like("bias", bias, x, op)
    check_eps(eps, op)
    return check_in_cols(in_cols, G, K, x.shape[1], op)


def _check_cpp_args(x) -> None:
    """What the C++ kernel additionally needs (a missing capability, not a wrong argument)."""
    if x.device.type != "cpu":
        raise BackendUnavailableError(f"group_layernorm: backend='cpp' runs on CPU tensors, got x on {x.device}; "
                                      "use backend='reference'")
    if x.dtype not in CPP_DTYPES:
        raise BackendUnavailableError(f"group_layernorm: backend='cpp' takes float32 / bfloat16 / float16, got x of "
                                      f"dtype {x.dtype}; use backend='reference'")


def _check_out(out, x, G, K) -> None:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"group_layernorm: out: expected a torch.Tensor or None, got {type(out).__name__}")
    M = x.shape[0]
    if list(out.shape) != [M, G * K]:
        raise ValueError(f"group_layernorm: out: expected shape [M, G*K] = {[M, G * K]}, got {list(out.shape)}")
    if out.dtype != x.dtype:
        raise TypeError(f"group_layernorm: out: expected dtype {x.dtype} (the dtype of x), got {out.dtype}")
    if out.device != x.device:
        raise ValueError(f"group_layernorm: out: expected device {x.device} (the device of x), got {out.device}")
    if G * K > 1 and out.stride(1) != 1:
        raise ValueError(f"group_layernorm: out: expected unit column stride (any row stride), got strides "
                         f"{list(out.stride())}")
    if M > 1 and out.stride(0) < G * K:
        raise ValueError(f"group_layernorm: out: expected non-overlapping rows (row stride >= G*K = {G * K}), got "
                         f"strides {list(out.stride())}")


def _cpp_extension():
    ext = cpp_extension()
    if not hasattr(ext, "group_layernorm_cpu"):
        raise BackendUnavailableError("group_layernorm: backend='cpp' needs pyengine._C with group_layernorm_cpu "
                                      "(this build predates csrc/group_layernorm_cpu.cpp); rebuild it with `pip "
                                      "install --no-build-isolation -e .`")
    return ext


@torch.library.custom_op("pyengine::group_layernorm", mutates_args=())
def group_layernorm_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, in_cols: List[int],
                       eps: float) -> torch.Tensor:
    """Raw op (C++ kernel, CPU; arguments validated by :func:`group_layernorm`, the kernel re-checks shapes and
    offsets): x ``[M, K_x]``, weight / bias ``[G, K]`` -> a new contiguous ``[M, G*K]``."""
    return _cpp_extension().group_layernorm_cpu(x, in_cols, weight, bias, eps)


@group_layernorm_op.register_fake
def _(x, weight, bias, in_cols, eps):
    G, K = weight.shape
    return x.new_empty((x.shape[0], G * K))


def _setup_context(ctx, inputs, output):
    x, weight, bias, in_cols, eps = inputs
    ctx.save_for_backward(x, weight)
    ctx.in_cols = list(in_cols)
    ctx.eps = eps


def _backward(ctx, grad):
    """Per group, the LayerNorm backward in fp32 (fp64 for fp64 tensors); dx of groups reading the same columns
    of x add up, columns no group reads get zero."""
    x, weight = ctx.saved_tensors
    G, K = weight.shape
    cd = torch.float64 if x.dtype == torch.float64 else torch.float32
    dx = torch.zeros(x.shape, dtype=cd, device=x.device)
    dw = torch.empty((G, K), dtype=cd, device=x.device)
    db = torch.empty((G, K), dtype=cd, device=x.device)
    for g, c in enumerate(ctx.in_cols):
        gy = grad[:, g * K:(g + 1) * K].to(cd)
        xs = x[:, c:c + K].to(cd)
        xc = xs - xs.mean(dim=1, keepdim=True)
        rstd = torch.rsqrt(xc.pow(2).mean(dim=1, keepdim=True) + ctx.eps)
        xhat = xc * rstd
        dxhat = gy * weight[g].to(cd)
        dx[:, c:c + K] += rstd * (dxhat - dxhat.mean(dim=1, keepdim=True)
                                  - xhat * (dxhat * xhat).mean(dim=1, keepdim=True))
        dw[g] = (gy * xhat).sum(dim=0)
        db[g] = gy.sum(dim=0)
    return dx.to(x.dtype), dw.to(x.dtype), db.to(x.dtype), None, None


group_layernorm_op.register_autograd(_backward, setup_context=_setup_context)


def group_layernorm(x, weight, bias, *, in_cols=None, eps, out=None, backend="cpp"):
    """``out[:, g*K:(g+1)*K] = LayerNorm(x[:, c_g:c_g+K]) * weight[g] + bias[g]`` for x ``[M, K_x]`` (unit column
    stride, any row stride), weight / bias ``[G, K]``, ``in_cols`` the G offsets (``None``: ``[g*K]`` when
    ``K_x == G*K``, ``[0]*G`` when ``K_x == K``). Returns ``[M, G*K]``.

    ``backend``: "cpp" (the default; CPU float32 / bfloat16 / float16, through the registered op: autograd,
    torch.compile and export work) or "reference" (eager PyTorch, any device / dtype). ``out`` (cpp only): a
    ``[M, G*K]`` tensor of x's dtype with unit column stride and any row stride (e.g. a column block of a bigger
    buffer, the rest of which is left untouched), not sharing memory with x; it is written and returned. That is
    the inference path: the raw kernel, no autograd (it raises if grad mode is on and an input requires grad)."""
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"group_layernorm: backend={backend!r} is not available (available: "
                                      f"{', '.join(repr(b) for b in BACKENDS)})")
    in_cols = check_group_layernorm_args(x, weight, bias, eps, in_cols)
    if backend == "reference":
        if out is not None:
            raise ValueError("group_layernorm: out: only backend='cpp' writes into out= (the inference path), got "
                             "backend='reference'")
        return group_layernorm_ref(x, weight, bias, in_cols=in_cols, eps=eps)
    _check_cpp_args(x)
    ext = _cpp_extension()
    if out is None:
        return group_layernorm_op(x, weight, bias, in_cols, float(eps))
    G, K = weight.shape
    _check_out(out, x, G, K)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (x, weight, bias, out)):
        raise ValueError("group_layernorm: out: out= is the inference path (no autograd), but an input requires "
                         "grad; call it under torch.no_grad() / torch.inference_mode(), or without out=")
    return ext.group_layernorm_cpu(x, in_cols, weight, bias, float(eps), out)


def group_layernorm_runs(x) -> bool:
    """Whether :func:`group_layernorm_rows` can take ``x``: a CPU tensor of a kernel dtype, and the extension has the
    kernel (an older build may not)."""
    if x.device.type != "cpu" or x.dtype not in CPP_DTYPES:
        return False
    try:
        return hasattr(cpp_extension(), "group_layernorm_cpu")
    except BackendUnavailableError:
        return False


def group_layernorm_rows(x, weight, bias, eps):
    """``F.layer_norm(x, (K,), weight, bias, eps)`` for x ``[M, K]`` with any row stride (a column block of a wider
    buffer, read in place), by the raw kernel: the inference path of ``ln_linear``'s LayerNorm prologue (no
    argument checks beyond the kernel's own, no autograd; the caller checked :func:`group_layernorm_runs`)."""
    return cpp_extension().group_layernorm_cpu(x, [0], weight[None], bias[None], float(eps), None)


__all__ = ["group_layernorm", "group_layernorm_ref", "group_layernorm_op", "check_group_layernorm_args"]
