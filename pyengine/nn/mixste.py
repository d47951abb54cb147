"""Drop-in MixSTE, TPC-MixSTE and HoT-MixSTE on pyengine's fused ops (SPEC.md §2).

Subclasses of the eager references (same constructor, published parameter names, same outputs). The activations
stay in one row buffer ``[B*F*J, C]`` with rows ordered (sample, frame, joint) for the whole network: the spatial
attention reads each frame's 17 joint rows, and the temporal attention reads the same buffer through strides
(joints as the group axis, frames as the sequence), so the published ``(b f) n c <-> (b n) f c`` transposes
between blocks disappear. ``Spatial_norm`` fuses the temporal positional embedding add (block 0); TPC gathers
the kept frames of all joints in one launch with HoT's ``pos_embed_token`` add fused; TRA projects its learned
queries once per call (they are shared by every sample and joint) and reads them with batch stride 0.
"""
import torch

from ..models import mixste as ref
from ..models import layers as ref_layers
from ._common import Fused, block_forward, fuse_children, stack
from .layers import Block, CrossAttention

MAPPING = ((ref_layers.Block, Block), (ref_layers.CrossAttention, CrossAttention))


def _spatial_views(B, F, J, H):
    def views(qkv):  # sequences: every (sample, frame); tokens: the J joints
        t = qkv.view(B * F, J, 3, H, -1).permute(2, 0, 1, 3, 4)  # [3, B*F, J, H, D]
        return t[0][:, None], t[1][:, None], t[2][:, None]
    return views


def _temporal_views(B, F, J, H):
    def views(qkv):  # sequences: every (sample, joint) -> group axis J; tokens: the F frames
        t = qkv.view(B, F, J, 3, H, -1).permute(3, 0, 2, 1, 4, 5)  # [3, B, J, F, H, D]
        return t[0], t[1], t[2]
    return views


class MixSTE(Fused, ref.MixSTE):
    """Fused MixSTE; add ``backend=`` ("auto", "triton", "cuda", "cpp", "reference")."""

    report_parts = {"embedding, head": ("ln_linear",),
                    "Spatial_norm (+ temporal pos_embed), Temporal_norm": ("layernorm",)}
    report_glue = "Spatial_pos_embed add after the 2 -> C embedding"

    def __init__(self, *args, backend="auto", allow_tf32=False, **kwargs):
        super().__init__(*args, **kwargs)
        fuse_children(self, MAPPING)
        self.set_backend(backend, allow_tf32)

    def _encode(self, x, index=None, center=None):
        self._check_inputs(x, index)
        B, F, J, _ = x.shape
        C, H = self.channel, self.STEblocks[0].attn.num_heads
        ops = self.ops_for(x)
        emb = self.Spatial_patch_to_embedding
        X = ops.ln_linear(x.to(self.Spatial_pos_embed.dtype).contiguous().view(B * F * J, 2), emb.weight[None],
                          emb.bias[None])
        X = (X.view(B * F, J, C) + self.Spatial_pos_embed).view(B * F * J, C)
        for i in range(self.depth):
            if self.token_num is not None and i == self.layer_index:
                if index is None:  # DPC-kNN on the per-frame mean over joints
                    index = ops.tpc_select(X.view(B, F, J, C).mean(dim=2), self.token_num, center=center,
                                           tie_break=self.tie_break, noise=self.noise)
                X = ops.gather_tokens(X.view(B, F, J * C), index, self._token_add(J)).view(-1, C)
                F = self.token_num
            X = block_forward(self, ops, X, self.STEblocks[i], _spatial_views(B, F, J, H))
            add = None
            if i == 0:  # Temporal_pos_embed[f] for row (b, f, j): a [F*J, C] pattern repeating every F*J rows
                add = self.cached("tpos", [self.Temporal_pos_embed],
                                  lambda: self.Temporal_pos_embed[0].repeat_interleave(J, dim=0))
            X = ops.layernorm(X, self.Spatial_norm.weight, self.Spatial_norm.bias, eps=self.Spatial_norm.eps,
                              add=add)
            X = block_forward(self, ops, X, self.TTEblocks[i], _temporal_views(B, F, J, H))
            X = ops.layernorm(X, self.Temporal_norm.weight, self.Temporal_norm.bias, eps=self.Temporal_norm.eps)
        return X, index, (B, F, J)

    def _token_add(self, J):
        return None

    def _head(self, ops, X):
        ln, lin = self.head[0], self.head[1]
        return ops.ln_linear(X, lin.weight[None], lin.bias[None], ln_weight=ln.weight[None],
                             ln_bias=ln.bias[None], eps=ln.eps)

    def forward(self, x):
        X, _, (B, F, J) = self._encode(x)
        return self._head(self.ops_for(x), X).view(B, F, J, 3).to(x.dtype)


