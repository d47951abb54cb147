"""``pyengine::ln_linear``: grouped linear layers with a fused LayerNorm prologue and bias / GELU / residual
epilogue -- the GEMM workhorse of the MHFormer and MixSTE blocks::

    y[:, g*N:(g+1)*N] = act(LN_g(x[:, c_g:c_g+K]) @ weight[g].T + bias[g]) + residual[:, g*N:(g+1)*N]

* :func:`ln_linear_ref`: plain PyTorch, the spec (``F.layer_norm`` -> ``F.linear`` -> ``F.gelu`` -> add, per group).
* :func:`ln_linear`: validates every argument and runs ``backend`` ("reference" or "triton").
* ``ln_linear_op``: the registered op (Triton kernel :mod:`pyengine.kernels.ln_linear`), with a fake impl and an
  autograd formula. The backward is written out in plain PyTorch (:func:`ln_linear_backward`, fp32 math, fp64 for
  fp64 inputs): it recomputes the normalised input and pre-activation from the saved inputs instead of saving
  them, and is checked against finite differences by ``gradcheck``.

See docs/ln_linear.md.
"""
import math
from typing import List, Optional

import torch
import torch.nn.functional as F

from ..backends import BackendUnavailableError, device_guard, eager_inference, op_backend
from ._checks import (ROW_DTYPES, check_eps, check_in_cols, check_like, check_rows, check_tensor,
                      check_unit_column_stride, default_in_cols)
from .group_layernorm import group_layernorm_rows, group_layernorm_runs
from .onednn_linear import onednn_linear_prepacked

ACTIVATIONS = ("none", "gelu")
DTYPES = ROW_DTYPES
_BACKENDS = ("reference", "triton")


def ln_linear_ref(x, weight, bias=None, *, ln_weight=None, ln_bias=None, eps=1e-6, in_cols=None,
                  activation="none", residual=None):
    """The eager composition: per group ``F.layer_norm`` (if ``ln_weight``) -> ``F.linear`` -> ``F.gelu`` (if
    ``activation == "gelu"``), concatenated over groups, then ``+ residual``."""
    G, N, K = weight.shape
    if in_cols is None:
        in_cols = default_in_cols(x.shape[1], G, K)
    outs = []
    for g, c in enumerate(in_cols):
        a = x[:, c:c + K]
        if ln_weight is not None:
            a = F.layer_norm(a, (K,), ln_weight[g], ln_bias[g], eps)
        z = F.linear(a, weight[g], None if bias is None else bias[g])
        if activation == "gelu":
            z = F.gelu(z)
        outs.append(z)
    y = torch.cat(outs, dim=1)
    return y if residual is None else y + residual


