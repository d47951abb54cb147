"""Plumbing shared by the drop-in modules (every model in :mod:`pyengine.nn`, the SUSA family included): backend
resolution per device, stacked-weight caches, and the fused pre-norm transformer block used by the MHG encoders and
MixSTE."""
import torch
import torch.nn.functional as F
from torch import nn

from ..backends import eager_inference
from ..cuda_graphs import tensor_state
from ..dispatch import Ops
from ..ops.group_layernorm import group_layernorm_rows
from ..ops.ln_linear import addmm_into
from .report import report


class Fused(nn.Module):
    """Mixin for drop-in modules. ``backend`` is resolved against the input's device on first use (cached per
    device) by ``pyengine.dispatch.resolve``, the one table of op x backend -> kernel; the module calls its ops
    through the resulting ``dispatch.Ops``. ``set_backend`` changes it for this module and every fused module below
    it. ``report_parts`` (class attribute): what each part of the forward does -> the ops it runs, for report()."""

    backend = "auto"
    allow_tf32 = False

    def ops_for(self, x: torch.Tensor, gemm_dtype=None) -> Ops:
        """The ops for input ``x``; ``gemm_dtype``: mixed precision, GEMMs in that dtype (``dispatch.Ops``)."""
        cache = self.__dict__.setdefault("_ops_cache", {})
        # The compute dtype is the module's (inputs are cast to it inside the forward; an fp32 pose may enter a
        # bf16 model): auto's CPU GEMM is chosen per dtype, and an fp64 model runs SDPA attention.
        dtype = next((p.dtype for p in self.parameters() if p.is_floating_point()), x.dtype)
        key = (self.backend, x.device, dtype, self.allow_tf32, gemm_dtype)
        if key not in cache:
            cache[key] = Ops(self.backend, x.device, self.allow_tf32, dtype, gemm_dtype)
        return cache[key]

    def set_backend(self, backend: str, allow_tf32: bool = False):
        for m in self.modules():
            if isinstance(m, Fused):
                m.backend, m.allow_tf32 = backend, allow_tf32
                m.__dict__["_ops_cache"] = {}
        return self

    def report(self):
        """What runs where: see :func:`pyengine.nn.report.report`."""
        return report(self)

    def cached(self, name: str, sources, build):
        """``build()`` (e.g. stacked or BatchNorm-folded weights), recomputed when any source tensor changes.

        With autograd recording, weights are rebuilt every call so gradients flow to the published parameters;
        at inference they are built once per parameter version (``Tensor._version`` counts in-place updates,
        e.g. ``load_state_dict`` or an optimizer step)."""
        if torch.is_grad_enabled() and any(s.requires_grad for s in sources):
            return build()
        return version_cached(self, name, sources, build)


def version_cached(owner: nn.Module, name: str, sources, build):
    """``build()`` run under no_grad and kept on ``owner`` as ``name``, rebuilt when any source changes: a tensor's
    data pointer, ``_version`` (in-place updates), dtype or device, or a non-tensor source's value (e.g. an eps).

    An inference-mode source tensor has no version counter, so an in-place update of it could not be seen: such
    sources are never cached (``build()`` runs on every call; inside a CUDA graph the rebuild is captured, so a
    replay still reads the current values)."""
    tensors = [s for s in sources if isinstance(s, torch.Tensor)]
    if any(t.is_inference() for t in tensors):
        with torch.no_grad():
            return build()
    cache = owner.__dict__.setdefault("_weight_cache", {})
    key = tuple(tensor_state(s) if isinstance(s, torch.Tensor) else s for s in sources)
    hit = cache.get(name)
    if hit is None or hit[0] != key:
        with torch.no_grad():
            hit = cache[name] = (key, build())
    return hit[1]


def fuse_children(parent, mapping):
    """Turn reference submodules into their fused subclasses in place (same objects, parameters and names:
    a fused subclass adds no state, it only replaces ``forward``)."""
    for name, child in list(parent.named_children()):
        for ref_cls, fused_cls in mapping:
            if type(child) is ref_cls:
                child.__class__ = fused_cls
                break
        fuse_children(child, mapping)


def stack(*tensors):
    return torch.stack(tensors, dim=0)


