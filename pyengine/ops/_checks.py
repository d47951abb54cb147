"""Argument checks shared by the row-wise ops (``layernorm``, ``group_layernorm``, ``ln_linear``).

Each raises ``TypeError`` (wrong kind or dtype) or ``ValueError`` (wrong shape, stride, device or value) naming the
argument, the expected and the actual. ``prefix`` starts the message where an op's errors carry its name
(``"group_layernorm: "``)."""
import math
from typing import List

import torch

# What the row-wise ops take: the three GPU / CPU working dtypes and fp64 for the references.
ROW_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def check_tensor(name, t, prefix="") -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{prefix}{name}: expected a torch.Tensor, got {type(t).__name__}")


def check_rows(x, shape_doc, prefix="", name="x") -> None:
    """``x``: a 2-D tensor ``shape_doc`` of a row dtype with unit column stride (any row stride)."""
    check_tensor(name, x, prefix)
    if x.dim() != 2:
        raise ValueError(f"{prefix}{name}: expected a 2-D tensor {shape_doc}, got shape {list(x.shape)}")
    if x.dtype not in ROW_DTYPES:
        raise TypeError(f"{prefix}{name}: expected dtype float32, float16, bfloat16 or float64, got {x.dtype}")
    check_unit_column_stride(name, x, prefix)


def check_unit_column_stride(name, t, prefix="") -> None:
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{prefix}{name}: expected unit column stride (any row stride), got strides "
                         f"{list(t.stride())}")


def check_like(name, t, x, prefix="") -> None:
    """``t`` has the dtype and device of ``x``."""
    if t.dtype != x.dtype:
        raise TypeError(f"{prefix}{name}: expected dtype {x.dtype} (the dtype of x), got {t.dtype}")
    if t.device != x.device:
        raise ValueError(f"{prefix}{name}: expected device {x.device} (the device of x), got {t.device}")


def check_eps(eps, prefix="") -> None:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"{prefix}eps: expected a finite number >= 0, got {eps!r}")


def default_in_cols(K_x: int, G: int, K: int) -> List[int]:
    """The column offsets of G K-wide groups of ``x [M, K_x]`` (the default of ``group_layernorm`` and
    ``ln_linear``): ``[g*K]`` when x holds the G slices side by side, ``[0]*G`` when every group reads the same K
    columns."""
    if K_x == G * K:
        return [g * K for g in range(G)]
    if K_x == K:
        return [0] * G
    raise ValueError(f"in_cols: x has {K_x} columns, which is neither G*K = {G}*{K} = {G * K} nor K = {K}; "
                     f"pass in_cols (the column offset of each group's {K}-wide slice)")


def check_in_cols(in_cols, G: int, K: int, K_x: int, prefix="") -> List[int]:
    """The effective column offsets: ``default_in_cols`` for None, else G ints in ``[0, K_x - K]``."""
    if in_cols is None:
        return default_in_cols(K_x, G, K)
    if isinstance(in_cols, torch.Tensor) or not hasattr(in_cols, "__len__"):
        raise TypeError(f"{prefix}in_cols: expected a list of {G} ints (one column offset per group), got "
                        f"{type(in_cols).__name__}")
    in_cols = list(in_cols)
    if len(in_cols) != G:
        raise ValueError(f"{prefix}in_cols: expected {G} column offsets (one per group), got {len(in_cols)}")
    for g, c in enumerate(in_cols):
        if isinstance(c, bool) or not isinstance(c, int):
            raise TypeError(f"{prefix}in_cols[{g}]: expected an int, got {type(c).__name__}")
        if not 0 <= c <= K_x - K:
            raise ValueError(f"{prefix}in_cols[{g}]: expected an offset in [0, K_x - K] = [0, {K_x - K}] (x has "
                             f"{K_x} columns, K = {K}), got {c}")
    return in_cols
