"""Drop-in MotionBERT (DSTformer) and HoT-MotionBERT on pyengine's fused ops (SPEC.md §7; docs/motionbert.md).

Subclasses of the eager references (same constructor, published parameter names, same outputs). The activations
stay in row buffers ``[B*F*J, C]`` with rows ordered (sample, frame, joint) for the whole network: spatial
attention reads each frame's J joint rows, temporal attention reads the same buffer through strides (joints as the
group axis, frames as the sequence), so no ``(b f) n c <-> (b n) f c`` transposes are ever materialised.

One dual-stream layer (both streams read the same x, with separate weights):

* the ST stream's first sub-layer (norm1_s + attn_s.qkv) and the TS stream's (norm1_t + attn_t.qkv) read the same
  rows: ONE grouped ``ln_linear`` launch (G=2, ``in_cols=[0, 0]``) gives both ``[M, 3C]`` projections side by side;
  the ST half is read as spatial q/k/v views, the TS half as temporal ones;
* every other sub-layer is the usual pre-norm pair per stream: proj + residual, LN + fc1 + GELU, fc2 + residual,
  LN + qkv (the two streams are separate tensors from their first proj on, and ``ln_linear`` has no output
  offset that would let them share one ``[M, 2C]`` buffer, so these run as G=1 launches);
* fusion: ``ts_attn`` (Linear 2C -> 2 on ``cat(x_st, x_ts)``) is two N=2 launches, ``x_st @ W[:, :C]^T + b`` then
  ``x_ts @ W[:, C:]^T`` added as the residual, so the concat never exists; the 2-way softmax is
  ``sigmoid(l0 - l1)`` and the weighted sum is ``lerp(x_ts, x_st, a0)``: torch glue (a fused GEMM epilogue would
  remove these launches; ``ln_linear`` has none for it yet).

The final ``norm`` is the LN prologue of ``pre_logits.fc`` (DSTformer) or of TRA's k/v projection (HoT); tanh is
torch glue after ``pre_logits.fc`` (``ln_linear``'s epilogue knows GELU only). HoT's TPC, gather + pos_embed_token
and TRA follow the HoT-MixSTE drop-in (pyengine/nn/mixste.py).
"""
import torch

from ..models import motionbert as ref
from ._common import Fused, stack
from .mixste import _spatial_views, _temporal_views


