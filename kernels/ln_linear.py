"""Triton grouped linear with a fused LayerNorm prologue and a bias / GELU / residual epilogue
(``pyengine::ln_linear``)::

    y[:, g*N:(g+1)*N] = act(LN_g(x[:, c_g:c_g+K]) @ weight[g].T + bias[g]) + residual[:, g*N:(g+1)*N]

One program computes one ``[BLOCK_M, BLOCK_N]`` output tile of one group (grid axis 1 is the group). With LN it
first runs over its row tile once to get fp32 mean / rstd (:func:`pyengine.kernels.layernorm.row_stats`), then
the main K loop normalises every loaded A tile in registers (and casts it back to the input dtype, so fp16/bf16
feed the tensor cores exactly like an eager ``F.layer_norm`` -> ``F.linear`` chain would) before ``tl.dot``.
Accumulation, bias, GELU and the residual add are fp32; the output is rounded once.

Group column offsets ``c_g`` are passed as up to ``GROUPS_PER_LAUNCH`` scalar arguments (no device tensor, so a
launch needs no host-to-device copy and can be captured in a CUDA graph); more groups take more launches.
"""
import torch
import triton
import triton.language as tl

from ._common import KernelCase

from ._common import INTERPRETING, SIG, check_triton_device
from .layernorm import row_stats

GROUPS_PER_LAUNCH = 4