def ln_linear_aten(x, weight, bias=None, *, ln_weight=None, ln_bias=None, eps=1e-6, in_cols=None,
                   activation="none", residual=None, gemm="aten", packs=None, split=False, compute_dtype=None,
                   casts=None, out=None):
    """The ``cpp`` / ``cuda`` backends' dense path: the reference's math on vendor kernels with less glue (fp32 on
    CPU is GEMM-bound, so glue is all a composition can lose): one group, or groups that read the same columns
    without a LayerNorm, are ONE GEMM over the ``[G*N, K]`` view of the stacked weight (no concat: a concat of one
    tensor is a full copy). Several groups on different columns run one GEMM per group: at inference each writes
    its column block of one output (ATen's addmm directly; oneDNN, which has no out=, through its residual add or
    a copy), else (autograd, compile, export) a concat.

    ``gemm``: ``"aten"`` (``F.linear``: cuBLAS / MKL; GELU a separate pass; at inference the residual + bias are
    summed into the output and the GEMM accumulates onto them, :func:`addmm_into`) or
    ``"onednn"`` (CPU: :func:`pyengine.ops.onednn_linear.onednn_linear`, one oneDNN primitive per GEMM with the
    bias, GELU and residual in its epilogue; ``packs``, a :class:`~pyengine.ops.onednn_linear.PackedWeights`,
    supplies prepacked bf16 weights at inference). A strided residual (a column block), or a result that goes to
    a column block of a bigger output, is added after the GEMM instead of in its epilogue (which would copy the
    strided residual first; the add writes the column block in the same pass).

    ``split``: return the G group outputs ``[M, N]`` as a list (views where one GEMM or one buffer holds them)
    instead of ``[M, G*N]``, for consumers that read each group on its own (attention): no concat.

    ``out`` (inference only): write the result into this ``[M, G*N]`` tensor (any row stride, e.g. a column block
    of the caller's buffer; it may be ``residual`` itself, an in-place residual update) and return it.

    ``compute_dtype`` (mixed precision; None: x's dtype): the GEMM's operand dtype. The LayerNorm runs in x's dtype
    (its statistics and output), then the GEMM input, weight and bias are rounded to ``compute_dtype`` (weights
    through ``casts``, a :class:`WeightCasts`, once per weight version at inference) and the GEMM runs in it; a
    residual of another dtype is added after the GEMM, in the residual's dtype, which is then the output's (a
    float32 residual stream stays float32); without a residual the output is in ``compute_dtype``."""
    G, N, K = weight.shape
    cd = x.dtype if compute_dtype is None else compute_dtype
    if in_cols is None:
        in_cols = default_in_cols(x.shape[1], G, K)
    if gemm not in ("aten", "onednn"):
        raise ValueError(f"gemm: expected 'aten' or 'onednn', got {gemm!r}")
    if G == 1 or (ln_weight is None and len(set(in_cols)) == 1):
        groups = [(in_cols[0], weight.reshape(G * N, K), None if bias is None else bias.reshape(G * N),
                   None if ln_weight is None else (ln_weight[0], ln_bias[0]), residual)]
    else:
        groups = [(c, weight[g], None if bias is None else bias[g],
                   None if ln_weight is None else (ln_weight[g], ln_bias[g]),
                   None if residual is None else residual[:, g * N:(g + 1) * N]) for g, c in enumerate(in_cols)]
    inference = eager_inference(x, weight, bias, ln_weight, ln_bias, residual)
    if out is not None and not inference:
        raise ValueError("out: only at inference (out= has no derivative, and compile / export trace no writes); "
                         "got a call that records autograd or traces")
    # Several groups at inference: each group's result goes to its column block of one output instead of a concat
    # copying every group once more. Autograd (out= has no derivative) and compile / export concatenate.
    into = out
    if into is None and len(groups) > 1 and inference and not split:
        into = x.new_empty(x.shape[0], G * N, dtype=cd if residual is None else residual.dtype)
    # LayerNorm at CPU inference: pyengine's C++ kernel reads the strided column block in place (F.layer_norm copies
    # it to contiguous first) and is faster in bf16 (measured 1.4x on 1296 x 1536); elsewhere F.layer_norm.
    cpp_ln = ln_weight is not None and inference and x.device.type == "cpu" and group_layernorm_runs(x)
    outs = []
    for g, (c, w, b, ln, res) in enumerate(groups):
        a = x[:, c:c + K]
        if ln is not None:
            a = (group_layernorm_rows(a, ln[0], ln[1], eps) if cpp_ln else F.layer_norm(a, (K,), ln[0], ln[1], eps))
        if cd != a.dtype:
            a = a.to(cd)
        if cd != w.dtype:
            w, b = _cast(w, cd, casts, inference), None if b is None else _cast(b, cd, casts, inference)
        dst = None if into is None else into[:, g * N:(g + 1) * N] if len(groups) > 1 else into
        # ATen's addmm writes a column block in place, the residual and bias summed into it first
        if dst is not None and gemm == "aten" and dst.dtype == cd and (res is None or res.dtype == cd):
            addmm_into(dst, a, w, b, activation, res)
            continue
        # The residual is added after the GEMM where it has another dtype (mixed precision: in the residual's), where
        # the result goes to a column block, and on oneDNN where it is strided (a column block itself: the epilogue
        # would copy it first). The same rule with and without autograd, so both give the same bits.
        late = res is not None and (res.dtype != cd or (gemm == "onednn" and not res.is_contiguous()))
        if dst is not None or late:
            y = _gemm(a, w, b, activation, gemm, packs, inference)
            if dst is None:
                outs.append(torch.add(res, y))
            elif res is None:
                dst.copy_(y)
            else:
                torch.add(res, y, out=dst)
            continue
        if gemm == "onednn":
            outs.append(onednn_linear_prepacked(a, w, b, activation, res, packs))
            continue
        if res is not None and activation == "none" and inference:
            outs.append(addmm_into(torch.empty_like(res, memory_format=torch.contiguous_format), a, w, b,
                                   activation, res))
            continue
        y = F.linear(a, w, b)
        if activation == "gelu":
            y = F.gelu(y)
        outs.append(y if res is None else y.add_(res))  # y is a fresh tensor: in place is safe
    if into is not None:
        return into
    if split:
        return list(outs[0].split(N, dim=1)) if len(outs) == 1 else outs
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def _gemm(a, w, b, activation, gemm, packs, inference):
    """``act(a @ w.T + b)`` as a fresh tensor, on oneDNN or ATen."""
    if gemm == "onednn":
        return onednn_linear_prepacked(a, w, b, activation, None, packs)
    y = F.linear(a, w, b)
    if activation == "gelu":
        y = torch.ops.aten.gelu_(y) if inference else F.gelu(y)
    return y