class TPCMixSTE(MixSTE, ref.TPCMixSTE):
    """Fused TPC-MixSTE: ``forward(x, index=None) -> (out [B, token_num, J, 3], index)``."""

    report_parts = {"DPC-kNN selection on the per-joint mean": ("tpc_select",), "gather": ("gather_tokens",)}

    def __init__(self, *args, backend="auto", allow_tf32=False, **kwargs):
        ref.TPCMixSTE.__init__(self, *args, **kwargs)
        fuse_children(self, MAPPING)
        self.set_backend(backend, allow_tf32)

    def forward(self, x, index=None):
        X, index, (B, F, J) = self._encode(x, index, center=(self.frames - 1) // 2)
        return self._head(self.ops_for(x), X).view(B, F, J, 3).to(x.dtype), index


class HoTMixSTE(MixSTE, ref.HoTMixSTE):
    """Fused HoT-MixSTE (TPC + TRA): ``forward(x, index=None, return_index=False)`` as the reference."""

    report_parts = {"DPC-kNN selection on the per-joint mean": ("tpc_select",),
                    "gather + pos_embed_token add": ("gather_tokens",),
                    "TRA (queries projected once, shared)": ("ln_linear", "attention")}
    report_glue = "per-frame mean for the selection features, x_token residual add"

    def __init__(self, *args, backend="auto", allow_tf32=False, **kwargs):
        ref.HoTMixSTE.__init__(self, *args, **kwargs)
        fuse_children(self, MAPPING)
        self.set_backend(backend, allow_tf32)

    def _token_add(self, J):
        # pos_embed_token[r] added to every joint of the r-th kept frame: a [keep, J*C] row pattern
        return self.cached("tok", [self.pos_embed_token],
                           lambda: self.pos_embed_token[0][:, None, :].expand(-1, J, -1).reshape(
                               self.token_num, -1))

    def _recover(self, ops, X, B, T, J):
        """TRA: ``x_token + CA(x_token, X, X)`` for all F frames, rows (b, f, j)."""
        ca, C, F = self.cross_attention, self.channel, self.frames
        H = ca.num_heads
        q = ops.ln_linear(self.x_token[0], ca.linear_q.weight[None], ca.linear_q.bias[None])  # once: [F, C]
        w = self.cached("kv_w", [ca.linear_k.weight, ca.linear_v.weight],
                        lambda: stack(ca.linear_k.weight, ca.linear_v.weight))
        b = self.cached("kv_b", [ca.linear_k.bias, ca.linear_v.bias],
                        lambda: stack(ca.linear_k.bias, ca.linear_v.bias))
        kv = ops.ln_linear(X, w, b, in_cols=[0, 0])  # [B*T*J, 2C]
        t = kv.view(B, T, J, 2, H, -1).permute(3, 0, 2, 1, 4, 5)  # [2, B, J, T, H, D]
        qv = q.view(1, 1, F, H, -1).expand(B, J, F, H, q.shape[1] // H)  # shared queries: stride 0
        o = ops.attention(qv, t[0], t[1])  # [B, F, J, H, D]
        out = ops.ln_linear(o.reshape(B * F * J, C), ca.proj.weight[None], ca.proj.bias[None])
        return (out.view(B, F, J, C) + self.x_token[0][None, :, None, :]).view(B * F * J, C)

    def forward(self, x, index=None, return_index=False):
        X, index, (B, T, J) = self._encode(x, index)
        ops = self.ops_for(x)
        X = self._recover(ops, X, B, T, J)
        out = self._head(ops, X).view(B, self.frames, J, 3).to(x.dtype)
        return (out, index) if return_index else out


__all__ = ["MixSTE", "TPCMixSTE", "HoTMixSTE"]
