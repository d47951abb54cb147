"""Drop-in MHFormer modules on pyengine's fused ops (SPEC.md §1).

Each class subclasses its eager reference (``pyengine.models``), so it has exactly the published parameter names
and loads the published state_dicts; only ``forward`` changes. Inside the model the three hypotheses live in one
``[B*F, 3C]`` row buffer (hypothesis k in columns ``[kC, (k+1)C)``): the SHR self-attentions run as one grouped
launch per stage over all three, the hypothesis-mixing MLP reads the buffer without a concat, and the TPC
selection and gather see ``cat(x1, x2, x3)`` for free.

Launches per SHR block: LN+QKV (3 hypotheses, one launch), attention (one), proj+residual (one), LN+fc1+GELU
(one), fc2+residual (one); on ATen / oneDNN (one GEMM per hypothesis anyway) one hypothesis at a time, LN+QKV,
attention, proj+residual written into its column block of the next buffer. CHI: three sequential steps of LN+QKV,
attention, proj+residual, then the MLP. MHG encoder block: LN+QKV, attention (34 tokens, head_dim F/9 padded in-kernel), proj+residual,
LN+fc1+GELU, fc2+residual; the encoder's input LN + pos_embed and its final LN + outer residual are one
LayerNorm launch each. The F=27 BatchNorm embeddings and the regression BatchNorm are folded into the
neighbouring linear layers (eval mode).
"""
import torch

from ..backends import eager_inference
from ..models import mhformer as ref
from ..models import layers as ref_layers
from ._common import Fused, block_forward, fold_batchnorm_after, fold_batchnorm_before, fuse_children, stack
from .layers import Block


def _hyp_views(qkv, B, N, G, H):
    """``[B*N, G*3C]`` (group-major, then q/k/v, then heads) -> q, k, v ``[B, G, N, H, D]`` views."""
    D = qkv.shape[1] // (G * 3 * H)
    t = qkv.view(B, N, G, 3, H, D).permute(3, 0, 2, 1, 4, 5)
    return t[0], t[1], t[2]


class MHGEncoder(Fused, ref.MHGEncoder):
    """Fused MHG encoder over the 34 (joint, coordinate) tokens of width F."""

    report_parts = {"4 blocks over 34 tokens": ("ln_linear", "attention")}

    def encode_residual(self, x, norm, gemm_dtype=None):
        """``x + self(norm(x))`` for rows ``x [B*34, F]`` (the cascade step of MHFormer's MHG); ``gemm_dtype``: the
        GEMMs' dtype where it is not x's (mixed precision, ``dispatch.Ops``)."""
        ops = self.ops_for(x, gemm_dtype)
        T = self.pos_embed.shape[1]
        B = x.shape[0] // T
        H = self.blocks[0].attn.num_heads
        R = ops.layernorm(x, norm.weight, norm.bias, eps=norm.eps, add=self.pos_embed[0])

        def views(qkv):  # one group; sequences are the B samples, 34 tokens each
            return _hyp_views(qkv, B, T, 1, H)

        for blk in self.blocks:
            R = block_forward(self, ops, R, blk, views)
        return ops.layernorm(R, self.norm.weight, self.norm.bias, eps=self.norm.eps, residual=x)

    def forward(self, x):
        """Published signature: ``x [B, 34, F] -> [B, 34, F]`` (pos_embed, blocks, final LN)."""
        B, T, Fw = x.shape
        ops = self.ops_for(x)
        H = self.blocks[0].attn.num_heads
        R = (x + self.pos_embed).reshape(B * T, Fw)
        for blk in self.blocks:
            R = block_forward(self, ops, R, blk, lambda qkv: _hyp_views(qkv, B, T, 1, H))
        return ops.layernorm(R, self.norm.weight, self.norm.bias, eps=self.norm.eps).view(B, T, Fw)


