"""SUSA, spatially unidimensional self-attention (X-HRNet, ICME 2022): eager reference modules.

The contract is SPEC.md §3 (computation) and §6 (X-HRNet key names). The modules reproduce the published
mmcv-based code op for op, without importing mmcv:

* :class:`HSUSA` gates every row: a query vector over W is pooled over H, each row is scored against it, and the
  per-row score goes through a full 1x1 conv, LayerNorm over channels and a sigmoid.
* :class:`WSUSA` is the mirror image (query over H pooled over W, a gate per column).
* :class:`HWSUSA` runs H-wise SUSA on the first part of the channels and W-wise SUSA on the rest.
* :class:`SXShuffleUnit` (sequential) and :class:`PXShuffleUnit` (parallel) are the Lite-HRNet style shuffle
  units in which X-HRNet places them.

Parameter names are the published ones (``group_weight``, ``conv.conv.*``, ``mean_conv.conv.*``, ``ln.*``,
``hconv.*``, ``wconv.*``, ``branch2.{0,1,2}.*``), so a published state_dict loads with ``strict=True``.

Conventions shared by every module here:

* Inputs are validated up front (4-D floating ``[N, C, H, W]``, the right channel count, H <= 96 and W <= 72
  where a ``group_weight`` is sliced) so that a misuse fails with a message instead of a broadcasting error deep
  inside the forward.
* A module computes in the dtype of its parameters: the input is cast to it first.
* A ``torch.channels_last`` input is computed on an NCHW-contiguous copy, so it runs exactly the same ops on the
  same values as an NCHW input (identical results); the output is handed back in channels_last again.
"""
import torch
from torch import nn

__all__ = [
    "ConvModule",
    "channel_shuffle",
    "HSUSA",
    "WSUSA",
    "HWSUSA",
    "SXShuffleUnit",
    "PXShuffleUnit",
    "GROUP_WEIGHT_H",
    "GROUP_WEIGHT_W",
]

# Stored lengths of the published ``group_weight`` vectors (SPEC.md §3). They bound the largest H (H-wise) and W
# (W-wise) a module can take: the forward slices ``group_weight[..., :H]``, and a longer axis cannot be covered.
GROUP_WEIGHT_H = 96
GROUP_WEIGHT_W = 72


def _check_positive_int(value, name: str, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what}: {name} must be a positive integer, got {value!r}")


def _check_input(x, what: str, channels: int, *, max_h: int | None = None, max_w: int | None = None) -> None:
    """Raise a clear error unless ``x`` is a floating ``[N, channels, H, W]`` tensor within the size limits."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what}: x must be a torch.Tensor of shape [N, {channels}, H, W], got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{what}: x must be 4-D [N, C={channels}, H, W], got {x.dim()}-D shape {list(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{what}: x must be a floating-point tensor, got dtype {x.dtype}")
    n, c, h, w = x.shape
    if c != channels:
        raise ValueError(f"{what}: x must have C={channels} channels (dim 1), got C={c} (shape {list(x.shape)})")
    if h < 1 or w < 1:
        # The means over H / W would be 0/0 (NaN) on an empty axis.
        raise ValueError(f"{what}: x must have H >= 1 and W >= 1, got H={h}, W={w}")
    if max_h is not None and h > max_h:
        raise ValueError(
            f"{what}: x height H={h} exceeds the limit H <= {max_h} (length of the stored group_weight over H)"
        )
    if max_w is not None and w > max_w:
        raise ValueError(
            f"{what}: x width W={w} exceeds the limit W <= {max_w} (length of the stored group_weight over W)"
        )


def _is_channels_last(x: torch.Tensor) -> bool:
    # An NCHW-contiguous tensor can also count as channels_last when C == 1 or H == W == 1; then both layouts
    # are the same thing and there is nothing to restore, hence the second condition.
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _restore_format(out: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return out.contiguous(memory_format=torch.channels_last) if channels_last else out


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet channel shuffle (SPEC.md §3): view ``[N, g, C/g, H, W]``, swap the two channel axes, flatten.

    Output channel ``j * g + i`` is input channel ``i * (C/g) + j``.
    """
    _check_positive_int(groups, "groups", "channel_shuffle")
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"channel_shuffle: x must be a 4-D tensor [N, C, H, W], got {shape}")
    n, c, h, w = x.shape
    if c % groups != 0:
        raise ValueError(f"channel_shuffle: channels C={c} must be divisible by groups={groups}")
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, c, h, w)


