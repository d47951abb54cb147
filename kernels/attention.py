"""Flash-style multi-head attention forward (the Triton kernel behind ``pyengine::attention``).

``out[b, m, g, h, :] = softmax((q[b, g, m, h, :] @ k[b, g, :, h, :]^T) * D**-0.5) @ v[b, g, :, h, :]``

* One program per (b * G * H, query tile): the query tile stays in registers while the kernel walks the key
  tiles with an online softmax (running max ``m_i``, running sum ``l_i``, rescaled accumulator), so no
  ``[Nq, Nk]`` matrix is ever stored.
* q, k, v are read through their strides (views into a fused QKV projection, batch stride 0 for queries shared
  by every sample); only the last dim must have stride 1. The output is written contiguous ``[B, Nq, G, H, D]``.
* The head dim is padded to ``BLOCK_D`` (power of two >= 16, what ``tl.dot`` needs) inside the kernel with
  masked loads; ragged ``Nq`` / ``Nk`` are masked (out-of-range keys score ``-inf`` before the row max; every
  key tile holds at least one valid key, so the running max is always finite and no ``inf - inf`` arises).
* fp32 accumulation and softmax; ``exp2`` with ``D**-0.5 * log2(e)`` folded into one multiplier.

Configuration heuristic (no autotune; every pick is in :func:`sm90_cases`, see :func:`pick_config`):
``BLOCK_D = next_pow2(D, 16)`` (D <= 128); one square tile ``BLOCK_M = BLOCK_N = clamp(next_pow2(max(Nq, Nk)),
16, 64)``, so sequences up to 64 tokens (MHG's 34, MixSTE's 17 joints) are covered by a single key tile and longer
ones use 64 x 64 tiles (32 x 32 for exact fp32 with D > 32, whose FMA dots would spill at 64); 8 warps from
64 x 64 q-tile elements on, else 4; two pipeline stages.
"""
import torch
import triton
import triton.language as tl

from ._common import INTERPRETING, SIG, check_triton_device, next_pow2

MAX_HEAD_DIM = 128
HEAD_DIMS = (16, 32, 64, 128)  # the head tiles BLOCK_D (head dims are padded up to one of these)
LOG2E = 1.4426950408889634


@triton.jit
def _attention_fwd_kernel(
        q_ptr, k_ptr, v_ptr, out_ptr,
        sqb, sqg, sqn, sqh,
        skb, skg, skn, skh,
        svb, svg, svn, svh,
        sob, son, sog, soh,
        Nq, Nk, G, H, D,
        qk_scale,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
        ALLOW_TF32: tl.constexpr, ACC_FP64: tl.constexpr, INTERPRETING: tl.constexpr):
    # (b, g, h) on grid axis 0: B*G*H reaches 124k for MixSTE's spatial attention, over axis 1's 65535 limit.
    pid_bgh = tl.program_id(0)
    pid_m = tl.program_id(1)
    h = pid_bgh % H
    g = (pid_bgh // H) % G
    b = (pid_bgh // (H * G)).to(tl.int64)  # int64: batch offsets of large batches pass 2**31 elements

    q_base = q_ptr + b * sqb + g * sqg + h * sqh
    k_base = k_ptr + b * skb + g * skg + h * skh
    v_base = v_ptr + b * svb + g * svg + h * svh
    o_base = out_ptr + b * sob + g * sog + h * soh

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_valid = offs_m < Nq
    d_valid = offs_d < D

    q = tl.load(q_base + offs_m[:, None] * sqn + offs_d[None, :], mask=m_valid[:, None] & d_valid[None, :],
                other=0.0)
    # fp64 inputs (interpreter only, for gradcheck) accumulate in fp64, everything else in fp32.
    if ACC_FP64:
        acc_dtype = tl.float64
    else:
        acc_dtype = tl.float32
    if INTERPRETING:
        q = q.to(acc_dtype)  # the interpreter computes fp16/bf16 arithmetic and dots wrongly: upcast at once
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=acc_dtype)
    l_i = tl.zeros([BLOCK_M], dtype=acc_dtype)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=acc_dtype)

    for start_n in range(0, Nk, BLOCK_N):
        n = start_n + offs_n
        n_valid = n < Nk
        kv_mask = n_valid[:, None] & d_valid[None, :]
        k = tl.load(k_base + n[:, None] * skn + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + n[:, None] * svn + offs_d[None, :], mask=kv_mask, other=0.0)
        if INTERPRETING:
            k = k.to(acc_dtype)
            v = v.to(acc_dtype)
        if ALLOW_TF32:
            s = tl.dot(q, tl.trans(k), input_precision="tf32", out_dtype=acc_dtype)
        else:
            s = tl.dot(q, tl.trans(k), input_precision="ieee", out_dtype=acc_dtype)
        s = s * qk_scale  # (q . k) * D**-0.5 * log2(e): the scale multiplies the product, base-2 exponent
        s = tl.where(n_valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if ALLOW_TF32:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="tf32", out_dtype=acc_dtype)
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee", out_dtype=acc_dtype)
        m_i = m_new

    out = acc / l_i[:, None]
    tl.store(o_base + offs_m[:, None] * son + offs_d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=m_valid[:, None] & d_valid[None, :])