class SHRBlock(Fused, ref.SHRBlock):
    """Fused single-hypothesis refining block."""

    report_parts = {"3 self-attentions grouped + mixing MLP": ("ln_linear", "attention")}

    def forward_packed(self, X, B, N):
        """``X [B*N, 3C]`` -> ``[B*N, 3C]``."""
        ops = self.ops_for(X)
        a = (self.attn_1, self.attn_2, self.attn_3)
        n = (self.norm1_1, self.norm1_2, self.norm1_3)
        H = a[0].num_heads
        C = X.shape[1] // 3
        w_qkv = self.cached("w_qkv", [m.qkv.weight for m in a], lambda: stack(*(m.qkv.weight for m in a)))
        b_qkv = self.cached("b_qkv", [m.qkv.bias for m in a], lambda: stack(*(m.qkv.bias for m in a)))
        ln_w = self.cached("ln_w", [m.weight for m in n], lambda: stack(*(m.weight for m in n)))
        ln_b = self.cached("ln_b", [m.bias for m in n], lambda: stack(*(m.bias for m in n)))
        w_p = self.cached("w_proj", [m.proj.weight for m in a], lambda: stack(*(m.proj.weight for m in a)))
        b_p = self.cached("b_proj", [m.proj.bias for m in a], lambda: stack(*(m.proj.bias for m in a)))
        if ops.impl["ln_linear"] in ("aten", "onednn"):
            # One GEMM per hypothesis anyway, so one hypothesis at a time: LN + QKV, attention, proj + residual,
            # each reading what the step before wrote while it is still in cache (measured on a 2-core AMX Xeon:
            # the GEMMs of the whole-model run took ~1.8x their time alone, waiting on memory). At inference the
            # proj results go straight to their column blocks of the next buffer (no concat).
            Y = X.new_empty(X.shape) if eager_inference(X, *self.parameters()) else None
            ys = []
            for g in range(3):
                cols = slice(g * C, (g + 1) * C)
                qkv = ops.ln_linear(X, w_qkv[g:g + 1], b_qkv[g:g + 1], ln_weight=ln_w[g:g + 1],
                                    ln_bias=ln_b[g:g + 1], eps=n[g].eps, in_cols=[g * C])  # [M, 3C]
                o = ops.attention(*_hyp_views(qkv, B, N, 1, H))  # [B, N, 1, H, D]
                ys.append(ops.ln_linear(o.view(B * N, C), w_p[g:g + 1], b_p[g:g + 1], residual=X[:, cols],
                                        out=None if Y is None else Y[:, cols]))
            X = Y if Y is not None else torch.cat(ys, dim=1)
        else:  # one QKV launch and one attention launch over the three hypotheses
            qkv = ops.ln_linear(X, w_qkv, b_qkv, ln_weight=ln_w, ln_bias=ln_b, eps=n[0].eps)  # [M, 3 * 3C]
            o = ops.attention(*_hyp_views(qkv, B, N, 3, H))  # [B, N, 3, H, D]
            X = ops.ln_linear(o.view(B * N, 3 * C), w_p, b_p, residual=X)
        return _mixing_mlp(ops, X, self)

    def forward(self, x_1, x_2, x_3):
        B, N, C = x_1.shape
        X = self.forward_packed(torch.cat([x_1, x_2, x_3], dim=2).reshape(B * N, 3 * C), B, N)
        return ref.split3(X.view(B, N, 3 * C))


def _mixing_mlp(ops, X, blk):
    """``X + fc2(gelu(fc1(LN(X))))`` over the 3C-wide hypothesis rows (two launches)."""
    h = ops.ln_linear(X, blk.mlp.fc1.weight[None], blk.mlp.fc1.bias[None], ln_weight=blk.norm2.weight[None],
                      ln_bias=blk.norm2.bias[None], eps=blk.norm2.eps, activation="gelu")
    return ops.ln_linear(h, blk.mlp.fc2.weight[None], blk.mlp.fc2.bias[None], residual=X)


# CHI step k: (hypothesis updated, sources of q, k, v) — SPEC.md §1.6, 0-based.
CHI_STEPS = ((0, (1, 2, 0)), (1, (0, 2, 1)), (2, (0, 1, 2)))


