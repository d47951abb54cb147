"""MotionBERT (DSTformer, ICCV 2023) and HoT-MotionBERT: eager references (SPEC.md §7).

Parameter names are the published ones (``joints_embed``, ``pos_embed``, ``temp_embed``,
``blocks_{st,ts}.i.{norm1_s, norm1_t, norm2_s, norm2_t, attn_s, attn_t, mlp_s, mlp_t}``, ``ts_attn.i``, ``norm``,
``pre_logits.fc``, ``head``; HoT adds ``pos_embed_token``, ``x_token``, ``cross_attention.*``), so published
state_dicts load with ``strict=True``. Quirks reproduced on purpose: every LayerNorm has eps 1e-6 (the published
builder passes it), the input carries the 2D detector's confidence as a third channel, ``pre_logits`` ends in
tanh, and ``temp_embed`` is sliced to F in DSTformer but added whole (F must equal maxlen) in HoT-MotionBERT.
"""
import torch
from torch import nn

from .layers import Attention, CrossAttention, Mlp, check_heads, check_pose_tensor
from .tpc import check_index, check_tpc_config, dpc_knn_select

EPS = 1e-6  # every LayerNorm of DSTformer (the class default 1e-5 is never used by the published builder)


def check_confidence_pose_input(x, *, maxlen: int, num_joints: int, dim_in: int, exact_frames: bool,
                                device=None, name: str = "x") -> None:
    """Raise a clear error unless ``x`` is a floating ``[B, F, num_joints, dim_in]`` tensor (x, y, confidence for
    the published ``dim_in=3``) with ``1 <= F <= maxlen`` (``F == maxlen`` when ``exact_frames``)."""
    want = f"[B, F, J={num_joints}, {dim_in}]" + (" (x, y and the 2D detector's confidence)" if dim_in == 3 else "")
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape {want}, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[2] != num_joints or x.shape[3] != dim_in:
        hint = ""
        if x.dim() == 4 and x.shape[3] == 2 and dim_in == 3:
            hint = ("; MotionBERT reads the keypoint confidence as a third channel: append the detector's scores "
                    "(1.0 where a format has none)")
        raise ValueError(f"{name}: expected shape {want}, got {list(x.shape)}{hint}")
    frames = x.shape[1]
    if exact_frames and frames != maxlen:
        raise ValueError(f"{name}: expected F == maxlen={maxlen} frames (HoT-MotionBERT adds temp_embed "
                         f"[1, maxlen, 1, C] unsliced; pad or chunk the clip to {maxlen}), got shape {list(x.shape)}")
    if not 1 <= frames <= maxlen:
        raise ValueError(f"{name}: expected 1 <= F <= maxlen={maxlen} frames (temp_embed is [1, maxlen, 1, C], "
                         f"sliced to F), got shape {list(x.shape)}")
    check_pose_tensor(x, device, name)


def spatial(attn: Attention, x: torch.Tensor, frames: int) -> torch.Tensor:
    """Attention over the J joints of each frame: ``x [B*F, J, C]`` (frames of a sequence contiguous)."""
    return attn(x)


def temporal(attn: Attention, x: torch.Tensor, frames: int) -> torch.Tensor:
    """Attention over the F frames of each (sequence, joint): ``x [B*F, J, C]`` regrouped to ``[B*J, F, C]``."""
    bf, j, c = x.shape
    b = bf // frames
    t = x.reshape(b, frames, j, c).transpose(1, 2).reshape(b * j, frames, c)
    return attn(t).reshape(b, j, frames, c).transpose(1, 2).reshape(bf, j, c)


class DSTBlock(nn.Module):
    """One stream of a dual-stream layer: four pre-norm residual sub-layers (published ``Block``).

    ``st_mode="stage_st"``: spatial attention, spatial MLP, temporal attention, temporal MLP;
    ``"stage_ts"``: temporal attention, temporal MLP, spatial attention, spatial MLP. Each LayerNorm stays tied to
    its sub-layer by name (``norm1_s`` before ``attn_s`` in both orders)."""

    def __init__(self, dim: int, num_heads: int, mlp_hidden: int, st_mode: str, eps: float = EPS):
        super().__init__()
        if st_mode not in ("stage_st", "stage_ts"):
            raise ValueError(f"st_mode: expected 'stage_st' or 'stage_ts', got {st_mode!r}")
        self.st_mode = st_mode
        # Published construction order (it fixes the state_dict key order).
        self.norm1_s = nn.LayerNorm(dim, eps=eps)
        self.norm1_t = nn.LayerNorm(dim, eps=eps)
        self.attn_s = Attention(dim, num_heads)
        self.attn_t = Attention(dim, num_heads)
        self.norm2_s = nn.LayerNorm(dim, eps=eps)
        self.norm2_t = nn.LayerNorm(dim, eps=eps)
        self.mlp_s = Mlp(dim, mlp_hidden)
        self.mlp_t = Mlp(dim, mlp_hidden)

    def forward(self, x, frames):
        """``x [B*F, J, C]`` -> same shape."""
        s_then_t = self.st_mode == "stage_st"
        for kind in ("s", "t") if s_then_t else ("t", "s"):
            attend = spatial if kind == "s" else temporal
            x = x + attend(getattr(self, f"attn_{kind}"), getattr(self, f"norm1_{kind}")(x), frames)
            x = x + getattr(self, f"mlp_{kind}")(getattr(self, f"norm2_{kind}")(x))
        return x


