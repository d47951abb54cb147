"""MHFormer and TPC-MHFormer: eager references (SPEC.md §1 and §2).

Module and parameter names are the published ones (``norm_1``, ``Transformer_encoder_1``, ``embedding_1``,
``Transformer_hypothesis.SHR_blocks.0.attn_1.qkv`` ...), so a published state_dict loads with ``strict=True``.
Every hyperparameter is a constructor argument, so tests build tiny versions.
"""
import torch
from torch import nn

from .layers import Attention, Block, CrossAttention, Mlp, check_heads, check_pose_input
from .tpc import check_index, check_tpc_config, dpc_knn_select


class MHGEncoder(nn.Module):
    """One MHG encoder (published ``Transformer`` of ``trans.py``) over the 2J (joint, coordinate) tokens.

    ``x + pos_embed`` -> ``depth`` pre-norm blocks (LN eps 1e-6) -> final LN; token width is the frame count.
    """

    def __init__(self, depth: int, embed_dim: int, mlp_hidden_dim: int, heads: int, length: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, length, embed_dim))
        self.blocks = nn.ModuleList(Block(embed_dim, heads, mlp_hidden_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)

    def forward(self, x):
        x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


def split3(x):
    c = x.shape[-1] // 3
    return x[..., :c], x[..., c:2 * c], x[..., 2 * c:]


class SHRBlock(nn.Module):
    """Single-hypothesis refining block: three independent self-attentions, then the hypothesis-mixing MLP."""

    def __init__(self, dim: int, heads: int, mlp_hidden_dim: int):
        super().__init__()
        for k in (1, 2, 3):
            setattr(self, f"norm1_{k}", nn.LayerNorm(dim, eps=1e-6))
            setattr(self, f"attn_{k}", Attention(dim, heads))
        self.norm2 = nn.LayerNorm(dim * 3, eps=1e-6)
        self.mlp = Mlp(dim * 3, mlp_hidden_dim)

    def forward(self, x_1, x_2, x_3):
        x_1 = x_1 + self.attn_1(self.norm1_1(x_1))
        x_2 = x_2 + self.attn_2(self.norm1_2(x_2))
        x_3 = x_3 + self.attn_3(self.norm1_3(x_3))
        x = torch.cat([x_1, x_2, x_3], dim=2)
        x = x + self.mlp(self.norm2(x))
        return split3(x)


class CHIBlock(nn.Module):
    """Cross-hypothesis interaction block. The three cross-attentions are sequential: each line reads the
    hypotheses already updated by the lines above it (SPEC.md §1.6), so they cannot be batched together."""

    def __init__(self, dim: int, heads: int, mlp_hidden_dim: int):
        super().__init__()
        for a in (1, 2, 3):
            for b in (1, 2, 3):
                setattr(self, f"norm3_{a}{b}", nn.LayerNorm(dim, eps=1e-6))
        for k in (1, 2, 3):
            setattr(self, f"attn_{k}", CrossAttention(dim, heads))
        self.norm2 = nn.LayerNorm(dim * 3, eps=1e-6)
        self.mlp = Mlp(dim * 3, mlp_hidden_dim)

    def forward(self, x_1, x_2, x_3):
        x_1 = x_1 + self.attn_1(self.norm3_11(x_2), self.norm3_12(x_3), self.norm3_13(x_1))
        x_2 = x_2 + self.attn_2(self.norm3_21(x_1), self.norm3_22(x_3), self.norm3_23(x_2))
        x_3 = x_3 + self.attn_3(self.norm3_31(x_1), self.norm3_32(x_2), self.norm3_33(x_3))
        x = torch.cat([x_1, x_2, x_3], dim=2)
        x = x + self.mlp(self.norm2(x))
        return split3(x)


class HypothesisTransformer(nn.Module):
    """``Transformer_hypothesis``: per-hypothesis positional embeddings, ``layers - 1`` SHR blocks, one CHI
    block, LN(3C). With ``token_num`` set, DPC-kNN pruning runs before SHR block ``layer_index`` (TPC)."""

    def __init__(self, layers, dim, mlp_hidden_dim, heads, length, token_num=None, layer_index=1,
                 tie_break="index", noise=None):
        super().__init__()
        for k in (1, 2, 3):
            setattr(self, f"pos_embed_{k}", nn.Parameter(torch.zeros(1, length, dim)))
        self.SHR_blocks = nn.ModuleList(SHRBlock(dim, heads, mlp_hidden_dim) for _ in range(layers - 1))
        self.CHI_blocks = nn.ModuleList([CHIBlock(dim, heads, mlp_hidden_dim)])
        self.norm = nn.LayerNorm(dim * 3, eps=1e-6)
        self.center = (length - 1) // 2
        self.token_num, self.layer_index = token_num, layer_index
        self.tie_break, self.noise = tie_break, noise

    def forward(self, x_1, x_2, x_3, index=None):
        b = x_1.shape[0]
        x_1, x_2, x_3 = x_1 + self.pos_embed_1, x_2 + self.pos_embed_2, x_3 + self.pos_embed_3
        for i, blk in enumerate(self.SHR_blocks):
            if self.token_num is not None and i == self.layer_index:
                if index is None:
                    # Seq2frame: the centre frame is excluded from the ranking and always kept.
                    x_knn = torch.cat([x_1, x_2, x_3], dim=2)
                    index = dpc_knn_select(x_knn, self.token_num, center=self.center,
                                           tie_break=self.tie_break, noise=self.noise)
                batch = torch.arange(b, device=x_1.device).unsqueeze(-1)
                x_1, x_2, x_3 = x_1[batch, index], x_2[batch, index], x_3[batch, index]
            x_1, x_2, x_3 = blk(x_1, x_2, x_3)
        x_1, x_2, x_3 = self.CHI_blocks[0](x_1, x_2, x_3)
        return self.norm(torch.cat([x_1, x_2, x_3], dim=2)), index


def embedding(in_features, channel, with_bn):
    conv = nn.Conv1d(in_features, channel, kernel_size=1)
    if not with_bn:
        return conv
    # Keys embedding_k.0.* (conv) and .1.* (BatchNorm); ReLU and Dropout hold no parameters.
    return nn.Sequential(conv, nn.BatchNorm1d(channel, momentum=0.1), nn.ReLU(), nn.Dropout(0.25))


class MHFormer(nn.Module):
    """Multi-hypothesis transformer, seq2frame: ``[B, F, J, 2] -> [B, F, J, 3]`` (evaluation keeps frame
    ``(F-1)//2``). ``frames <= 27`` uses the Conv1d -> BatchNorm -> ReLU embedding, as the published code does
    (its condition is ``frames > 27`` for the plain Conv1d)."""

    arch = "mhformer"

    def __init__(self, frames=351, channel=512, d_hid=1024, layers=3, n_joints=17, out_joints=17,
                 heads=8, mhg_heads=9, mhg_depth=4, _tpc=None):
        super().__init__()
        token_num, layer_index, tie_break, noise = (_tpc or (None, 1, "index", None))
        if layers < 2:
            raise ValueError(f"layers: expected >= 2 (layers - 1 SHR blocks and one CHI block), got {layers}")
        check_heads(frames, mhg_heads, f"MHG encoder (frames={frames}, mhg_heads={mhg_heads})")
        check_heads(channel, heads, f"SHR/CHI attention (channel={channel}, heads={heads})")
        if token_num is not None:  # pruning runs before an SHR block
            check_tpc_config(token_num, frames, layer_index, 0, layers - 2, tie_break,
                             f"SHR blocks, layers={layers}")
        self.frames, self.channel, self.d_hid, self.layers = frames, channel, d_hid, layers
        self.n_joints, self.out_joints = n_joints, out_joints
        self.heads, self.mhg_heads, self.mhg_depth = heads, mhg_heads, mhg_depth
        with_bn = frames <= 27
        self.embedding_1 = embedding(2 * n_joints, channel, with_bn)
        self.embedding_2 = embedding(2 * n_joints, channel, with_bn)
        # Published quirk: the third BN embedding is sized by out_joints (same as n_joints in practice).
        self.embedding_3 = embedding(2 * (out_joints if with_bn else n_joints), channel, with_bn)
        self.Transformer_hypothesis = HypothesisTransformer(
            layers, channel, d_hid, heads, frames, token_num, layer_index, tie_break, noise)
        self.regression = nn.Sequential(
            nn.BatchNorm1d(channel * 3, momentum=0.1),
            nn.Conv1d(channel * 3, 3 * out_joints, kernel_size=1))
        for k in (1, 2, 3):
            setattr(self, f"norm_{k}", nn.LayerNorm(frames))
            setattr(self, f"Transformer_encoder_{k}",
                    MHGEncoder(mhg_depth, frames, frames * 2, mhg_heads, length=2 * n_joints))

    def _check_inputs(self, x, index):
        """Clear errors for a bad pose tensor or given TPC index (shared with the fused subclass)."""
        check_pose_input(x, frames=self.frames, n_joints=self.n_joints, device=self.norm_1.weight.device)
        if index is not None:
            check_index(index, x.shape[0], self.token_num, self.frames, device=x.device)

    def _forward(self, x, index=None):
        self._check_inputs(x, index)
        in_dtype = x.dtype
        B, F, J, _ = x.shape
        # One token per (joint, coordinate) pair, token index 2*j + c; the token width is F.
        x = x.to(self.norm_1.weight.dtype).reshape(B, F, 2 * J).transpose(1, 2)
        x_1 = x + self.Transformer_encoder_1(self.norm_1(x))
        x_2 = x_1 + self.Transformer_encoder_2(self.norm_2(x_1))
        x_3 = x_2 + self.Transformer_encoder_3(self.norm_3(x_2))
        x_1 = self.embedding_1(x_1).transpose(1, 2)
        x_2 = self.embedding_2(x_2).transpose(1, 2)
        x_3 = self.embedding_3(x_3).transpose(1, 2)
        x, index = self.Transformer_hypothesis(x_1, x_2, x_3, index)
        x = self.regression(x.transpose(1, 2))  # [B, 3 * out_joints, F']
        x = x.reshape(B, self.out_joints, 3, -1).permute(0, 3, 1, 2)
        return x.to(in_dtype), index

    def forward(self, x):
        return self._forward(x)[0]


class TPCMHFormer(MHFormer):
    """MHFormer with token pruning (HoT's TPC): SHR block ``layer_index`` and later blocks see ``token_num``
    frames chosen by DPC-kNN on ``cat(x1, x2, x3)``; the centre frame is always kept.
    ``forward(x, index=None) -> (out [B, token_num, J, 3], index [B, token_num])``, as published."""

    arch = "tpc_mhformer"

    def __init__(self, frames=351, channel=512, d_hid=1024, layers=3, n_joints=17, out_joints=17,
                 heads=8, mhg_heads=9, mhg_depth=4, token_num=117, layer_index=1, tie_break="index", noise=None):
        if token_num is None:
            raise ValueError("token_num: TPC-MHFormer needs the number of kept frames, got None")
        super().__init__(frames, channel, d_hid, layers, n_joints, out_joints, heads, mhg_heads, mhg_depth,
                         _tpc=(token_num, layer_index, tie_break, noise))
        self.token_num, self.layer_index, self.tie_break, self.noise = token_num, layer_index, tie_break, noise

    def forward(self, x, index=None):
        return self._forward(x, index)