class ConvModule(nn.Module):
    """The subset of mmcv's ``ConvModule`` that X-HRNet uses: ``conv`` (an ``nn.Conv2d``), optionally ``bn``.

    Only the child names matter for checkpoint compatibility: mmcv stores the convolution as ``conv`` and a
    BatchNorm as ``bn``, so keys come out as ``conv.weight`` / ``conv.bias`` / ``bn.*``. As in mmcv, the order is
    conv then norm, and there is no activation in any of X-HRNet's SUSA-related uses (``act_cfg=None``).
    mmcv's ``bias='auto'`` gives a bias exactly when there is no norm; that is the default here too.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 groups: int = 1, bias: bool | None = None, with_bn: bool = False):
        super().__init__()
        if bias is None:
            bias = not with_bn
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                              groups=groups, bias=bias)
        self.with_bn = with_bn
        if with_bn:
            self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.with_bn:
            x = self.bn(x)
        return x


class _SUSABase(nn.Module):
    """Parameters shared by H-wise and W-wise SUSA (SPEC.md §3, keys per §6)."""

    def __init__(self, channels: int, ln_enable: bool, group_weight_shape: list[int]):
        super().__init__()
        what = type(self).__name__
        _check_positive_int(channels, "channels", what)
        self.channels = channels
        self.ln_enable = bool(ln_enable)
        # Full C x C 1x1 conv with bias, applied to the per-row (per-column) attention scores.
        self.conv = ConvModule(channels, channels, 1)
        # Depthwise 1x1 conv with bias: a per-channel scale and shift of the pooled query.
        self.mean_conv = ConvModule(channels, channels, 1, groups=channels)
        # Stored at full length and sliced to the input size in forward (published layout, hence the H/W limit).
        self.group_weight = nn.Parameter(torch.ones(group_weight_shape))
        if self.ln_enable:
            self.ln = nn.LayerNorm(channels)  # eps 1e-5, as published
            self.sigmoid = nn.Sigmoid()

    def _gate(self, atten: torch.Tensor) -> torch.Tensor:
        """conv1x1, then (if ln_enable) LayerNorm over the channel axis and sigmoid; without LN the raw conv
        output is the gate (published behaviour, SPEC.md §3)."""
        atten = self.conv(atten)
        if self.ln_enable:
            # LayerNorm normalises the last axis; moving C there (and back) is how the published code does it.
            atten = self.sigmoid(self.ln(atten.transpose(1, -1)).transpose(1, -1))
        return atten


class HSUSA(_SUSABase):
    """H-wise SUSA: one gate per row (SPEC.md §3).

    ``q = softmax_W(mean_conv(mean_H(x * group_weight[:, :, :H])))``, ``a[n, c, h] = sum_w x[n, c, h, w] q[n, c, w]``,
    gate ``sigmoid(LN_C(conv1x1(a)))`` (or ``conv1x1(a)`` when ``ln_enable=False``), output ``x * gate``.
    Requires ``H <= 96`` (length of ``group_weight``).
    """

    arch = "hsusa"

    def __init__(self, channels: int, ln_enable: bool = True):
        super().__init__(channels, ln_enable, [1, 1, GROUP_WEIGHT_H, 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, "HSUSA", self.channels, max_h=GROUP_WEIGHT_H)
        channels_last = _is_channels_last(x)
        x = x.to(self.group_weight.dtype).contiguous()
        h, w = x.shape[2:]
        xq = self.mean_conv((x * self.group_weight[:, :, :h]).mean(-2, keepdim=True))  # n,c,1,w
        xq = xq.transpose(2, 3).softmax(-2)  # n,c,w,1: softmax over W
        atten = torch.matmul(x, xq)  # n,c,h,1
        atten = self._gate(atten)
        return _restore_format(x * atten, channels_last)


class WSUSA(_SUSABase):
    """W-wise SUSA: one gate per column, the mirror image of :class:`HSUSA` (SPEC.md §3).

    ``q = softmax_H(mean_conv(mean_W(x * group_weight[..., :W])))``, ``a[n, c, w] = sum_h x[n, c, h, w] q[n, c, h]``,
    then the same gate as H-wise SUSA. Requires ``W <= 72`` (length of ``group_weight``).
    """

    arch = "wsusa"

    def __init__(self, channels: int, ln_enable: bool = True):
        super().__init__(channels, ln_enable, [1, 1, 1, GROUP_WEIGHT_W])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, "WSUSA", self.channels, max_w=GROUP_WEIGHT_W)
        channels_last = _is_channels_last(x)
        x = x.to(self.group_weight.dtype).contiguous()
        h, w = x.shape[2:]
        xq = self.mean_conv((x * self.group_weight[:, :, :, :w]).mean(-1, keepdim=True))  # n,c,h,1
        xq = xq.softmax(-2)  # softmax over H
        atten = torch.matmul(x.transpose(2, 3), xq).transpose(2, 3)  # n,c,1,w
        atten = self._gate(atten)
        return _restore_format(x * atten, channels_last)


class HWSUSA(nn.Module):
    """HW-SUSA: H-wise SUSA on the first ``h_channels``, W-wise on the remaining ``w_channels`` (SPEC.md §3).

    ``mode=None``: half and half, shuffle with 2 groups; ``"hw"``: 3/4 H-wise, 1/4 W-wise, 4 groups; ``"wh"``: the
    reverse. The halves are concatenated and, if ``hw_shuffle``, channel-shuffled. The split must cover every
    channel (the published ``x.split`` fails otherwise), so ``channels`` must be even (None) or a multiple of 4.
    """

    arch = "hwsusa"

    @staticmethod
    def split(channels: int, mode: str | None) -> tuple[int, int]:
        """``(h_channels, w_channels)`` of the published split for ``mode`` (they may not add up to channels)."""
        if mode == "hw":
            return channels // 4 * 3, channels // 4
        if mode == "wh":
            return channels // 4, channels // 4 * 3
        if mode is None:
            return channels // 2, channels // 2
        raise ValueError(f"HWSUSA: mode must be one of 'hw', 'wh' or None, got {mode!r}")

    def __init__(self, channels: int, mode: str | None = None, ln_enable: bool = False, hw_shuffle: bool = False):
        super().__init__()
        _check_positive_int(channels, "channels", "HWSUSA")
        h_channels, w_channels = self.split(channels, mode)
        shuffle_groups = 2 if mode is None else 4
        if h_channels + w_channels != channels or h_channels < 1 or w_channels < 1:
            need = "a multiple of 4" if mode in ("hw", "wh") else "even"
            raise ValueError(
                f"HWSUSA: channels={channels} cannot be split for mode={mode!r}: h_channels={h_channels} + "
                f"w_channels={w_channels} != {channels} (channels must be {need} and large enough for both parts)"
            )
        self.channels = channels
        self.mode = mode
        self.hw_shuffle = bool(hw_shuffle)
        self.h_channels = h_channels
        self.w_channels = w_channels
        self.shuffle_groups = shuffle_groups
        self.hconv = HSUSA(h_channels, ln_enable)
        self.wconv = WSUSA(w_channels, ln_enable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Validate the whole input here so that errors name HWSUSA and its channel count, not a sub-module's.
        _check_input(x, "HWSUSA", self.channels, max_h=GROUP_WEIGHT_H, max_w=GROUP_WEIGHT_W)
        channels_last = _is_channels_last(x)
        x = x.to(self.hconv.group_weight.dtype).contiguous()
        x1, x2 = x.split([self.h_channels, self.w_channels], dim=1)
        out = torch.cat([self.hconv(x1), self.wconv(x2)], dim=1)
        if self.hw_shuffle:
            out = channel_shuffle(out, self.shuffle_groups)
        return _restore_format(out, channels_last)


class _XShuffleUnit(nn.Module):
    """Shared body of the X-shuffle units: split channels in half, run the second half through ``branch2``,
    concatenate, shuffle with 2 groups (Lite-HRNet ShuffleUnit, stride 1)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        what = type(self).__name__
        _check_positive_int(in_channels, "in_channels", what)
        _check_positive_int(out_channels, "out_channels", what)
        if stride != 1:
            # X-HRNet only instantiates stride-1 units; the stride-2 (branch1, downsampling) path is not used.
            raise ValueError(f"{what}: only stride=1 is supported, got stride={stride!r}")
        branch_features = out_channels // 2
        if branch_features < 1 or in_channels != branch_features * 2:
            raise ValueError(
                f"{what}: with stride=1, in_channels must equal 2 * (out_channels // 2) = {branch_features * 2}, "
                f"got in_channels={in_channels}, out_channels={out_channels}"
            )
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.stride = stride
        self.branch_features = branch_features

    @staticmethod
    def _dwconv(bf: int) -> ConvModule:
        # 3x3 depthwise conv without bias, followed by BatchNorm and no activation (mmcv ConvModule with BN).
        return ConvModule(bf, bf, 3, stride=1, padding=1, groups=bf, bias=False, with_bn=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, type(self).__name__, self.in_channels, max_h=GROUP_WEIGHT_H, max_w=GROUP_WEIGHT_W)
        channels_last = _is_channels_last(x)
        x = x.to(self.branch2[1].conv.weight.dtype).contiguous()
        x1, x2 = x.chunk(2, dim=1)
        out = torch.cat((x1, self.branch2(x2)), dim=1)
        return _restore_format(channel_shuffle(out, 2), channels_last)