def pick_config(Nq: int, Nk: int, D: int, dtype: torch.dtype, tf32: bool):
    """``(BLOCK_M, BLOCK_N, BLOCK_D, num_warps, num_stages)`` for a problem (see the module docstring)."""
    block_d = next_pow2(D, 16)
    # fp32 dots with input_precision="ieee" run on FMA units with both operand tiles in registers: 64 x 64 tiles
    # spill on sm_90 from a head tile of 64 on, so exact fp32 uses 32 x 32 tiles there.
    max_tile = 32 if (dtype == torch.float32 and not tf32 and block_d >= 64) else 64
    tile = min(max_tile, next_pow2(max(Nq, Nk), 16))
    # The q tile and the accumulator live in registers: at 64 x 64 elements and above 4 warps spill, so 8.
    num_warps = 8 if tile * block_d >= 4096 else 4
    return tile, tile, block_d, num_warps, 2


def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allow_tf32: bool = False,
                  out: torch.Tensor = None) -> torch.Tensor:
    """Launch the kernel. q ``[B, G, Nq, H, D]``, k / v ``[B, G, Nk, H, D]`` (validated by the caller, last dim
    stride 1); returns ``out``, a contiguous ``[B, Nq, G, H, D]`` tensor in q's dtype (new unless given: tests
    pass a NaN-poisoned one so that an unwritten element shows)."""
    check_triton_device(q, k, v, op="pyengine::attention")
    if q.dtype == torch.float64 and q.device.type != "cpu":
        from pyengine.backends import BackendUnavailableError
        raise BackendUnavailableError("pyengine::attention: float64 runs only under the Triton interpreter (CPU); "
                                      f"got q on {q.device}; use backend='reference'")
    B, G, Nq, H, D = q.shape
    Nk = k.shape[2]
    if out is None:
        out = torch.empty((B, Nq, G, H, D), dtype=q.dtype, device=q.device)
    elif out.shape != (B, Nq, G, H, D) or out.dtype != q.dtype or not out.is_contiguous():
        raise ValueError(f"attention_fwd: out: expected a contiguous {[B, Nq, G, H, D]} {q.dtype} tensor, got "
                         f"{list(out.shape)} {out.dtype} (contiguous={out.is_contiguous()})")
    if out.numel() == 0:
        return out
    tf32 = bool(allow_tf32 and q.dtype == torch.float32)
    block_m, block_n, block_d, num_warps, num_stages = pick_config(Nq, Nk, D, q.dtype, tf32)
    grid = (B * G * H, triton.cdiv(Nq, block_m))
    _attention_fwd_kernel[grid](
        q, k, v, out,
        q.stride(0), q.stride(1), q.stride(2), q.stride(3),
        k.stride(0), k.stride(1), k.stride(2), k.stride(3),
        v.stride(0), v.stride(1), v.stride(2), v.stride(3),
        out.stride(0), out.stride(1), out.stride(2), out.stride(3),
        Nq, Nk, G, H, D,
        D ** -0.5 * LOG2E,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        ALLOW_TF32=tf32, ACC_FP64=q.dtype == torch.float64,
        INTERPRETING=INTERPRETING,
        num_warps=num_warps, num_stages=num_stages)
    return out


def sm90_cases():
    """Every configuration :func:`pick_config` can pick (x dtype x tf32), for the sm_90 compile check. fp64 is
    not listed: the launcher rejects fp64 CUDA tensors (it runs only under the interpreter, for gradcheck)."""
    from ._common import KernelCase

    strides = ("sqb", "sqg", "sqn", "sqh", "skb", "skg", "skn", "skh", "svb", "svg", "svn", "svh",
               "sob", "son", "sog", "soh")
    variants = [(torch.float32, False), (torch.float32, True), (torch.float16, False), (torch.bfloat16, False)]
    seen, cases = set(), []
    for dtype, tf32 in variants:
        for n in (1, 17, 33, 351):  # every tile size
            for d in HEAD_DIMS:
                cfg = pick_config(n, n, d, dtype, tf32)
                if (cfg, dtype, tf32) in seen:
                    continue
                seen.add((cfg, dtype, tf32))
                block_m, block_n, block_d, num_warps, num_stages = cfg
                ptr = "*" + SIG[dtype]
                sig = {"q_ptr": ptr, "k_ptr": ptr, "v_ptr": ptr, "out_ptr": ptr}
                sig.update({name: "i32" for name in strides + ("Nq", "Nk", "G", "H", "D")})
                sig["qk_scale"] = "fp32"
                consts = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_D": block_d, "ALLOW_TF32": tf32,
                          "ACC_FP64": False, "INTERPRETING": False}
                sig.update({name: "constexpr" for name in consts})
                tag = SIG[dtype] + ("-tf32" if tf32 else "")
                cases.append(KernelCase(f"attention_fwd-M{block_m}-N{block_n}-D{block_d}-w{num_warps}-{tag}",
                                        _attention_fwd_kernel, sig, consts, num_warps=num_warps,
                                        num_stages=num_stages))
    return cases