def _cast(t, dtype, casts, inference):
    """``t`` in ``dtype``: from ``casts`` at inference (made once per weight version), else ``t.to(dtype)``, which
    autograd differentiates back to the parameter."""
    if casts is not None and inference:
        return casts.get(t, dtype)
    return t.to(dtype)


class WeightCasts:
    """Copies of weights in a GEMM's compute dtype (mixed precision: ``ln_linear_aten(compute_dtype=...)``), made
    once per weight version. An entry is keyed by the weight's (data pointer, shape, strides, dtype) and remembers
    its ``_version``, so an in-place update (``load_state_dict``, ``copy_``) recasts it; the entry holds the
    weight, so its memory cannot be reused by another tensor while cached. The cache is cleared when it reaches
    ``MAX_ENTRIES``. Inference tensors (no version counter) are cast on every call."""

    MAX_ENTRIES = 1024

    def __init__(self):
        self._casts = {}

    def get(self, t, dtype):
        if t.is_inference():
            return t.to(dtype)
        key = (t.data_ptr(), tuple(t.shape), tuple(t.stride()), t.dtype, dtype)
        hit = self._casts.get(key)
        if hit is None or hit[0] != t._version:
            if len(self._casts) >= self.MAX_ENTRIES:
                self._casts.clear()
            hit = self._casts[key] = (t._version, t, t.detach().to(dtype).contiguous())
        return hit[2]

    def __len__(self):
        return len(self._casts)


def addmm_into(y, a, w, b, activation, res):
    """``y = act(a @ w.T + b) + res`` written into ``y`` (any row stride; inference only: out= has no derivative).
    Without an activation the residual and bias are summed into ``y`` first and the GEMM accumulates onto them
    (``beta = 1``): one pass over ``y`` fewer than GEMM-then-add, with as many roundings (residual + bias, then
    the GEMM onto it; eager rounds GEMM + bias, then adds the residual)."""
    if res is not None and activation == "none":
        if b is None:
            y.copy_(res)
        else:
            torch.add(res, b, out=y)
        return torch.addmm(y, a, w.t(), out=y)
    if b is None:
        torch.mm(a, w.t(), out=y)
    else:
        torch.addmm(b, a, w.t(), out=y)
    if activation == "gelu":
        torch.ops.aten.gelu_(y)
    return y if res is None else y.add_(res)