class SXShuffleUnit(_XShuffleUnit):
    """Sequential X-shuffle unit (SPEC.md §3): ``branch2 = W-SUSA -> dw3x3 conv + BN -> H-SUSA``.

    Keys: ``branch2.0.*`` (WSUSA), ``branch2.1.conv.weight`` and ``branch2.1.bn.*``, ``branch2.2.*`` (HSUSA).
    Only ``stride=1`` (the only one X-HRNet uses) with ``in_channels == 2 * (out_channels // 2)``.
    """

    arch = "sx_shuffle_unit"

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__(in_channels, out_channels, stride)
        bf = self.branch_features
        self.branch2 = nn.Sequential(
            WSUSA(bf, ln_enable=True),
            self._dwconv(bf),
            HSUSA(bf, ln_enable=True),
        )


class PXShuffleUnit(_XShuffleUnit):
    """Parallel X-shuffle unit (SPEC.md §3): ``branch2 = HW-SUSA -> dw3x3 conv + BN -> HW-SUSA``.

    Both HW-SUSAs use ``mode=None, ln_enable=True, hw_shuffle=True``, so ``out_channels // 2`` must be even.
    Keys: ``branch2.0.{hconv,wconv}.*``, ``branch2.1.conv.weight``, ``branch2.1.bn.*``, ``branch2.2.{hconv,wconv}.*``.
    """

    arch = "px_shuffle_unit"

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__(in_channels, out_channels, stride)
        bf = self.branch_features
        if bf % 2 != 0:
            raise ValueError(
                f"PXShuffleUnit: out_channels // 2 = {bf} must be even (its HW-SUSAs split it in half), "
                f"got out_channels={out_channels}"
            )
        self.branch2 = nn.Sequential(
            HWSUSA(bf, ln_enable=True, hw_shuffle=True),
            self._dwconv(bf),
            HWSUSA(bf, ln_enable=True, hw_shuffle=True),
        )
