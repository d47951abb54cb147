"""Triton LayerNorm over the last axis of a 2-D tensor, with an optional repeating row-pattern add (a learned
``pos_embed`` added after the norm) and an optional residual, fused into one pass (``pyengine::layernorm``).

Also home of :func:`row_stats`, the per-row mean / rstd helper that the fused LN-prologue GEMM
(:mod:`pyengine.kernels.ln_linear`) uses too.

Statistics are computed in fp32 (fp64 for fp64 inputs, interpreter only) chunk by chunk: each ``BLOCK_K`` chunk
gets an exact two-pass mean and sum of squared deviations in registers, and the chunks are merged with Chan's
parallel-variance formula. That reads the row once (no second pass over ``x``) and keeps the biased variance
accurate even when ``|mean| >> std`` (a one-pass ``E[x^2] - E[x]^2`` would cancel catastrophically).
"""
import torch
import triton
import triton.language as tl

from ._common import KernelCase

from ._common import SIG, check_triton_device


@triton.jit
def row_stats(x_ptr, stride_m, rows, row_mask, K, eps, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
              ACC: tl.constexpr):
    """Mean and ``1/sqrt(var + eps)`` (biased variance) over ``K`` columns of ``BLOCK_M`` rows.

    ``x_ptr`` points at column 0 of the slice; row ``r`` starts at ``x_ptr + r * stride_m``; columns have unit
    stride. Masked rows return finite garbage (mean 0, rstd 1/sqrt(eps)); callers mask their stores."""
    cols = tl.arange(0, BLOCK_K)
    row_off = rows.to(tl.int64)[:, None] * stride_m
    mean = tl.zeros([BLOCK_M], dtype=ACC)
    m2 = tl.zeros([BLOCK_M], dtype=ACC)
    seen = tl.zeros([BLOCK_M], dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        kmask = (k0 + cols) < K
        mask = row_mask[:, None] & kmask[None, :]
        v = tl.load(x_ptr + row_off + (k0 + cols)[None, :], mask=mask, other=0.0).to(ACC)
        n_b = tl.sum(kmask.to(ACC), axis=0)  # columns in this chunk (BLOCK_K except the last)
        mean_b = tl.sum(v, axis=1) / n_b
        d = tl.where(kmask[None, :], v - mean_b[:, None], 0.0)
        m2_b = tl.sum(d * d, axis=1)
        n = seen + n_b
        delta = mean_b - mean
        mean = mean + delta * (n_b / n)
        m2 = m2 + m2_b + delta * delta * (seen * n_b / n)
        seen = n
    if ACC == tl.float32:
        rstd = 1.0 / tl.sqrt_rn(m2 / K + eps)  # IEEE sqrt: tl.sqrt is the approximate one for fp32
    else:
        rstd = 1.0 / tl.sqrt(m2 / K + eps)
    return mean, rstd


@triton.jit
def _layernorm_kernel(x_ptr, w_ptr, b_ptr, add_ptr, res_ptr, y_ptr, M, K, P,
                      stride_xm, stride_am, stride_rm, stride_ym, eps,
                      HAS_ADD: tl.constexpr, HAS_RES: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                      ACC: tl.constexpr):
    """One program per ``BLOCK_M`` rows: statistics in one pass, then normalise, affine, add, residual, store."""
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    mean, rstd = row_stats(x_ptr, stride_xm, rows, row_mask, K, eps, BLOCK_M, BLOCK_K, ACC)
    rows64 = rows.to(tl.int64)
    cols = tl.arange(0, BLOCK_K)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + cols
        kmask = ks < K
        mask = row_mask[:, None] & kmask[None, :]
        v = tl.load(x_ptr + rows64[:, None] * stride_xm + ks[None, :], mask=mask, other=0.0).to(ACC)
        w = tl.load(w_ptr + ks, mask=kmask, other=0.0).to(ACC)
        b = tl.load(b_ptr + ks, mask=kmask, other=0.0).to(ACC)
        out = (v - mean[:, None]) * rstd[:, None] * w[None, :] + b[None, :]
        if HAS_ADD:
            prow = (rows % P).to(tl.int64)
            out += tl.load(add_ptr + prow[:, None] * stride_am + ks[None, :], mask=mask, other=0.0).to(ACC)
        if HAS_RES:
            out += tl.load(res_ptr + rows64[:, None] * stride_rm + ks[None, :], mask=mask, other=0.0).to(ACC)
        tl.store(y_ptr + rows64[:, None] * stride_ym + ks[None, :], out.to(y_ptr.dtype.element_ty), mask=mask)


# The one configuration: 16 rows x 64-column chunks, 4 warps. LayerNorm is memory-bound; the chunk loop serves any
# K (27 ... 1536) without a per-width compile, and 16 rows give ~1-2k programs at the engine's M.
BLOCK_M, BLOCK_K, NUM_WARPS, NUM_STAGES = 16, 64, 4, 2
FLAGS = [(has_add, has_res) for has_add in (False, True) for has_res in (False, True)]


def launch_layernorm(x, weight, bias, eps, add=None, residual=None):
    """``y = LN(x) * weight + bias (+ add[m % P]) (+ residual)``; arguments already validated by
    :func:`pyengine.ops.layernorm.layernorm` (2-D, unit column stride, same dtype and device)."""
    check_triton_device(x, weight, bias, add, residual, op="pyengine::layernorm")
    M, K = x.shape
    y = torch.empty((M, K), dtype=x.dtype, device=x.device)
    if M == 0:
        return y
    acc = tl.float64 if x.dtype == torch.float64 else tl.float32
    grid = (triton.cdiv(M, BLOCK_M),)
    _layernorm_kernel[grid](
        x, weight.contiguous(), bias.contiguous(), y if add is None else add, y if residual is None else residual, y,
        M, K, 1 if add is None else add.shape[0],
        x.stride(0), 0 if add is None else add.stride(0), 0 if residual is None else residual.stride(0), y.stride(0),
        float(eps), HAS_ADD=add is not None, HAS_RES=residual is not None, BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K,
        ACC=acc, num_warps=NUM_WARPS, num_stages=NUM_STAGES)
    return y


def sm90_cases():
    """Every configuration :func:`launch_layernorm` can pick: fp32/fp16/bf16 x (HAS_ADD, HAS_RES)."""
    cases = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        t = SIG[dtype]
        for has_add, has_res in FLAGS:
            sig = {"x_ptr": f"*{t}", "w_ptr": f"*{t}", "b_ptr": f"*{t}", "add_ptr": f"*{t}", "res_ptr": f"*{t}",
                   "y_ptr": f"*{t}", "M": "i32", "K": "i32", "P": "i32", "stride_xm": "i32", "stride_am": "i32",
                   "stride_rm": "i32", "stride_ym": "i32", "eps": "fp32", "HAS_ADD": "constexpr",
                   "HAS_RES": "constexpr", "BLOCK_M": "constexpr", "BLOCK_K": "constexpr", "ACC": "constexpr"}
            const = {"HAS_ADD": has_add, "HAS_RES": has_res, "BLOCK_M": BLOCK_M, "BLOCK_K": BLOCK_K,
                     "ACC": tl.float32}
            cases.append(KernelCase(f"layernorm_{t}_add{int(has_add)}_res{int(has_res)}", _layernorm_kernel, sig,
                                    const, num_warps=NUM_WARPS, num_stages=NUM_STAGES))
    return cases


__all__ = ["launch_layernorm", "row_stats", "sm90_cases"]
