"""Drop-in transformer pieces on the fused ops: ``Block`` (pre-norm attention + MLP block, as used by the MHG
encoders and MixSTE's spatial / temporal blocks) and ``CrossAttention`` (CHI / HoT's TRA). Subclasses of the
eager ``pyengine.models.layers`` classes: same parameters and outputs."""
from ..models import layers as ref
from ._common import Fused, block_forward, stack


class Block(Fused, ref.Block):
    """``x [B, N, C]``: ``x + attn(LN1(x))`` then ``x + mlp(LN2(x))`` in five launches."""

    report_parts = {"LN+QKV, attention, proj+residual, LN+fc1+GELU, fc2+residual": ("ln_linear", "attention")}

    def forward(self, x):
        B, N, C = x.shape
        H = self.attn.num_heads

        def views(qkv):
            t = qkv.view(B, N, 3, H, -1).permute(2, 0, 1, 3, 4)  # [3, B, N, H, D]
            return t[0][:, None], t[1][:, None], t[2][:, None]

        X = x.reshape(B * N, C)
        return block_forward(self, self.ops_for(x), X, self, views).view(B, N, C)


class CrossAttention(Fused, ref.CrossAttention):
    """``proj(attn(linear_q(x_q), linear_k(x_k), linear_v(x_v)))``; k and v share one launch when
    ``x_k is x_v`` (HoT's TRA)."""

    report_parts = {"q / kv projections, attention, proj": ("ln_linear", "attention")}

    def forward(self, x_q, x_k, x_v):
        B, N, C = x_q.shape
        M, H = x_k.shape[1], self.num_heads
        ops = self.ops_for(x_q)
        q = ops.ln_linear(x_q.reshape(B * N, C), self.linear_q.weight[None], self.linear_q.bias[None])
        q = q.view(B, N, H, -1)[:, None]
        if x_k is x_v:
            w = self.cached("kv_w", [self.linear_k.weight, self.linear_v.weight],
                            lambda: stack(self.linear_k.weight, self.linear_v.weight))
            b = self.cached("kv_b", [self.linear_k.bias, self.linear_v.bias],
                            lambda: stack(self.linear_k.bias, self.linear_v.bias))
            kv = ops.ln_linear(x_k.reshape(B * M, C), w, b, in_cols=[0, 0]).view(B, M, 2, H, -1)
            k, v = kv[:, :, 0][:, None], kv[:, :, 1][:, None]
        else:
            k = ops.ln_linear(x_k.reshape(B * M, C), self.linear_k.weight[None], self.linear_k.bias[None])
            v = ops.ln_linear(x_v.reshape(B * M, C), self.linear_v.weight[None], self.linear_v.bias[None])
            k, v = k.view(B, M, H, -1)[:, None], v.view(B, M, H, -1)[:, None]
        o = ops.attention(q, k, v)  # [B, N, 1, H, D]
        return ops.ln_linear(o.reshape(B * N, C), self.proj.weight[None], self.proj.bias[None]).view(B, N, C)