@triton.jit
def _ln_linear_kernel(x_ptr, w_ptr, b_ptr, lnw_ptr, lnb_ptr, res_ptr, y_ptr,
                      M, N, K, col0, col1, col2, col3,
                      stride_xm, stride_wg, stride_wn, stride_rm, stride_ym, eps, act_gelu, has_res,
                      HAS_LN: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                      DOT_PRECISION: tl.constexpr, ACC: tl.constexpr, INTERPRETING: tl.constexpr):
    """``act_gelu`` / ``has_res`` are runtime 0/1 flags: they only touch the epilogue, so one compiled kernel
    serves all four combinations (a uniform branch per tile costs nothing)."""
    pid = tl.program_id(0)
    g = tl.program_id(1)
    # Grouped tile order: GROUP_M consecutive row tiles sweep the N tiles together, so the A rows (and their LN
    # statistics pass) and the weight tiles are re-read from L2 rather than DRAM.
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    tiles_per_band = GROUP_M * num_n
    first_m = (pid // tiles_per_band) * GROUP_M
    band_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % tiles_per_band) % band_m
    pid_n = (pid % tiles_per_band) // band_m

    col = tl.where(g == 0, col0, tl.where(g == 1, col1, tl.where(g == 2, col2, col3)))
    xg_ptr = x_ptr + col  # column 0 of this group's K-wide slice

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < M
    rows64 = rows.to(tl.int64)
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = ns < N
    ks0 = tl.arange(0, BLOCK_K)

    if HAS_LN:
        mean, rstd = row_stats(xg_ptr, stride_xm, rows, row_mask, K, eps, BLOCK_M, BLOCK_K, ACC)

    a_ptrs = xg_ptr + rows64[:, None] * stride_xm + ks0[None, :]                       # [BLOCK_M, BLOCK_K]
    w_ptrs = w_ptr + g.to(tl.int64) * stride_wg + ns[None, :] * stride_wn + ks0[:, None]  # [BLOCK_K, BLOCK_N]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + ks0
        kmask = ks < K
        a = tl.load(a_ptrs + k0, mask=row_mask[:, None] & kmask[None, :], other=0.0)
        w = tl.load(w_ptrs + k0, mask=kmask[:, None] & n_mask[None, :], other=0.0)
        if HAS_LN:
            gamma = tl.load(lnw_ptr + g * K + ks, mask=kmask, other=0.0).to(ACC)
            beta = tl.load(lnb_ptr + g * K + ks, mask=kmask, other=0.0).to(ACC)
            # padded columns: gamma = beta = 0 -> exactly 0, so they add nothing to the dot
            a_n = (a.to(ACC) - mean[:, None]) * rstd[:, None] * gamma[None, :] + beta[None, :]
            a = a_n.to(a.dtype)  # back to the input dtype: fp16/bf16 tensor-core operand, rounded like eager LN
        if INTERPRETING:  # the interpreter computes fp16/bf16 arithmetic and dots wrongly: do them in ACC
            a = a.to(ACC)
            w = w.to(ACC)
        acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION, out_dtype=ACC)

    acc += tl.load(b_ptr + g * N + ns, mask=n_mask, other=0.0).to(ACC)[None, :]
    if act_gelu != 0:  # exact GELU: x * Phi(x)
        acc = 0.5 * acc * (1.0 + tl.erf(acc * 0.7071067811865476))
    out_cols = g * N + ns
    mask = row_mask[:, None] & n_mask[None, :]
    if has_res != 0:
        acc += tl.load(res_ptr + rows64[:, None] * stride_rm + out_cols[None, :], mask=mask, other=0.0).to(ACC)
    tl.store(y_ptr + rows64[:, None] * stride_ym + out_cols[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)


# ---- configurations --------------------------------------------------------------------------------------------
# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) per element size. Sized so that even the *unaligned*
# compile (no divisibility facts: one 64-bit address per element, scalar loads -- what the MHG encoders' rows of
# F = 27/81/243/351 elements get) has no spills; with aligned inputs Triton's launch-time specialisation
# vectorises the loads and pipelines them through shared memory with fewer registers. (128 x 128 tiles spill in
# the unaligned compile, see docs/ln_linear.md.)
# "large" when it still gives at least one full wave of programs on an H100 (132 SMs), else "small".
CONFIGS = {
    2: {"large": (64, 128, 32, 8, 3), "small": (64, 64, 32, 8, 2)},
    4: {"large": (64, 128, 16, 8, 3), "small": (64, 64, 16, 4, 2)},
    8: {"small": (32, 32, 16, 4, 1)},  # fp64: interpreter only (gradcheck), never compiled for CUDA
}
H100_SMS = 132
GROUP_M = 8


def pick_config(M, N, G, dtype):
    """``(name, (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages))`` for a call: "large" if large tiles still
    make at least one full wave on an H100, else "small". See docs/ln_linear.md."""
    table = CONFIGS[torch.empty((), dtype=dtype).element_size()]
    if "large" in table:
        bm, bn = table["large"][:2]
        if triton.cdiv(M, bm) * triton.cdiv(N, bn) * G >= H100_SMS:
            return "large", table["large"]
    return "small", table["small"]


def dot_precision(dtype, allow_tf32):
    return "tf32" if (dtype == torch.float32 and allow_tf32 and not INTERPRETING) else "ieee"


def launch_ln_linear(x, weight, bias, ln_weight, ln_bias, residual, in_cols, eps, activation, allow_tf32):
    """Arguments validated by :func:`pyengine.ops.ln_linear.ln_linear`: ``x [M, K_x]`` and ``residual [M, G*N]``
    with unit column stride, ``weight [G, N, K]`` with unit K stride, K >= 1, the rest any layout."""
    check_triton_device(x, weight, bias, ln_weight, ln_bias, residual, op="pyengine::ln_linear")
    if x.dtype == torch.float64 and not INTERPRETING:
        from pyengine.backends import BackendUnavailableError
        raise BackendUnavailableError("pyengine::ln_linear: the Triton kernel runs float64 only under the "
                                      "interpreter (TRITON_INTERPRET=1); use backend='reference' for float64")
    M = x.shape[0]
    G, N, K = weight.shape
    y = torch.empty((M, G * N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return y
    if bias is None:  # rare (the engine's layers all have biases): a zero bias keeps one kernel variant
        bias = torch.zeros((G, N), dtype=x.dtype, device=x.device)
    bias = bias.contiguous()
    has_ln = ln_weight is not None
    lnw = ln_weight.contiguous() if has_ln else bias  # unused pointers when not has_ln
    lnb = ln_bias.contiguous() if has_ln else bias
    _, (bm, bn, bk, warps, stages) = pick_config(M, N, G, x.dtype)
    acc = tl.float64 if x.dtype == torch.float64 else tl.float32
    for g0 in range(0, G, GROUPS_PER_LAUNCH):
        g1 = min(G, g0 + GROUPS_PER_LAUNCH)
        cols = list(in_cols[g0:g1]) + [0] * (GROUPS_PER_LAUNCH - (g1 - g0))
        res = residual[:, g0 * N:g1 * N] if residual is not None else y
        grid = (triton.cdiv(M, bm) * triton.cdiv(N, bn), g1 - g0)
        _ln_linear_kernel[grid](
            x, weight[g0:g1], bias[g0:g1], lnw[g0:g1], lnb[g0:g1], res, y[:, g0 * N:g1 * N],
            M, N, K, *cols,
            x.stride(0), weight.stride(0), weight.stride(1), res.stride(0), y.stride(0), float(eps),
            int(activation == "gelu"), int(residual is not None),
            HAS_LN=has_ln, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=GROUP_M,
            DOT_PRECISION=dot_precision(x.dtype, allow_tf32), ACC=acc, INTERPRETING=INTERPRETING,
            num_warps=warps, num_stages=stages)
    return y


def sm90_cases():
    """Every configuration :func:`launch_ln_linear` can pick on CUDA: {fp16, bf16, fp32 ieee, fp32 tf32} x
    {"large", "small"} x HAS_LN (compiled without divisibility facts: the worst case for registers)."""
    modes = [(torch.float16, "ieee"), (torch.bfloat16, "ieee"), (torch.float32, "ieee"), (torch.float32, "tf32")]
    cases = []
    for dtype, prec in modes:
        t = SIG[dtype]
        for size, (bm, bn, bk, warps, stages) in CONFIGS[torch.empty((), dtype=dtype).element_size()].items():
            for has_ln in (False, True):
                sig = {"x_ptr": f"*{t}", "w_ptr": f"*{t}", "b_ptr": f"*{t}", "lnw_ptr": f"*{t}", "lnb_ptr": f"*{t}",
                       "res_ptr": f"*{t}", "y_ptr": f"*{t}", "M": "i32", "N": "i32", "K": "i32",
                       "col0": "i32", "col1": "i32", "col2": "i32", "col3": "i32", "stride_xm": "i32",
                       "stride_wg": "i32", "stride_wn": "i32", "stride_rm": "i32", "stride_ym": "i32",
                       "eps": "fp32", "act_gelu": "i32", "has_res": "i32"}
                const = {"HAS_LN": has_ln, "BLOCK_M": bm, "BLOCK_N": bn,
                         "BLOCK_K": bk, "GROUP_M": GROUP_M, "DOT_PRECISION": prec, "ACC": tl.float32,
                         "INTERPRETING": False}
                sig.update({k: "constexpr" for k in const})
                name = f"ln_linear_{t}{'_tf32' if prec == 'tf32' else ''}_{size}_ln{int(has_ln)}"
                cases.append(KernelCase(name, _ln_linear_kernel, sig, const, num_warps=warps, num_stages=stages))
    return cases