def block_forward(module: Fused, ops: Ops, X: torch.Tensor, blk, views):
    """Pre-norm transformer block (``layers.Block``) on rows ``X [M, C]``:
    ``X + proj(attn(qkv(LN1(X))))`` then ``X + fc2(gelu(fc1(LN2(X))))``, four fused GEMM launches and one
    attention launch. ``views(qkv)`` turns the fused ``[M, 3C]`` projection into the ``[B, G, N, H, D]`` q/k/v
    views of this block's sequences, in an order whose output ``[B, N, G, H, D]`` has X's row order."""
    if ops.resolved_blocks and eager_inference(X) and not torch.is_grad_enabled():
        return _block_forward_resolved(ops, X, blk, views)
    C = X.shape[1]
    a, m = blk.attn, blk.mlp
    qkv = ops.ln_linear(X, a.qkv.weight[None], None if a.qkv.bias is None else a.qkv.bias[None],
                        ln_weight=blk.norm1.weight[None], ln_bias=blk.norm1.bias[None], eps=blk.norm1.eps)
    o = ops.attention(*views(qkv))
    X = ops.ln_linear(o.reshape(-1, C), a.proj.weight[None], a.proj.bias[None], residual=X)
    h = ops.ln_linear(X, m.fc1.weight[None], m.fc1.bias[None], ln_weight=blk.norm2.weight[None],
                      ln_bias=blk.norm2.bias[None], eps=blk.norm2.eps, activation="gelu")
    return ops.ln_linear(h, m.fc2.weight[None], m.fc2.bias[None], residual=X)


def _block_forward_resolved(ops: Ops, X: torch.Tensor, blk, views):
    """:func:`block_forward` at CPU inference on oneDNN or ATen: the same kernels on the same operands in the same
    order as ``ln_linear_aten`` runs them (bit-identical; tests/ops/test_onednn_linear.py), with each GEMM's operands
    (bf16 casts, prepacked weights) resolved once per block and weight version instead of per call. That per-call
    Python was ~40% of a small block's time (MHFormer's MHG at F = 351, 68 rows: 2.55 -> 1.6 ms per 4-block
    encoder in bf16)."""
    C = X.shape[1]
    a, m = blk.attn, blk.mlp
    lins = (a.qkv, a.proj, m.fc1, m.fc2)
    state = tuple(tensor_state(t) for lin in lins for t in (lin.weight, lin.bias) if t is not None)
    hit = ops.block_plans.get(id(blk))
    if hit is None or hit[0] != state:
        hit = ops.block_plans[id(blk)] = (state, {})
    plan = hit[1]
    cd = ops.gemm_dtype or X.dtype
    onednn = ops.impl["ln_linear"] == "onednn"
    mk = torch.ops.mkldnn

    def operands(i, x):
        if i not in plan:  # resolved at the first use, with its real input (the prepacking choice times it)
            lin = lins[i]
            plan[i] = ops.gemm_operands(lin.weight, lin.bias, x) if onednn else (lin.weight, lin.bias)
        return plan[i]

    def ln(x, norm):
        y = group_layernorm_rows(x, norm.weight, norm.bias, norm.eps)
        return y if y.dtype == cd else y.to(cd)

    def linear(x, i, act="none"):
        w, b = operands(i, x)
        if onednn:
            return mk._linear_pointwise(x, w, b, act, [], "none" if act == "gelu" else "")  # "none": erf GELU
        y = F.linear(x, w, b)
        return F.gelu(y) if act == "gelu" else y

    def residual_add(x, i, res):  # as ln_linear_aten: fused in the epilogue where it fuses it, else added after
        if not onednn:
            w, b = operands(i, x)
            return addmm_into(torch.empty_like(res, memory_format=torch.contiguous_format), x, w, b, "none", res)
        if res.dtype == cd and res.is_contiguous():
            return mk._linear_pointwise.binary(x, res, *operands(i, x), "add")
        return torch.add(res, linear(x, i))

    o = ops.attention(*views(linear(ln(X, blk.norm1), 0)))
    X = residual_add(o.reshape(-1, C), 1, X)
    return residual_add(linear(ln(X, blk.norm2), 2, "gelu"), 3, X)


def fold_batchnorm_after(bn: nn.BatchNorm1d, weight: torch.Tensor, bias: torch.Tensor):
    """``W' , b'`` with ``W' x + b' == W bn(x) + b`` (eval-mode BatchNorm before a linear ``[N, K]``), in fp64."""
    w, b = weight.double(), bias.double()
    s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    t = bn.bias.double() - bn.running_mean.double() * s
    return (w * s).to(weight.dtype), (b + w @ t).to(bias.dtype)


def fold_batchnorm_before(bn: nn.BatchNorm1d, weight: torch.Tensor, bias: torch.Tensor):
    """``W', b'`` with ``W' x + b' == bn(W x + b)`` (eval-mode BatchNorm after a linear ``[N, K]``), in fp64."""
    w, b = weight.double(), bias.double()
    s = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return (w * s[:, None]).to(weight.dtype), ((b - bn.running_mean.double()) * s + bn.bias.double()).to(bias.dtype)
