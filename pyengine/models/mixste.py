"""MixSTE, TPC-MixSTE and HoT-MixSTE: eager references (SPEC.md §2).

Parameter names are the published ones (``Spatial_patch_to_embedding``, ``STEblocks.i``, ``TTEblocks.i``,
``Spatial_norm``, ``Temporal_norm``, ``head.0/1``; HoT adds ``pos_embed_token``, ``x_token``,
``cross_attention.*``), so published state_dicts load with ``strict=True``.
"""
import torch
from torch import nn

from .layers import Block, CrossAttention, check_heads, check_pose_input
from .tpc import check_index, check_tpc_config, dpc_knn_select


class MixSTE(nn.Module):
    """Seq2seq mixed spatio-temporal encoder: ``[B, F, J, 2] -> [B, F, J, 3]``.

    Alternates a spatial block (attention over the J joints, batch B*F) and a temporal block (attention over the
    frames, batch B*J) ``depth`` times; ``Spatial_norm`` / ``Temporal_norm`` are shared by all blocks."""

    arch = "mixste"

    def __init__(self, frames=243, channel=512, d_hid=None, depth=8, heads=8, n_joints=17, _tpc=None):
        super().__init__()
        d_hid = 2 * channel if d_hid is None else d_hid
        check_heads(channel, heads, f"MixSTE attention (channel={channel}, heads={heads})")
        if depth < 1:
            raise ValueError(f"depth: expected >= 1, got {depth}")
        token_num, layer_index, tie_break, noise = _tpc or (None, 1, "index", None)
        if token_num is not None:  # pruning runs before a spatial/temporal block pair other than the first
            check_tpc_config(token_num, frames, layer_index, 1, depth - 1, tie_break, f"depth={depth}")
        self.frames, self.channel, self.d_hid, self.depth = frames, channel, d_hid, depth
        self.heads, self.n_joints = heads, n_joints
        self.token_num, self.layer_index, self.tie_break, self.noise = token_num, layer_index, tie_break, noise

        self.Spatial_patch_to_embedding = nn.Linear(2, channel)
        self.Spatial_pos_embed = nn.Parameter(torch.zeros(1, n_joints, channel))
        self.Temporal_pos_embed = nn.Parameter(torch.zeros(1, frames, channel))
        self.STEblocks = nn.ModuleList(Block(channel, heads, d_hid) for _ in range(depth))
        self.TTEblocks = nn.ModuleList(Block(channel, heads, d_hid) for _ in range(depth))
        self.Spatial_norm = nn.LayerNorm(channel, eps=1e-6)
        self.Temporal_norm = nn.LayerNorm(channel, eps=1e-6)
        self.head = nn.Sequential(nn.LayerNorm(channel), nn.Linear(channel, 3))  # head LN keeps eps 1e-5

    def st_block(self, x, i):
        """Spatial block i then temporal block i on ``x [B, F, J, C]``."""
        b, f, n, c = x.shape
        x = self.Spatial_norm(self.STEblocks[i](x.reshape(b * f, n, c)))
        x = x.reshape(b, f, n, c).transpose(1, 2).reshape(b * n, f, c)
        if i == 0:
            x = x + self.Temporal_pos_embed
        x = self.Temporal_norm(self.TTEblocks[i](x))
        return x.reshape(b, n, f, c).transpose(1, 2)

    def select(self, x, index, center):
        """TPC: DPC-kNN on the per-frame mean over joints, then gather the kept frames of ``x [B, F, J, C]``."""
        b = x.shape[0]
        if index is None:
            index = dpc_knn_select(x.mean(dim=2), self.token_num, center=center,
                                   tie_break=self.tie_break, noise=self.noise)
        batch = torch.arange(b, device=x.device).unsqueeze(-1)
        return x[batch, index], index

    def _check_inputs(self, x, index):
        """Clear errors for a bad pose tensor or given TPC index (shared with the fused subclass)."""
        check_pose_input(x, frames=self.frames, n_joints=self.n_joints, device=self.Spatial_pos_embed.device)
        if index is not None:
            check_index(index, x.shape[0], self.token_num, self.frames, device=x.device)

    def encode(self, x, index=None, center=None):
        """Embedding and all blocks; pruning before block ``layer_index`` when TPC is on."""
        self._check_inputs(x, index)
        b, f, n, _ = x.shape
        x = self.Spatial_patch_to_embedding(x.to(self.Spatial_pos_embed.dtype).reshape(b * f, n, 2))
        x = (x + self.Spatial_pos_embed).reshape(b, f, n, self.channel)
        for i in range(self.depth):
            if self.token_num is not None and i == self.layer_index:
                x, index = self.select(x, index, center)
                x = self.after_select(x)
            x = self.st_block(x, i)
        return x, index

    def after_select(self, x):
        return x

    def forward(self, x):
        out, _ = self.encode(x)
        return self.head(out).to(x.dtype)


class TPCMixSTE(MixSTE):
    """MixSTE with token pruning, seq2frame: blocks ``layer_index..depth-1`` and the head see ``token_num``
    frames (the centre frame always kept). ``forward(x, index=None) -> (out [B, token_num, J, 3], index)``."""

    arch = "tpc_mixste"

    def __init__(self, frames=243, channel=512, d_hid=None, depth=8, heads=8, n_joints=17,
                 token_num=61, layer_index=7, tie_break="index", noise=None):
        if token_num is None:
            raise ValueError("token_num: TPC-MixSTE needs the number of kept frames, got None")
        super().__init__(frames, channel, d_hid, depth, heads, n_joints,
                         _tpc=(token_num, layer_index, tie_break, noise))

    def forward(self, x, index=None):
        out, index = self.encode(x, index, center=(self.frames - 1) // 2)
        return self.head(out).to(x.dtype), index


class HoTMixSTE(MixSTE):
    """Hourglass Tokenizer on MixSTE, seq2seq: TPC keeps ``token_num`` frames before block ``layer_index``
    (no centre exclusion) and adds ``pos_embed_token``; after the last block, TRA recovers all F frames with
    learned queries ``x_token`` shared by every sample and joint: ``x_token + CA(x_token, x, x)``.

    ``forward(x, index=None, return_index=False)``: the published call ``forward(x)`` returns the output only;
    pass ``index`` to fix the selection and ``return_index=True`` to get ``(out, index)``."""

    arch = "hot_mixste"

    def __init__(self, frames=243, channel=512, d_hid=None, depth=8, heads=8, n_joints=17,
                 token_num=81, layer_index=3, tie_break="index", noise=None):
        if token_num is None:
            raise ValueError("token_num: HoT-MixSTE needs the number of kept frames, got None")
        super().__init__(frames, channel, d_hid, depth, heads, n_joints,
                         _tpc=(token_num, layer_index, tie_break, noise))
        self.pos_embed_token = nn.Parameter(torch.zeros(1, token_num, channel))
        self.x_token = nn.Parameter(torch.zeros(1, frames, channel))
        self.cross_attention = CrossAttention(channel, heads)

    def after_select(self, x):
        # pos_embed_token is indexed by rank in the sorted selection, shared over batch and joints.
        return x + self.pos_embed_token[:, :, None, :]

    def forward(self, x, index=None, return_index=False):
        out, index = self.encode(x, index)
        b, t, n, c = out.shape
        out = out.transpose(1, 2).reshape(b * n, t, c)
        x_token = self.x_token.expand(b * n, -1, -1)
        out = x_token + self.cross_attention(x_token, out, out)  # token recovering attention
        out = self.head(out.reshape(b, n, self.frames, c).transpose(1, 2)).to(x.dtype)
        return (out, index) if return_index else out