class CHIBlock(Fused, ref.CHIBlock):
    """Fused cross-hypothesis interaction block: three sequential steps (each reads the hypotheses the steps
    before it updated), three launches each, then the mixing MLP."""

    report_parts = {"3 sequential cross-attention steps + mixing MLP": ("ln_linear", "attention")}

    def forward_packed(self, X, B, N):
        """``X [B*N, 3C]`` -> ``[B*N, 3C]``. At inference X's columns are updated in place, step by step (X is the
        caller's scratch buffer: the fused model's SHR output, or ``forward``'s concat); under autograd, compile or
        export each step builds a new buffer instead."""
        ops = self.ops_for(X)
        C = X.shape[1] // 3
        in_place = eager_inference(X, *self.parameters())
        for a, srcs in CHI_STEPS:
            attn = getattr(self, f"attn_{a + 1}")
            norms = [getattr(self, f"norm3_{a + 1}{j + 1}") for j in range(3)]
            lins = (attn.linear_q, attn.linear_k, attn.linear_v)
            w = self.cached(f"w{a}", [m.weight for m in lins], lambda: stack(*(m.weight for m in lins)))
            b = self.cached(f"b{a}", [m.bias for m in lins], lambda: stack(*(m.bias for m in lins)))
            lw = self.cached(f"lw{a}", [m.weight for m in norms], lambda: stack(*(m.weight for m in norms)))
            lb = self.cached(f"lb{a}", [m.bias for m in norms], lambda: stack(*(m.bias for m in norms)))
            qkv = ops.ln_linear_groups(X, w, b, ln_weight=lw, ln_bias=lb, eps=norms[0].eps,
                                       in_cols=[s * C for s in srcs])  # q, k, v of this step, [M, C] each
            q, k, v = (t.view(B, 1, N, attn.num_heads, -1) for t in qkv)  # [B, 1, N, H, D] (rows (b, n))
            o = ops.attention(q, k, v)  # [B, N, 1, H, D]
            cols = X[:, a * C:(a + 1) * C]
            if in_place:  # the residual update written into its column block, instead of a concat of all three
                ops.ln_linear(o.view(B * N, C), attn.proj.weight[None], attn.proj.bias[None], residual=cols,
                              out=cols)
            else:
                xa = ops.ln_linear(o.view(B * N, C), attn.proj.weight[None], attn.proj.bias[None], residual=cols)
                X = torch.cat([xa if i == a else X[:, i * C:(i + 1) * C] for i in range(3)], dim=1)
        return _mixing_mlp(ops, X, self)

    def forward(self, x_1, x_2, x_3):
        B, N, C = x_1.shape
        X = self.forward_packed(torch.cat([x_1, x_2, x_3], dim=2).reshape(B * N, 3 * C), B, N)
        return ref.split3(X.view(B, N, 3 * C))


MAPPING = ((ref.MHGEncoder, MHGEncoder), (ref.SHRBlock, SHRBlock), (ref.CHIBlock, CHIBlock),
           (ref_layers.Block, Block))


