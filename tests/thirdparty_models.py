"""A third-party copy of the published MHFormer and MixSTE code, written from SPEC.md with its own class names and
no import from pyengine: what a user's research repository looks like. The engine tests check that
``pyengine.load(module)`` and ``pyengine.swap(module)`` recognise these by structure and state_dict keys."""
import torch
from torch import nn


class TPMlp(nn.Module):
    def __init__(self, i, h, o=None):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(i, h), nn.GELU(), nn.Linear(h, o or i)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TPAttention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = ((qkv[0] @ qkv[1].transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ qkv[2]).transpose(1, 2).reshape(B, N, C))


class TPCross(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.linear_q, self.linear_k, self.linear_v = (nn.Linear(dim, dim) for _ in range(3))
        self.proj = nn.Linear(dim, dim)

    def forward(self, q, k, v):
        B, N, C = q.shape
        h = self.num_heads
        q = self.linear_q(q).reshape(B, N, h, C // h).permute(0, 2, 1, 3)
        k = self.linear_k(k).reshape(B, -1, h, C // h).permute(0, 2, 1, 3)
        v = self.linear_v(v).reshape(B, -1, h, C // h).permute(0, 2, 1, 3)
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class TPBlock(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), TPAttention(dim, heads)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), TPMlp(dim, hidden)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TPEncoder(nn.Module):  # the published ``Transformer`` of trans.py
    def __init__(self, depth, dim, hidden, heads, length):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, length, dim))
        self.blocks = nn.ModuleList(TPBlock(dim, heads, hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        x = x + self.pos_embed
        for b in self.blocks:
            x = b(x)
        return self.norm(x)


class TPSHR(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        for k in (1, 2, 3):
            setattr(self, f"norm1_{k}", nn.LayerNorm(dim, eps=1e-6))
            setattr(self, f"attn_{k}", TPAttention(dim, heads))
        self.norm2, self.mlp = nn.LayerNorm(3 * dim, eps=1e-6), TPMlp(3 * dim, hidden)

    def forward(self, x_1, x_2, x_3):
        x_1 = x_1 + self.attn_1(self.norm1_1(x_1))
        x_2 = x_2 + self.attn_2(self.norm1_2(x_2))
        x_3 = x_3 + self.attn_3(self.norm1_3(x_3))
        x = torch.cat([x_1, x_2, x_3], dim=2)
        x = x + self.mlp(self.norm2(x))
        c = x.shape[2] // 3
        return x[:, :, :c], x[:, :, c:2 * c], x[:, :, 2 * c:]


class TPCHI(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        for a in (1, 2, 3):
            for b in (1, 2, 3):
                setattr(self, f"norm3_{a}{b}", nn.LayerNorm(dim, eps=1e-6))
            setattr(self, f"attn_{a}", TPCross(dim, heads))
        self.norm2, self.mlp = nn.LayerNorm(3 * dim, eps=1e-6), TPMlp(3 * dim, hidden)

    def forward(self, x_1, x_2, x_3):
        x_1 = x_1 + self.attn_1(self.norm3_11(x_2), self.norm3_12(x_3), self.norm3_13(x_1))
        x_2 = x_2 + self.attn_2(self.norm3_21(x_1), self.norm3_22(x_3), self.norm3_23(x_2))
        x_3 = x_3 + self.attn_3(self.norm3_31(x_1), self.norm3_32(x_2), self.norm3_33(x_3))
        x = torch.cat([x_1, x_2, x_3], dim=2)
        x = x + self.mlp(self.norm2(x))
        c = x.shape[2] // 3
        return x[:, :, :c], x[:, :, c:2 * c], x[:, :, 2 * c:]


class TPHypothesis(nn.Module):
    def __init__(self, layers, dim, hidden, heads, length):
        super().__init__()
        for k in (1, 2, 3):
            setattr(self, f"pos_embed_{k}", nn.Parameter(torch.zeros(1, length, dim)))
        self.SHR_blocks = nn.ModuleList(TPSHR(dim, heads, hidden) for _ in range(layers - 1))
        self.CHI_blocks = nn.ModuleList([TPCHI(dim, heads, hidden)])
        self.norm = nn.LayerNorm(3 * dim, eps=1e-6)

    def forward(self, x_1, x_2, x_3):
        x_1, x_2, x_3 = x_1 + self.pos_embed_1, x_2 + self.pos_embed_2, x_3 + self.pos_embed_3
        for blk in self.SHR_blocks:
            x_1, x_2, x_3 = blk(x_1, x_2, x_3)
        x_1, x_2, x_3 = self.CHI_blocks[0](x_1, x_2, x_3)
        return self.norm(torch.cat([x_1, x_2, x_3], dim=2))


class ThirdPartyMHFormer(nn.Module):
    """MHFormer for F > 27 (plain Conv1d embeddings), as in the published model.py."""

    def __init__(self, frames=81, channel=32, d_hid=64, layers=3, joints=17):
        super().__init__()
        self.frames, self.joints = frames, joints
        for k in (1, 2, 3):
            setattr(self, f"norm_{k}", nn.LayerNorm(frames))
            setattr(self, f"Transformer_encoder_{k}", TPEncoder(4, frames, 2 * frames, 9, 2 * joints))
            setattr(self, f"embedding_{k}", nn.Conv1d(2 * joints, channel, kernel_size=1))
        self.Transformer_hypothesis = TPHypothesis(layers, channel, d_hid, 8, frames)
        self.regression = nn.Sequential(nn.BatchNorm1d(3 * channel, momentum=0.1),
                                        nn.Conv1d(3 * channel, 3 * joints, kernel_size=1))

    def forward(self, x):
        B, F, J, C = x.shape
        x = x.reshape(B, F, J * C).permute(0, 2, 1)
        x_1 = x + self.Transformer_encoder_1(self.norm_1(x))
        x_2 = x_1 + self.Transformer_encoder_2(self.norm_2(x_1))
        x_3 = x_2 + self.Transformer_encoder_3(self.norm_3(x_2))
        x_1 = self.embedding_1(x_1).permute(0, 2, 1)
        x_2 = self.embedding_2(x_2).permute(0, 2, 1)
        x_3 = self.embedding_3(x_3).permute(0, 2, 1)
        x = self.Transformer_hypothesis(x_1, x_2, x_3).permute(0, 2, 1)
        x = self.regression(x)
        return x.reshape(B, J, 3, F).permute(0, 3, 1, 2)


class ThirdPartyMixSTE(nn.Module):
    """MixSTE as in the published mixste.py (STE / TTE blocks, shared norms, LN + linear head)."""

    def __init__(self, frames=9, channel=32, depth=3, heads=4, joints=17):
        super().__init__()
        self.depth = depth
        self.Spatial_patch_to_embedding = nn.Linear(2, channel)
        self.Spatial_pos_embed = nn.Parameter(torch.zeros(1, joints, channel))
        self.Temporal_pos_embed = nn.Parameter(torch.zeros(1, frames, channel))
        self.STEblocks = nn.ModuleList(TPBlock(channel, heads, 2 * channel) for _ in range(depth))
        self.TTEblocks = nn.ModuleList(TPBlock(channel, heads, 2 * channel) for _ in range(depth))
        self.Spatial_norm = nn.LayerNorm(channel, eps=1e-6)
        self.Temporal_norm = nn.LayerNorm(channel, eps=1e-6)
        self.head = nn.Sequential(nn.LayerNorm(channel), nn.Linear(channel, 3))

    def forward(self, x):
        b, f, n, _ = x.shape
        x = self.Spatial_patch_to_embedding(x.reshape(b * f, n, 2)) + self.Spatial_pos_embed
        for i in range(self.depth):
            x = self.Spatial_norm(self.STEblocks[i](x))
            x = x.reshape(b, f, n, -1).transpose(1, 2).reshape(b * n, f, -1)
            if i == 0:
                x = x + self.Temporal_pos_embed
            x = self.Temporal_norm(self.TTEblocks[i](x))
            x = x.reshape(b, n, f, -1).transpose(1, 2).reshape(b * f, n, -1)
        return self.head(x.reshape(b, f, n, -1))