class MotionBERT(Fused, ref.MotionBERT):
    """Fused DSTformer; add ``backend=`` ("auto", "triton", "cuda", "cpp", "reference")."""

    report_parts = {"joints_embed; head": ("ln_linear",),
                    "per layer: both streams' first LN+QKV (one grouped launch), 4 attentions (2 spatial over the "
                    "joints, 2 temporal over the frames, strided), proj/MLP per stream": ("ln_linear", "attention"),
                    "fusion logits (ts_attn as two N=2 GEMMs, no concat)": ("ln_linear",),
                    "final norm as the LN prologue of pre_logits.fc (DSTformer) or of TRA's k/v (HoT)": ("ln_linear",)}
    report_glue = "pos_embed + temp_embed add, fusion sigmoid(l0 - l1) and lerp per layer, tanh after pre_logits.fc"

    def __init__(self, *args, backend="auto", allow_tf32=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_backend(backend, allow_tf32)

    # -- pieces ------------------------------------------------------------------------------------------------
    def _embed(self, ops, x):
        """joints_embed GEMM, then ``+ pos_embed + temp_embed`` as one add of a cached ``[F, J, C]`` pattern."""
        B, F, J, _ = x.shape
        C = self.dim_feat
        emb = self.joints_embed
        X = ops.ln_linear(x.to(self.pos_embed.dtype).contiguous().view(B * F * J, self.dim_in), emb.weight[None],
                          emb.bias[None])
        pattern = self.cached(f"embed{F}", [self.pos_embed, self.temp_embed],
                              lambda: self.pos_embed[0][None] + self.temp_embed[0, :F])
        return (X.view(B, F, J, C) + pattern).view(B * F * J, C)

    def _sublayer_pair(self, ops, X, blk, kind, views):
        """``X + attn_kind(norm1_kind(X))`` then ``X + mlp_kind(norm2_kind(X))`` on rows ``X [M, C]``."""
        attn = getattr(blk, f"attn_{kind}")
        n1 = getattr(blk, f"norm1_{kind}")
        qkv = ops.ln_linear(X, attn.qkv.weight[None], attn.qkv.bias[None], ln_weight=n1.weight[None],
                            ln_bias=n1.bias[None], eps=n1.eps)
        return self._attn_out_and_mlp(ops, X, qkv, blk, kind, views)

    def _attn_out_and_mlp(self, ops, X, qkv, blk, kind, views):
        """Attention on the projection ``qkv`` (``[M, 3C]``, possibly a column slice), proj + residual, MLP."""
        C = X.shape[1]
        attn, n2, mlp = getattr(blk, f"attn_{kind}"), getattr(blk, f"norm2_{kind}"), getattr(blk, f"mlp_{kind}")
        o = ops.attention(*views(qkv))
        X = ops.ln_linear(o.reshape(-1, C), attn.proj.weight[None], attn.proj.bias[None], residual=X)
        h = ops.ln_linear(X, mlp.fc1.weight[None], mlp.fc1.bias[None], ln_weight=n2.weight[None],
                          ln_bias=n2.bias[None], eps=n2.eps, activation="gelu")
        return ops.ln_linear(h, mlp.fc2.weight[None], mlp.fc2.bias[None], residual=X)

    def _layer(self, ops, X, i, B, F, J):
        """Dual-stream layer i on rows ``X [B*F*J, C]`` (see the module docstring for the launch plan)."""
        C, H = self.dim_feat, self.num_heads
        st, ts = self.blocks_st[i], self.blocks_ts[i]
        s_views, t_views = _spatial_views(B, F, J, H), _temporal_views(B, F, J, H)
        # Both streams' first LN + QKV read X: one grouped launch, [M, 6C] = [ST spatial qkv | TS temporal qkv].
        w = self.cached(f"qkv_w{i}", [st.attn_s.qkv.weight, ts.attn_t.qkv.weight],
                        lambda: stack(st.attn_s.qkv.weight, ts.attn_t.qkv.weight))
        b = self.cached(f"qkv_b{i}", [st.attn_s.qkv.bias, ts.attn_t.qkv.bias],
                        lambda: stack(st.attn_s.qkv.bias, ts.attn_t.qkv.bias))
        g = self.cached(f"ln1_w{i}", [st.norm1_s.weight, ts.norm1_t.weight],
                        lambda: stack(st.norm1_s.weight, ts.norm1_t.weight))
        beta = self.cached(f"ln1_b{i}", [st.norm1_s.bias, ts.norm1_t.bias],
                           lambda: stack(st.norm1_s.bias, ts.norm1_t.bias))
        qkv = ops.ln_linear(X, w, b, ln_weight=g, ln_bias=beta, eps=st.norm1_s.eps, in_cols=[0, 0])
        # ST: spatial attention + spatial MLP, then temporal attention + temporal MLP.
        x_st = self._attn_out_and_mlp(ops, X, qkv[:, :3 * C], st, "s", s_views)
        x_st = self._sublayer_pair(ops, x_st, st, "t", t_views)
        # TS: temporal first, then spatial.
        x_ts = self._attn_out_and_mlp(ops, X, qkv[:, 3 * C:], ts, "t", t_views)
        x_ts = self._sublayer_pair(ops, x_ts, ts, "s", s_views)
        return self._fuse(ops, x_st, x_ts, i)

    def _fuse(self, ops, x_st, x_ts, i):
        """``softmax(ts_attn(cat(x_st, x_ts)))``-weighted sum, logit 0 weighting the ST stream."""
        C, lin = self.dim_feat, self.ts_attn[i]
        halves = self.cached(f"fuse_w{i}", [lin.weight],  # [2 (ST / TS columns), 2 logits, C]
                             lambda: lin.weight.view(2, 2, C).transpose(0, 1).contiguous())
        logits = ops.ln_linear(x_st, halves[0:1], lin.bias[None])
        logits = ops.ln_linear(x_ts, halves[1:2], None, residual=logits)  # [M, 2], no concat of the streams
        # softmax over two logits = (sigmoid(l0 - l1), 1 - that); glue a fused GEMM epilogue would remove.
        # The sigmoid runs in fp32 at least (fp16 / bf16 logits are upcast; fp64 stays fp64).
        diff = logits[:, 0:1] - logits[:, 1:2]
        a_st = torch.sigmoid(diff.to(torch.promote_types(diff.dtype, torch.float32))).to(x_st.dtype)
        return torch.lerp(x_ts, x_st, a_st)  # a_st * x_st + (1 - a_st) * x_ts

    def _encode(self, ops, x, index=None):
        """Embedding and every layer; returns rows ``[B*T*J, C]`` before the final norm, the index, (B, T, J)."""
        B, F, J, _ = x.shape
        X = self._embed(ops, x)
        for i in range(self.depth):
            X, F, index = self._before_layer(ops, X, i, B, F, J, index)
            X = self._layer(ops, X, i, B, F, J)
        return X, index, (B, F, J)

    def _before_layer(self, ops, X, i, B, F, J, index):
        return X, F, index

    def _pre_logits(self, ops, X, norm=True):
        """``tanh(pre_logits.fc(norm(X)))`` (norm as the GEMM's LN prologue) -> ``[M, R]``."""
        fc = self.pre_logits.fc
        ln = dict(ln_weight=self.norm.weight[None], ln_bias=self.norm.bias[None], eps=self.norm.eps) if norm else {}
        return torch.tanh(ops.ln_linear(X, fc.weight[None], fc.bias[None], **ln))  # tanh: torch glue

    def _head(self, ops, R):
        return ops.ln_linear(R, self.head.weight[None], self.head.bias[None])

    def forward(self, x, return_rep=False):
        self._check_inputs(x)
        ops = self.ops_for(x)
        X, _, (B, F, J) = self._encode(ops, x)
        R = self._pre_logits(ops, X)
        if return_rep:
            return R.view(B, F, J, self.dim_rep).to(x.dtype)
        return self._head(ops, R).view(B, F, J, self.dim_out).to(x.dtype)


class HoTMotionBERT(MotionBERT, ref.HoTMotionBERT):
    """Fused HoT-MotionBERT (TPC + TRA): ``forward(x, index=None, return_index=False)`` as the reference."""

    report_parts = {"DPC-kNN selection on the per-joint mean": ("tpc_select",),
                    "gather + pos_embed_token add": ("gather_tokens",),
                    "TRA (queries projected once, shared)": ("ln_linear", "attention")}
    report_glue = ("pos_embed + temp_embed add, fusion sigmoid(l0 - l1) and lerp per layer, per-frame mean for the "
                   "selection features, x_token residual add, tanh after pre_logits.fc")

    def __init__(self, *args, backend="auto", allow_tf32=False, **kwargs):
        ref.HoTMotionBERT.__init__(self, *args, **kwargs)
        self.set_backend(backend, allow_tf32)

    def _before_layer(self, ops, X, i, B, F, J, index):
        """At layer ``layer_index``: DPC-kNN on the per-frame joint mean, then one gather of the kept frames of all
        joints with pos_embed_token (by rank) added in the same launch."""
        if i != self.layer_index:
            return X, F, index
        C = self.dim_feat
        if index is None:
            index = ops.tpc_select(X.view(B, F, J, C).mean(dim=2), self.token_num, tie_break=self.tie_break,
                                   noise=self.noise)
        add = self.cached("tok", [self.pos_embed_token],  # row r of the gathered [B, T, J*C]: pos_embed_token[r]
                          lambda: self.pos_embed_token[0][:, None, :].expand(-1, J, -1).reshape(self.token_num, -1))
        X = ops.gather_tokens(X.view(B, F, J * C), index, add).view(-1, C)
        return X, self.token_num, index

    def _recover(self, ops, X, B, T, J):
        """TRA on ``norm(X)`` (the norm is the k/v GEMM's LN prologue): ``x_token + CA(x_token, X, X)`` for all
        maxlen frames, rows (b, f, j). The queries are shared by every sample and joint: projected once, read with
        stride 0."""
        ca, C, Fm = self.cross_attention, self.dim_feat, self.maxlen
        H = ca.num_heads
        q = ops.ln_linear(self.x_token[0], ca.linear_q.weight[None], ca.linear_q.bias[None])  # [maxlen, C]
        w = self.cached("kv_w", [ca.linear_k.weight, ca.linear_v.weight],
                        lambda: stack(ca.linear_k.weight, ca.linear_v.weight))
        b = self.cached("kv_b", [ca.linear_k.bias, ca.linear_v.bias],
                        lambda: stack(ca.linear_k.bias, ca.linear_v.bias))
        g = self.cached("kv_ln_w", [self.norm.weight], lambda: stack(self.norm.weight, self.norm.weight))
        beta = self.cached("kv_ln_b", [self.norm.bias], lambda: stack(self.norm.bias, self.norm.bias))
        kv = ops.ln_linear(X, w, b, ln_weight=g, ln_bias=beta, eps=self.norm.eps, in_cols=[0, 0])  # [B*T*J, 2C]
        t = kv.view(B, T, J, 2, H, -1).permute(3, 0, 2, 1, 4, 5)  # [2, B, J, T, H, D]
        qv = q.view(1, 1, Fm, H, -1).expand(B, J, Fm, H, C // H)
        o = ops.attention(qv, t[0], t[1])  # [B, maxlen, J, H, D]
        out = ops.ln_linear(o.reshape(B * Fm * J, C), ca.proj.weight[None], ca.proj.bias[None])
        return (out.view(B, Fm, J, C) + self.x_token[0][None, :, None, :]).view(B * Fm * J, C)  # residual: glue

    def forward(self, x, index=None, return_index=False):
        self._check_inputs(x, index)
        ops = self.ops_for(x)
        X, index, (B, T, J) = self._encode(ops, x, index)
        X = self._recover(ops, X, B, T, J)
        out = self._head(ops, self._pre_logits(ops, X, norm=False))
        out = out.view(B, self.maxlen, J, self.dim_out).to(x.dtype)
        return (out, index) if return_index else out


__all__ = ["MotionBERT", "HoTMotionBERT"]
