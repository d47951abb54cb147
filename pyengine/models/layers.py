"""Building blocks shared by the eager reference models (SPEC.md, notation section).

They are written to compute exactly what the published implementations compute, in the same order:
attention is ``softmax((q @ k^T) * scale) @ v`` with ``scale = head_dim ** -0.5`` multiplied *after* the
product, GELU is the exact (erf) form, dropout and drop-path are identity at inference (so they are left out).
Attribute names are the published ones, so state_dicts load unchanged.
"""
import torch
from torch import nn


def check_heads(dim: int, heads: int, what: str) -> None:
    if heads < 1 or dim % heads != 0:
        raise ValueError(f"{what}: width {dim} is not divisible by heads={heads} (head_dim must be an integer)")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Plain attention over ``[..., N, D]`` tensors, scale applied after the product (as published)."""
    scale = q.shape[-1] ** -0.5
    attn = (q @ k.transpose(-2, -1)) * scale
    return attn.softmax(dim=-1) @ v


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2 (keys ``fc1.*``, ``fc2.*``)."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (keys ``qkv.*``, ``proj.*``)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        check_heads(dim, num_heads, "Attention")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        out = attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class CrossAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections (keys ``linear_{q,k,v}.*``, ``proj.*``).

    Queries may be fewer or more than keys (HoT's token recovering attention: F queries, kept tokens as keys).
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        check_heads(dim, num_heads, "CrossAttention")
        self.num_heads = num_heads
        self.linear_q = nn.Linear(dim, dim, bias=qkv_bias)
        self.linear_k = nn.Linear(dim, dim, bias=qkv_bias)
        self.linear_v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x_q, x_k, x_v):
        B, N, C = x_q.shape
        M = x_k.shape[1]
        h = self.num_heads
        q = self.linear_q(x_q).reshape(B, N, h, C // h).permute(0, 2, 1, 3)
        k = self.linear_k(x_k).reshape(B, M, h, C // h).permute(0, 2, 1, 3)
        v = self.linear_v(x_v).reshape(B, M, h, C // h).permute(0, 2, 1, 3)
        out = attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, N, C))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden_dim: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, mlp_hidden_dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def check_pose_input(x: torch.Tensor, *, frames: int, n_joints: int, device=None, name: str = "x") -> None:
    """Raise a clear error unless ``x`` is a floating ``[B, frames, n_joints, 2]`` tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape [B, {frames}, {n_joints}, 2], got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != frames or x.shape[2] != n_joints or x.shape[3] != 2:
        raise ValueError(
            f"{name}: expected shape [B, F={frames}, J={n_joints}, 2] (normalised 2D keypoints), got {list(x.shape)}"
        )
    check_pose_tensor(x, device, name)


def check_pose_tensor(x: torch.Tensor, device=None, name: str = "x") -> None:
    """The checks every pose input shares once its shape is right: floating, a non-empty batch, the model's
    device (metadata only: no value is read, so no host sync)."""
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}: batch is empty (shape {list(x.shape)})")
    if device is not None and x.device != device:
        raise ValueError(f"{name}: expected a tensor on {device} (the model's device), got {x.device}")
