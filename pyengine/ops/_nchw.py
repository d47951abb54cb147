"""What the image ops (``pyengine::susa``, ``pyengine::dwconv3x3``) share about their ``x [N, C, H, W]``: the
accepted dtypes, the input check, and output allocation in x's memory format."""
from typing import Optional

import torch

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_nchw(x, op: str) -> None:
    """Raise a clear error unless x is a 4-D float32 / float16 / bfloat16 tensor with N, C, H, W >= 1."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{op}: x must be a torch.Tensor [N, C, H, W], got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be 4-D [N, C, H, W], got {x.dim()}-D shape {list(x.shape)}")
    if x.dtype not in DTYPES:
        raise TypeError(f"{op}: x must be float32, float16 or bfloat16, got {x.dtype}")
    if min(x.shape) < 1:
        raise ValueError(f"{op}: x must have N, C, H, W >= 1, got shape {list(x.shape)}")


def is_channels_last(t: torch.Tensor) -> bool:
    # channels_last (as the reference modules decide it), or a channel slice of a channels-last tensor
    return t.stride(1) < t.stride(3) and not t.is_contiguous()


def new_output(x: torch.Tensor, channels: int, channels_last: Optional[bool] = None) -> torch.Tensor:
    """An uninitialised ``[N, channels, H, W]`` tensor in x's memory format (channels-last stays channels-last),
    or channels-last exactly when ``channels_last`` says so."""
    n, _, h, w = x.shape
    channels_last = is_channels_last(x) if channels_last is None else channels_last
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty((n, channels, h, w), dtype=x.dtype, device=x.device, memory_format=fmt)
