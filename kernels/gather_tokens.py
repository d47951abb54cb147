"""Triton fused token gather: the ``impl="triton"`` of ``pyengine::gather_tokens``.

``out[b, t, r] = x[b, index[b, t], r] (+ add[t, r mod A])``: one program per (output row, ``BLOCK_R`` columns);
the source row pointer comes from the index, so ``x`` may be any strided view with unit last stride (e.g. the
three MHFormer hypotheses side by side in one ``[B, F, 3C]`` buffer, or a ``[B, F, J, C]`` activation viewed as
``[B, F, J*C]``). ``add [keep, A]`` with ``A`` dividing the row width is repeated along the row (HoT's
``pos_embed_token [keep, C]`` over the J joints). The add is done in fp32 and rounded once to x's dtype, which
is what eager ``x + add`` does for fp16 / bf16 too, so the result equals the eager reference bit for bit.
"""
import torch
import triton
import triton.language as tl

from ._common import INTERPRETING, SIG


@triton.jit
def _round_to_bf16(v):
    """fp32 -> bf16 rounding to nearest even with integer ops. Only used under the interpreter, whose fp32 -> bf16
    cast truncates (the GPU's cast rounds to nearest even, as torch does)."""
    bits = v.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _gather_tokens_kernel(x_ptr, index_ptr, add_ptr, out_ptr, F, keep, R, A, stride_xb, stride_xf,
                          HAS_ADD: tl.constexpr, BLOCK_R: tl.constexpr, INTERPRETING: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # b * keep + t
    b = row // keep
    t = row % keep
    src = tl.load(index_ptr + row)
    cols = tl.program_id(1) * BLOCK_R + tl.arange(0, BLOCK_R)
    ok = (cols < R) & (src >= 0) & (src < F)  # the wrapper validates the index; never read out of bounds
    v = tl.load(x_ptr + b * stride_xb + src * stride_xf + cols, mask=ok, other=float("nan"))
    if HAS_ADD:
        a = tl.load(add_ptr + t * A + cols % A, mask=cols < R, other=0.0)
        v = v.to(tl.float32) + a.to(tl.float32)
        if INTERPRETING and out_ptr.dtype.element_ty == tl.bfloat16:
            v = _round_to_bf16(v)
        else:
            v = v.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + row * R + cols, v, mask=cols < R)


def block_config(R: int):
    """``(BLOCK_R, num_warps)``: 256 columns (2 warps) for narrow rows, else 1024 columns (4 warps)."""
    return (256, 2) if R <= 256 else (1024, 4)


def gather_tokens_triton(x: torch.Tensor, index: torch.Tensor, add):
    """Launcher. ``x [B, F, R]`` with ``x.stride(2) == 1``, ``index [B, keep]`` int64 (contiguous, values in
    ``[0, F)``), ``add`` None or contiguous ``[keep, A]`` of x's dtype with ``R % A == 0``."""
    B, F, R = x.shape
    keep = index.shape[1]
    out = torch.empty((B, keep, R), dtype=x.dtype, device=x.device)
    if out.numel() == 0:
        return out
    block_r, warps = block_config(R)
    A = add.shape[1] if add is not None else R
    _gather_tokens_kernel[(B * keep, triton.cdiv(R, block_r))](
        x, index, add if add is not None else x, out, F, keep, R, A, x.stride(0), x.stride(1),
        HAS_ADD=add is not None, BLOCK_R=block_r, INTERPRETING=INTERPRETING, num_warps=warps)
    return out


def sm90_cases():
    """Every configuration: BLOCK_R in {256, 1024} x dtype x with / without the add."""
    from ._common import KernelCase

    cases = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        for block_r, warps in (block_config(256), block_config(1024)):
            for has_add in (False, True):
                t = SIG[dtype]
                cases.append(KernelCase(
                    f"gather_tokens-{t}-R{block_r}-add{int(has_add)}", _gather_tokens_kernel,
                    {"x_ptr": f"*{t}", "index_ptr": "*i64", "add_ptr": f"*{t}", "out_ptr": f"*{t}", "F": "i32",
                     "keep": "i32", "R": "i32", "A": "i32", "stride_xb": "i64", "stride_xf": "i64",
                     "HAS_ADD": "constexpr", "BLOCK_R": "constexpr", "INTERPRETING": "constexpr"},
                    {"HAS_ADD": has_add, "BLOCK_R": block_r, "INTERPRETING": False}, num_warps=warps))
    return cases