def check_ln_linear_args(x, weight, bias, ln_weight, ln_bias, eps, in_cols, activation, residual) -> List[int]:
    """Raise a clear ``TypeError`` / ``ValueError`` for a bad argument; return the effective ``in_cols``."""
    check_rows(x, "[M, K_x]")
    check_tensor("weight", weight)
    if weight.dim() != 3:
        raise ValueError(f"weight: expected a 3-D tensor [G, N, K] (per group nn.Linear [out, in]), "
                         f"got shape {list(weight.shape)}")
    G, N, K = weight.shape
    M = x.shape[0]
    if G < 1 or K < 1:
        raise ValueError(f"weight: expected G >= 1 groups and K >= 1 input features, got shape {list(weight.shape)}")
    if K > 1 and weight.stride(2) != 1:
        raise ValueError(f"weight: expected unit stride along K, got strides {list(weight.stride())}")
    expected = {"weight": None, "bias": [G, N], "ln_weight": [G, K], "ln_bias": [G, K], "residual": [M, G * N]}
    for name, t in (("weight", weight), ("bias", bias), ("ln_weight", ln_weight), ("ln_bias", ln_bias),
                    ("residual", residual)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor or None, got {type(t).__name__}")
        if expected[name] is not None and list(t.shape) != expected[name]:
            raise ValueError(f"{name}: expected shape {expected[name]}, got {list(t.shape)}")
        check_like(name, t, x)
    if (ln_weight is None) != (ln_bias is None):
        raise ValueError("ln_weight / ln_bias: pass both (LayerNorm prologue) or neither, got "
                         f"ln_weight={'a tensor' if ln_weight is not None else None}, "
                         f"ln_bias={'a tensor' if ln_bias is not None else None}")
    if residual is not None:
        check_unit_column_stride("residual", residual)
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")
    check_eps(eps)
    return check_in_cols(in_cols, G, K, x.shape[1])


@torch.library.custom_op("pyengine::ln_linear", mutates_args=())
def ln_linear_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                 ln_weight: Optional[torch.Tensor], ln_bias: Optional[torch.Tensor],
                 residual: Optional[torch.Tensor], in_cols: List[int], eps: float, activation: str,
                 allow_tf32: bool) -> torch.Tensor:
    """Raw op (arguments already validated by :func:`ln_linear`): the Triton kernel. Returns ``[M, G*N]``."""
    from pyengine.kernels.ln_linear import launch_ln_linear
    with device_guard(x):
        return launch_ln_linear(x, weight, bias, ln_weight, ln_bias, residual, in_cols, eps, activation,
                                allow_tf32)


@ln_linear_op.register_fake
def _(x, weight, bias, ln_weight, ln_bias, residual, in_cols, eps, activation, allow_tf32):
    return x.new_empty((x.shape[0], weight.shape[0] * weight.shape[1]))


def ln_linear_backward(grad, x, weight, bias, ln_weight, ln_bias, in_cols, eps, activation):
    """Gradients ``(dx, dweight, dbias, dln_weight, dln_bias)`` of the op (``dresidual`` is ``grad`` itself), in
    fp32 (fp64 for fp64 inputs), returned in the input dtype. Recomputes LN and the pre-activation per group."""
    G, N, K = weight.shape
    cd = torch.float64 if x.dtype == torch.float64 else torch.float32
    grad = grad.to(cd)
    dx = torch.zeros(x.shape, dtype=cd, device=x.device)
    dw, db, dlnw, dlnb = [], [], [], []
    for g, c in enumerate(in_cols):
        xs = x[:, c:c + K].to(cd)
        if ln_weight is not None:
            gamma = ln_weight[g].to(cd)
            xc = xs - xs.mean(dim=1, keepdim=True)
            rstd = torch.rsqrt(xc.pow(2).mean(dim=1, keepdim=True) + eps)
            xhat = xc * rstd
            a = xhat * gamma + ln_bias[g].to(cd)
        else:
            a = xs
        w = weight[g].to(cd)
        dz = grad[:, g * N:(g + 1) * N]
        if activation == "gelu":  # d/dz [z * Phi(z)] = Phi(z) + z * phi(z)
            z = a @ w.T
            if bias is not None:
                z = z + bias[g].to(cd)
            dz = dz * (0.5 * (1.0 + torch.erf(z * 0.5 ** 0.5)) + z * torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi))
        db.append(dz.sum(dim=0))
        dw.append(dz.T @ a)
        da = dz @ w
        if ln_weight is not None:
            dlnw.append((da * xhat).sum(dim=0))
            dlnb.append(da.sum(dim=0))
            dxhat = da * gamma
            da = rstd * (dxhat - dxhat.mean(dim=1, keepdim=True) - xhat * (dxhat * xhat).mean(dim=1, keepdim=True))
        dx[:, c:c + K] += da
    dt = x.dtype
    return (dx.to(dt), torch.stack(dw).to(dt), None if bias is None else torch.stack(db).to(dt),
            None if ln_weight is None else torch.stack(dlnw).to(dt),
            None if ln_weight is None else torch.stack(dlnb).to(dt))