class PreLogits(nn.Module):
    """``fc`` (Linear C -> R) then tanh (published ``Sequential(OrderedDict(fc=..., act=Tanh()))``)."""

    def __init__(self, dim: int, dim_rep: int):
        super().__init__()
        self.fc = nn.Linear(dim, dim_rep)
        self.act = nn.Tanh()

    def forward(self, x):
        return self.act(self.fc(x))


def mlp_hidden_of(dim_feat: int, mlp_ratio) -> int:
    return int(dim_feat * mlp_ratio)  # published: mlp_hidden_dim = int(dim * mlp_ratio)


class MotionBERT(nn.Module):
    """DSTformer, seq2seq: ``[B, F, J, 3] -> [B, F, J, 3]`` for any ``1 <= F <= maxlen``.

    Defaults are the published class defaults (MotionBERT-Lite: C 256, mlp_ratio 4); the full model is
    ``dim_feat=512, mlp_ratio=2``. ``forward(x, return_rep=False)``: ``return_rep=True`` returns the tanh
    representation ``[B, F, J, dim_rep]`` (published ``get_representation``)."""

    arch = "motionbert"
    slice_temp_embed = True  # DSTformer adds temp_embed[:, :F]; HoT-MotionBERT adds it whole

    def __init__(self, dim_in=3, dim_out=3, dim_feat=256, dim_rep=512, depth=5, num_heads=8, mlp_ratio=4,
                 num_joints=17, maxlen=243):
        super().__init__()
        for name, value in (("dim_in", dim_in), ("dim_out", dim_out), ("dim_feat", dim_feat), ("dim_rep", dim_rep),
                            ("depth", depth), ("num_joints", num_joints), ("maxlen", maxlen)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
        check_heads(dim_feat, num_heads, f"MotionBERT attention (dim_feat={dim_feat}, num_heads={num_heads})")
        hidden = mlp_hidden_of(dim_feat, mlp_ratio)
        if hidden < 1:
            raise ValueError(f"mlp_ratio: expected int(dim_feat * mlp_ratio) >= 1, got mlp_ratio={mlp_ratio!r} "
                             f"(dim_feat={dim_feat})")
        self.dim_in, self.dim_out, self.dim_feat, self.dim_rep = dim_in, dim_out, dim_feat, dim_rep
        self.depth, self.num_heads, self.mlp_ratio, self.mlp_hidden = depth, num_heads, mlp_ratio, hidden
        self.num_joints, self.maxlen = num_joints, maxlen

        # Published construction order.
        self.joints_embed = nn.Linear(dim_in, dim_feat)
        self.blocks_st = nn.ModuleList(DSTBlock(dim_feat, num_heads, hidden, "stage_st") for _ in range(depth))
        self.blocks_ts = nn.ModuleList(DSTBlock(dim_feat, num_heads, hidden, "stage_ts") for _ in range(depth))
        self.norm = nn.LayerNorm(dim_feat, eps=EPS)
        self.pre_logits = PreLogits(dim_feat, dim_rep)
        self.head = nn.Linear(dim_rep, dim_out)
        self.temp_embed = nn.Parameter(torch.zeros(1, maxlen, 1, dim_feat))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_joints, dim_feat))
        self.ts_attn = nn.ModuleList(nn.Linear(dim_feat * 2, 2) for _ in range(depth))

    # The window length and joint count under the names the rest of pyengine reads (bench, lift).
    @property
    def frames(self):
        return self.maxlen

    @property
    def n_joints(self):
        return self.num_joints

    def _check_inputs(self, x, index=None):
        """Clear errors for a bad pose tensor (shared with the fused subclass)."""
        check_confidence_pose_input(x, maxlen=self.maxlen, num_joints=self.num_joints, dim_in=self.dim_in,
                                    exact_frames=not self.slice_temp_embed, device=self.pos_embed.device)

    def embed(self, x):
        """``x [B, F, J, dim_in]`` -> ``[B*F, J, C]``: joints_embed, + pos_embed, + temp_embed (sliced to F)."""
        b, f, j, _ = x.shape
        c = self.dim_feat
        h = self.joints_embed(x.to(self.pos_embed.dtype).reshape(b * f, j, self.dim_in)) + self.pos_embed
        temp = self.temp_embed[:, :f] if self.slice_temp_embed else self.temp_embed
        return (h.reshape(b, f, j, c) + temp).reshape(b * f, j, c)

    def dual_stream(self, x, i, frames):
        """Layer i: both streams read ``x [B*F, J, C]``; per-token softmax fusion (logit 0 weights ST)."""
        x_st = self.blocks_st[i](x, frames)
        x_ts = self.blocks_ts[i](x, frames)
        alpha = self.ts_attn[i](torch.cat([x_st, x_ts], dim=-1)).softmax(dim=-1)
        return x_st * alpha[..., 0:1] + x_ts * alpha[..., 1:2]

    def forward(self, x, return_rep=False):
        self._check_inputs(x)
        b, f, j, _ = x.shape
        h = self.embed(x)
        for i in range(self.depth):
            h = self.dual_stream(h, i, f)
        rep = self.pre_logits(self.norm(h).reshape(b, f, j, self.dim_feat))
        return rep.to(x.dtype) if return_rep else self.head(rep).to(x.dtype)