class MHFormer(Fused, ref.MHFormer):
    """Fused MHFormer: same constructor, state_dict and outputs as :class:`pyengine.models.MHFormer`; add
    ``backend=`` ("auto", "triton", "cuda", "cpp", "reference")."""

    report_parts = {"MHG input LN + pos_embed, final LN + residual": ("layernorm",),
                    "embeddings (3 hypotheses, one launch; F=27 BatchNorm folded)": ("ln_linear",),
                    "hypothesis LN + regression (BatchNorm folded)": ("ln_linear",)}
    report_glue = ("input transpose (34 x F per window), embedding stack, pos_embed_k add, CHI column writes "
                   "(in place at inference, torch.cat under autograd); F=27 embedding ReLU")
    # Set by pyengine.load for a bf16 model that keeps its MHG in float32 (arch.ArchSpec.fp32_modules_bf16_gemms):
    # the MHG's GEMMs then run in this dtype on CPU, while the rest of the model is in it.
    fp32_gemm_dtype = None

    def __init__(self, *args, backend="auto", allow_tf32=False, **kwargs):
        super().__init__(*args, **kwargs)
        fuse_children(self, MAPPING)
        self.set_backend(backend, allow_tf32)

    def _embed(self, ops, x1, x2, x3, B, F):
        """Three per-frame linears 34 -> C (F == 27: Conv -> BatchNorm -> ReLU, BN folded) in one launch, plus the
        hypotheses' pos_embed: the ``[B*F, 3C]`` hypothesis buffer."""
        T = x1.shape[0] // B
        E = torch.stack([x1.view(B, T, F), x2.view(B, T, F), x3.view(B, T, F)], dim=1)  # [B, 3, 34, F]
        E = E.to(self.regression[1].weight.dtype)  # an fp32 MHG in a bf16 model (pyengine.load's policy)
        # rows (b, f); hypothesis k's 34 inputs at columns [34k, 34k + 34)
        E = E.permute(0, 3, 1, 2).contiguous().view(B * F, 3 * T)
        embs = (self.embedding_1, self.embedding_2, self.embedding_3)
        th = self.Transformer_hypothesis
        P = self.cached("pos", [th.pos_embed_1, th.pos_embed_2, th.pos_embed_3],
                        lambda: torch.cat([th.pos_embed_1, th.pos_embed_2, th.pos_embed_3], dim=2))  # [1, F, 3C]
        if self.frames <= 27:  # Sequential(conv, BN, ReLU, Dropout)
            if self.training:
                raise NotImplementedError(
                    "MHFormer-27's embedding BatchNorm in training mode needs batch statistics; the fused model "
                    "folds it (eval mode only). Train the reference model (pyengine.models.MHFormer) instead.")
            srcs = [t for e in embs for t in (e[0].weight, e[0].bias, e[1].weight, e[1].bias,
                                              e[1].running_mean, e[1].running_var)]

            def build():
                folded = [fold_batchnorm_before(e[1], e[0].weight[:, :, 0], e[0].bias) for e in embs]
                return stack(*(w for w, _ in folded)), stack(*(b for _, b in folded))
            w, b = self.cached("emb", srcs, build)
            return (torch.relu(ops.ln_linear(E, w, b)).view(B, F, -1) + P).view(B * F, -1)
        w = self.cached("emb_w", [e.weight for e in embs], lambda: stack(*(e.weight[:, :, 0] for e in embs)))
        b = self.cached("emb_b", [e.bias for e in embs], lambda: stack(*(e.bias for e in embs)))
        if ops.impl["ln_linear"] in ("aten", "onednn") and eager_inference(E, w, b, P):
            # each hypothesis' GEMM result + its pos_embed written straight into its column block (no concat)
            ys = ops.ln_linear_groups(E, w, b)
            C = w.shape[1]
            X = E.new_empty(B * F, 3 * C)
            for k, y in enumerate(ys):
                cols = slice(k * C, (k + 1) * C)
                torch.add(y.view(B, F, C), P[:, :, cols], out=X.view(B, F, 3 * C)[:, :, cols])
            return X
        return (ops.ln_linear(E, w, b).view(B, F, -1) + P).view(B * F, -1)

    def _regress(self, ops, X):
        """Hypothesis LN(3C) -> BatchNorm(3C) (folded) -> per-frame linear 3C -> 3J, one launch."""
        bn, conv = self.regression[0], self.regression[1]
        if self.training:
            raise NotImplementedError(
                "MHFormer's regression BatchNorm in training mode needs batch statistics; the fused model folds "
                "it (eval mode only). Train the reference model (pyengine.models.MHFormer) instead.")
        norm = self.Transformer_hypothesis.norm
        w, b = self.cached("reg", [bn.weight, bn.bias, bn.running_mean, bn.running_var, conv.weight, conv.bias],
                           lambda: fold_batchnorm_after(bn, conv.weight[:, :, 0], conv.bias))
        return ops.ln_linear(X, w[None], b[None], ln_weight=norm.weight[None], ln_bias=norm.bias[None],
                             eps=norm.eps)

    def _forward(self, x, index=None):
        self._check_inputs(x, index)
        in_dtype = x.dtype
        B, F, J, _ = x.shape
        ops = self.ops_for(x)
        x0 = x.to(self.norm_1.weight.dtype).reshape(B, F, 2 * J).transpose(1, 2).contiguous().view(B * 2 * J, F)
        mhg = self.fp32_gemm_dtype  # mixed precision only while the model is in that dtype and the MHG is not
        if mhg is None or x.device.type != "cpu" or self.regression[1].weight.dtype != mhg or x0.dtype == mhg:
            mhg = None
        x1 = self.Transformer_encoder_1.encode_residual(x0, self.norm_1, mhg)
        x2 = self.Transformer_encoder_2.encode_residual(x1, self.norm_2, mhg)
        x3 = self.Transformer_encoder_3.encode_residual(x2, self.norm_3, mhg)
        X = self._embed(ops, x1, x2, x3, B, F)  # [B*F, 3C], the hypotheses' pos_embed added
        th = self.Transformer_hypothesis
        N = F
        for i, blk in enumerate(th.SHR_blocks):
            if th.token_num is not None and i == th.layer_index:
                if index is None:  # DPC-kNN on cat(x1, x2, x3) = the buffer itself; centre frame always kept
                    index = ops.tpc_select(X.view(B, N, -1), th.token_num, center=th.center,
                                           tie_break=th.tie_break, noise=th.noise)
                X = ops.gather_tokens(X.view(B, N, -1), index).reshape(B * th.token_num, -1)
                N = th.token_num
            X = blk.forward_packed(X, B, N)
        X = th.CHI_blocks[0].forward_packed(X, B, N)
        out = self._regress(ops, X).view(B, N, self.out_joints, 3)
        return out.to(in_dtype), index


class TPCMHFormer(MHFormer, ref.TPCMHFormer):
    """Fused TPC-MHFormer: ``forward(x, index=None) -> (out [B, token_num, J, 3], index)``."""

    report_parts = {"DPC-kNN selection on cat(x1, x2, x3)": ("tpc_select",),
                    "gather of the kept frames (3 hypotheses at once)": ("gather_tokens",)}

    def __init__(self, *args, backend="auto", allow_tf32=False, **kwargs):
        ref.TPCMHFormer.__init__(self, *args, **kwargs)
        fuse_children(self, MAPPING)
        self.set_backend(backend, allow_tf32)

    def forward(self, x, index=None):
        return self._forward(x, index)
