"""``pyengine::layernorm``: LayerNorm over the last axis with an optional repeating row-pattern add and residual::

    out = LN(x) * weight + bias (+ add[m % P]) (+ residual)

``add [P, K]`` is broadcast over rows in a repeating pattern (row m uses ``add[m % P]``): the learned
``pos_embed`` added right after a LayerNorm, e.g. MHG's ``LN_n1(x) + pos_embed`` with rows = (batch, token).

* :func:`layernorm_ref`: plain PyTorch, the spec.
* :func:`layernorm`: validates and runs ``backend`` ("reference" or "triton").
* ``layernorm_op``: the registered op (Triton kernel :mod:`pyengine.kernels.layernorm`), fake impl and an
  autograd formula written out in PyTorch (fp32 math; fp64 for fp64 inputs).

See docs/ln_linear.md.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from ..backends import BackendUnavailableError, check_compiled_dtype, device_guard, op_backend
from ._checks import ROW_DTYPES, check_eps, check_like, check_rows, check_tensor, check_unit_column_stride

DTYPES = ROW_DTYPES
GPU_DTYPES = DTYPES[:3]  # float64 runs only under the interpreter (CPU): no sm_90 variant is compiled for it
_BACKENDS = ("reference", "triton")


def _rows_pattern(M, P, device):
    return torch.arange(M, device=device) % P


def layernorm_ref(x, weight, bias, *, eps, add=None, residual=None):
    """``F.layer_norm(x, (K,), weight, bias, eps)`` then ``+ add[m % P]`` then ``+ residual``."""
    y = F.layer_norm(x, (x.shape[1],), weight, bias, eps)
    if add is not None:
        y = y + add[_rows_pattern(x.shape[0], add.shape[0], x.device)]
    if residual is not None:
        y = y + residual
    return y


def check_layernorm_args(x, weight, bias, eps, add, residual) -> None:
    check_rows(x, "[M, K]")
    M, K = x.shape
    if K < 1:
        raise ValueError(f"x: expected K >= 1 columns, got shape {list(x.shape)}")
    for name, t, shape in (("weight", weight, [K]), ("bias", bias, [K]), ("add", add, None),
                           ("residual", residual, [M, K])):
        if t is None:
            if name in ("weight", "bias"):
                raise TypeError(f"{name}: expected a tensor of shape [{K}], got None")
            continue
        check_tensor(name, t)
        if name == "add":
            if t.dim() != 2 or t.shape[1] != K or t.shape[0] < 1:
                raise ValueError(f"add: expected shape [P, {K}] with P >= 1 (row m adds add[m % P]), "
                                 f"got {list(t.shape)}")
        elif list(t.shape) != shape:
            raise ValueError(f"{name}: expected shape {shape}, got {list(t.shape)}")
        check_like(name, t, x)
        if t.dim() == 2:
            check_unit_column_stride(name, t)
    check_eps(eps)


@torch.library.custom_op("pyengine::layernorm", mutates_args=())
def layernorm_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float,
                 add: Optional[torch.Tensor], residual: Optional[torch.Tensor]) -> torch.Tensor:
    """Raw op (arguments already validated by :func:`layernorm`): the Triton kernel. Returns ``[M, K]``."""
    from pyengine.kernels.layernorm import launch_layernorm
    check_compiled_dtype(x, "pyengine::layernorm", GPU_DTYPES)
    with device_guard(x):
        return launch_layernorm(x, weight, bias, eps, add, residual)


@layernorm_op.register_fake
def _(x, weight, bias, eps, add, residual):
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    x, weight, bias, eps, add, residual = inputs
    ctx.save_for_backward(x, weight)
    ctx.eps = eps
    ctx.add_rows = None if add is None else add.shape[0]
    ctx.has_residual = residual is not None


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    cd = torch.float64 if x.dtype == torch.float64 else torch.float32
    g, xs = grad.to(cd), x.to(cd)
    xc = xs - xs.mean(dim=1, keepdim=True)
    rstd = torch.rsqrt(xc.pow(2).mean(dim=1, keepdim=True) + ctx.eps)
    xhat = xc * rstd
    dxhat = g * weight.to(cd)
    dx = rstd * (dxhat - dxhat.mean(dim=1, keepdim=True) - xhat * (dxhat * xhat).mean(dim=1, keepdim=True))
    dw = (g * xhat).sum(dim=0)
    db = g.sum(dim=0)
    dadd = None
    if ctx.add_rows is not None:
        dadd = g.new_zeros((ctx.add_rows, x.shape[1])).index_add_(0, _rows_pattern(x.shape[0], ctx.add_rows,
                                                                                      x.device), g)
        dadd = dadd.to(x.dtype)
    dres = grad if ctx.has_residual else None
    return dx.to(x.dtype), dw.to(x.dtype), db.to(x.dtype), None, dadd, dres


layernorm_op.register_autograd(_backward, setup_context=_setup_context)


def layernorm(x, weight, bias, *, eps, add=None, residual=None, backend="auto"):
    """``LN(x) * weight + bias (+ add[m % P]) (+ residual)`` for ``x [M, K]`` (unit column stride, any row
    stride), weight / bias ``[K]``, add ``[P, K]``, residual ``[M, K]``; statistics in fp32 (biased variance, as
    torch). ``backend``: "reference" (eager PyTorch), "triton" or ``"auto"`` (the default: Triton on CUDA or under
    the interpreter, else the reference; ``pyengine.backends.op_backend``)."""
    backend = op_backend("layernorm", backend, x)
    if backend not in _BACKENDS:
        raise BackendUnavailableError(f"layernorm: backend={backend!r} is not available (available: "
                                      f"{', '.join(repr(b) for b in _BACKENDS)})")
    check_layernorm_args(x, weight, bias, eps, add, residual)
    if backend == "reference":
        return layernorm_ref(x, weight, bias, eps=eps, add=add, residual=residual)
    return layernorm_op(x, weight, bias, float(eps), add, residual)


__all__ = ["layernorm", "layernorm_ref", "layernorm_op", "check_layernorm_args"]