class HoTMotionBERT(MotionBERT):
    """Hourglass Tokenizer on MotionBERT (HoT's ``hot_motionbert``), seq2seq on exactly ``maxlen`` frames.

    At the start of layer ``layer_index`` TPC (DPC-kNN, SPEC.md §2) keeps ``token_num`` frames chosen on the
    joint-mean features ``[B, F, C]`` (no centre frame, ascending); ``pos_embed_token`` is added by rank; the later
    layers run on the kept frames; after the final ``norm``, TRA recovers all maxlen frames per joint stream:
    ``x_token + CA(x_token, x, x)`` (no LN, no MLP), then ``pre_logits`` + tanh + ``head``.

    ``forward(x, index=None, return_index=False)`` as HoT-MixSTE: the published call returns the output only; pass
    ``index [B, token_num]`` to fix the selection and ``return_index=True`` to get ``(out, index)``."""

    arch = "hot_motionbert"
    slice_temp_embed = False

    def __init__(self, dim_in=3, dim_out=3, dim_feat=256, dim_rep=512, depth=5, num_heads=8, mlp_ratio=4,
                 num_joints=17, maxlen=243, token_num=81, layer_index=1, tie_break="index", noise=None):
        super().__init__(dim_in, dim_out, dim_feat, dim_rep, depth, num_heads, mlp_ratio, num_joints, maxlen)
        if isinstance(token_num, bool) or not isinstance(token_num, int):
            raise ValueError(f"token_num: HoT-MotionBERT needs the number of kept frames (an int), got {token_num!r}")
        if not 1 <= token_num <= maxlen:
            raise ValueError(f"token_num: expected 1 <= token_num <= maxlen={maxlen}, got {token_num}")
        check_tpc_config(token_num, maxlen, layer_index, 0, depth - 1, tie_break, f"depth={depth}")
        self.token_num, self.layer_index, self.tie_break, self.noise = token_num, layer_index, tie_break, noise
        self.pos_embed_token = nn.Parameter(torch.zeros(1, token_num, dim_feat))
        self.x_token = nn.Parameter(torch.zeros(1, maxlen, dim_feat))
        self.cross_attention = CrossAttention(dim_feat, num_heads)

    def _check_inputs(self, x, index=None):
        super()._check_inputs(x)
        if index is not None:
            check_index(index, x.shape[0], self.token_num, self.maxlen, device=x.device)

    def select(self, h, index, b, f):
        """TPC on the joint mean of ``h [B*F, J, C]``; returns the kept frames ``[B*T, J, C]`` + pos_embed_token."""
        j, c = self.num_joints, self.dim_feat
        h = h.reshape(b, f, j, c)
        if index is None:
            index = dpc_knn_select(h.mean(dim=2), self.token_num, tie_break=self.tie_break, noise=self.noise)
        batch = torch.arange(b, device=h.device).unsqueeze(-1)
        kept = h[batch, index] + self.pos_embed_token[:, :, None, :]  # by rank in the sorted selection
        return kept.reshape(b * self.token_num, j, c), index

    def forward(self, x, index=None, return_index=False):
        self._check_inputs(x, index)
        b, f, j, _ = x.shape
        c = self.dim_feat
        h = self.embed(x)
        for i in range(self.depth):
            if i == self.layer_index:
                h, index = self.select(h, index, b, f)
                f = self.token_num
            h = self.dual_stream(h, i, f)
        h = self.norm(h).reshape(b, f, j, c).transpose(1, 2).reshape(b * j, f, c)
        x_token = self.x_token.expand(b * j, -1, -1)
        h = x_token + self.cross_attention(x_token, h, h)  # token recovering attention, per joint stream
        h = h.reshape(b, j, self.maxlen, c).transpose(1, 2)
        out = self.head(self.pre_logits(h)).to(x.dtype)
        return (out, index) if return_index else out


__all__ = ["MotionBERT", "HoTMotionBERT", "DSTBlock", "PreLogits", "check_confidence_pose_input"]