def _setup_context(ctx, inputs, output):
    x, weight, bias, ln_weight, ln_bias, residual, in_cols, eps, activation, allow_tf32 = inputs
    ctx.save_for_backward(x, weight, bias, ln_weight, ln_bias)
    ctx.in_cols, ctx.eps, ctx.activation = list(in_cols), eps, activation
    ctx.has_residual = residual is not None


def _backward(ctx, grad):
    x, weight, bias, ln_weight, ln_bias = ctx.saved_tensors
    dx, dw, db, dlnw, dlnb = ln_linear_backward(grad, x, weight, bias, ln_weight, ln_bias, ctx.in_cols, ctx.eps,
                                                ctx.activation)
    dres = grad if ctx.has_residual else None
    return dx, dw, db, dlnw, dlnb, dres, None, None, None, None


ln_linear_op.register_autograd(_backward, setup_context=_setup_context)


def ln_linear(x, weight, bias=None, *, ln_weight=None, ln_bias=None, eps=1e-6, in_cols=None, activation="none",
              residual=None, allow_tf32=False, backend="auto"):
    """``[M, G*N]`` in x's dtype: group g's columns are
    ``act(LN_g(x[:, c_g:c_g+K]) @ weight[g].T + bias[g]) + residual[:, g*N:(g+1)*N]``.

    x ``[M, K_x]`` (unit column stride, any row stride), weight ``[G, N, K]``, bias ``[G, N]``, ln_weight / ln_bias
    ``[G, K]`` (both or neither), residual ``[M, G*N]`` (unit column stride), in_cols G column offsets (default
    ``[g*K]`` if ``K_x == G*K``, ``[0]*G`` if ``K_x == K``), activation "none" or "gelu" (exact erf GELU).
    fp32 / fp16 / bf16 (fp64 on the reference, and on Triton under the interpreter), fp32 accumulation and LN
    statistics; fp32 products are exact-fp32 ("ieee") unless ``allow_tf32``. ``backend``: "reference" (eager
    PyTorch), "triton" or ``"auto"`` (the default: Triton on CUDA or under the interpreter, else the reference;
    ``pyengine.backends.op_backend``)."""
    backend = op_backend("ln_linear", backend, x)
    if backend not in _BACKENDS:
        raise BackendUnavailableError(f"ln_linear: backend={backend!r} is not available (available: "
                                      f"{', '.join(repr(b) for b in _BACKENDS)})")
    in_cols = check_ln_linear_args(x, weight, bias, ln_weight, ln_bias, eps, in_cols, activation, residual)
    if backend == "reference":
        return ln_linear_ref(x, weight, bias, ln_weight=ln_weight, ln_bias=ln_bias, eps=eps, in_cols=in_cols,
                             activation=activation, residual=residual)
    return ln_linear_op(x, weight, bias, ln_weight, ln_bias, residual, in_cols, float(eps), activation,
                        bool(allow_tf32))


__all__ = ["ln_linear", "ln_linear_ref", "WeightCasts", "ln_linear_op", "ln_linear_backward", "check_ln_linear_args"]
