"""Triton kernels of ``pyengine::susa`` (SUSA, SPEC.md §3): three launches per call, reading x twice.

The op is written over "rows" r (one gate per row) and "stripe" positions s (the softmax axis): H-wise SUSA has
r = h, s = w; W-wise SUSA has r = w, s = h. The launcher passes x's strides in that order, so one kernel serves
both directions and any memory format (NCHW, channels-last, channel slices of a larger tensor).

1. ``_susa_stripe_kernel``, one program per (n, c): loads the whole [R, S] plane of x once (R, S <= 128 after
   padding: H <= 96, W <= 72), q = softmax_s(mean_w * mean_r(x * g) + mean_b), a[r] = sum_s x[r, s] q[s], and
   stores a (fp32 scratch [N, C, R]).
2. ``_susa_gate_kernel``, one program per (n, block of BL rows): z = conv_w @ a + conv_b over all C, LayerNorm over
   C (eps 1e-5) and sigmoid (or z itself without LN); overwrites the scratch with the gate (each program reads
   only the rows it writes, and reads them all before writing).
3. ``_susa_apply_kernel``, elementwise in x's memory order: out[n, out_index[c], h, w] = x[n, c, h, w] * gate[n, c, r]
   (second and last read of x, single write of out; ``out_index`` places channels for concat / channel shuffle).

Launch configuration (no autotune): the stripe kernel uses a square tile of side ``next_pow2(max(R, S, 8))``
and the warps listed in ``STRIPE_WARPS``; the gate kernel pads C to ``next_pow2(C, 16)`` (at most 512; warps in
``GATE_WARPS``) with BL = 16 rows and K chunks of 16 channels; the apply kernel uses 1024 elements per program and 4 warps.
``sm90_cases()`` lists every one of these configurations.
"""
import torch
import triton
import triton.language as tl

from ._common import KernelCase

from ._common import INTERPRETING, SHIPPED_DTYPES, SIG, check_triton_device, next_pow2

# plane tile side -> (channels per program, warps): about 1-2K fp32 values per program in 4 warps, 16K at side 128
# (16 warps there; ptxas -v on sm_90 shows no spills for any of these).
STRIPE_CONFIGS = {8: (16, 4), 16: (8, 4), 32: (2, 4), 64: (1, 4), 128: (1, 16)}
# Under the interpreter every program costs milliseconds per reduction, so a program takes a whole sample
# (up to this many tile elements) and the elementwise kernel takes big blocks; these never run on a GPU.
INTERP_MAX_TILE = 1 << 20
INTERP_APPLY_BLOCK = 1 << 15
# padded channels -> warps (4 warps spill at 512 channels)
GATE_WARPS = {16: 4, 32: 4, 64: 4, 128: 4, 256: 8, 512: 8}
GATE_BL = 16
GATE_BK = 16
MAX_CHANNELS = 512  # gate tile [C_pad, BL] stays in registers up to here
APPLY_BLOCK = 1024
APPLY_WARPS = 4
LN_EPS = 1e-5


@triton.jit
def _susa_stripe_kernel(x_ptr, gw_ptr, mw_ptr, mb_ptr, a_ptr, C, R, S, sxn, sxc, sxr, sxs,
                        BLOCK: tl.constexpr, BC: tl.constexpr):
    n = tl.program_id(0)
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    r = tl.arange(0, BLOCK)
    s = tl.arange(0, BLOCK)
    cmask = c < C
    rmask = r < R
    smask = s < S
    mask = cmask[:, None, None] & rmask[None, :, None] & smask[None, None, :]
    offs = c[:, None, None].to(tl.int64) * sxc + r[None, :, None] * sxr + s[None, None, :] * sxs
    # fp32 right after the load: all arithmetic is fp32 (also keeps the interpreter away from bf16 math).
    x = tl.load(x_ptr + n.to(tl.int64) * sxn + offs, mask=mask, other=0.0).to(tl.float32)  # [BC, R, S]
    g = tl.load(gw_ptr + r, mask=rmask, other=0.0)
    q = tl.sum(x * g[None, :, None], axis=1) / R  # mean over rows: [BC, S]
    q = q * tl.load(mw_ptr + c, mask=cmask, other=0.0)[:, None] + tl.load(mb_ptr + c, mask=cmask, other=0.0)[:, None]
    q = tl.where(smask[None, :], q, float("-inf"))
    e = tl.exp(q - tl.max(q, axis=1)[:, None])
    e = tl.where(smask[None, :], e, 0.0)
    p = e / tl.sum(e, axis=1)[:, None]  # softmax over the stripe axis
    a = tl.sum(x * p[:, None, :], axis=2)  # [BC, R]
    tl.store(a_ptr + (n * C + c)[:, None].to(tl.int64) * R + r[None, :], a, mask=cmask[:, None] & rmask[None, :])


@triton.jit
def _susa_gate_kernel(a_ptr, cw_ptr, cb_ptr, lw_ptr, lb_ptr, C, R, eps,
                      BC: tl.constexpr, BL: tl.constexpr, BK: tl.constexpr, LN: tl.constexpr):
    n = tl.program_id(0)
    l0 = tl.program_id(1) * BL
    d = tl.arange(0, BC)
    l = l0 + tl.arange(0, BL)
    k = tl.arange(0, BK)
    dmask = d < C
    lmask = l < R
    a_base = a_ptr + n.to(tl.int64) * C * R
    z = tl.zeros((BC, BL), dtype=tl.float32)
    for k0 in range(0, C, BK):
        kk = k0 + k
        kmask = kk < C
        w = tl.load(cw_ptr + d[:, None] * C + kk[None, :], mask=dmask[:, None] & kmask[None, :], other=0.0)
        a = tl.load(a_base + kk[:, None] * R + l[None, :], mask=kmask[:, None] & lmask[None, :], other=0.0)
        z += tl.dot(w, a, input_precision="ieee")
    z += tl.load(cb_ptr + d, mask=dmask, other=0.0)[:, None]
    if LN:
        zm = tl.where(dmask[:, None], z, 0.0)
        mu = tl.sum(zm, axis=0) / C
        dz = tl.where(dmask[:, None], z - mu[None, :], 0.0)
        var = tl.sum(dz * dz, axis=0) / C
        y = dz / tl.sqrt(var + eps)[None, :]
        y = y * tl.load(lw_ptr + d, mask=dmask, other=0.0)[:, None] + tl.load(lb_ptr + d, mask=dmask, other=0.0)[:, None]
        z = 1.0 / (1.0 + tl.exp(-y))
    tl.store(a_base + d[:, None] * R + l[None, :], z, mask=dmask[:, None] & lmask[None, :])


@triton.jit
def _susa_apply_kernel(x_ptr, gate_ptr, out_ptr, idx_ptr, total, C, C_out, H, W, sxn, sxc, sxh, sxw,
                       son, soc, soh, sow, rows_are_h,
                       BLOCK: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < total
    # Walk the elements in x's memory order, so that the loads are coalesced.
    if CHANNELS_LAST:
        c = i % C
        w = (i // C) % W
        h = (i // (C * W)) % H
        n = i // (C * W * H)
    else:
        w = i % W
        h = (i // W) % H
        c = (i // (W * H)) % C
        n = i // (W * H * C)
    x = tl.load(x_ptr + n * sxn + c * sxc + h * sxh + w * sxw, mask=mask, other=0.0).to(tl.float32)
    r = tl.where(rows_are_h != 0, h, w)
    R = tl.where(rows_are_h != 0, H, W)
    g = tl.load(gate_ptr + (n * C + c) * R + r, mask=mask, other=0.0)
    oc = tl.load(idx_ptr + c, mask=mask, other=0).to(tl.int64)
    # an out_index outside out's channels is skipped, never written out of bounds (the CUDA kernel does the same)
    ok = mask & (oc >= 0) & (oc < C_out)
    tl.store(out_ptr + n * son + oc * soc + h * soh + w * sow, (x * g).to(out_ptr.dtype.element_ty), mask=ok)


def stripe_block(R: int, S: int) -> int:
    return next_pow2(max(R, S), minimum=8)


def stripe_config(block: int, C: int):
    """(channels per program, warps) of the stripe kernel; under the interpreter, whole samples per program."""
    if INTERPRETING:
        return min(next_pow2(C), max(1, INTERP_MAX_TILE // (block * block))), 4
    return STRIPE_CONFIGS[block]


def gate_block(C: int) -> int:
    return next_pow2(C, minimum=16)


def _channel_stride_smallest(t: torch.Tensor) -> bool:
    # Channels-last walk order (also for channel slices of a channels-last tensor); any order is correct, this
    # one only decides which loads are coalesced.
    return t.stride(1) < t.stride(3)


def susa_into(x, group_weight, mean_w, mean_b, conv_w, conv_b, ln_w, ln_b, h_wise: bool, out, out_index):
    """Launch the three kernels. ``x [N, C, H, W]`` any strides; params fp32 contiguous (``conv_w [C, C]``);
    ``out [N, C_out, H, W]`` any strides, written at channels ``out_index`` (int32 [C]); ``ln_w`` None: no LN."""
    check_triton_device(x, out, op="pyengine::susa (triton)")
    N, C, H, W = x.shape
    if C > MAX_CHANNELS:
        from pyengine.backends import BackendUnavailableError
        raise BackendUnavailableError(f"pyengine::susa (triton): at most {MAX_CHANNELS} channels, got C={C}")
    R, S = (H, W) if h_wise else (W, H)
    sxn, sxc, sxh, sxw = x.stride()
    sxr, sxs = (sxh, sxw) if h_wise else (sxw, sxh)
    scratch = torch.empty((N, C, R), dtype=torch.float32, device=x.device)
    block = stripe_block(R, S)
    bc, warps = stripe_config(block, C)
    _susa_stripe_kernel[(N, triton.cdiv(C, bc))](x, group_weight, mean_w, mean_b, scratch, C, R, S, sxn, sxc,
                                                 sxr, sxs, BLOCK=block, BC=bc, num_warps=warps)
    ln = ln_w is not None
    _susa_gate_kernel[(N, triton.cdiv(R, GATE_BL))](
        scratch, conv_w, conv_b, ln_w if ln else conv_b, ln_b if ln else conv_b, C, R, LN_EPS,
        BC=gate_block(C), BL=GATE_BL, BK=GATE_BK, LN=ln, num_warps=GATE_WARPS[gate_block(C)])
    total = x.numel()
    apply_block = INTERP_APPLY_BLOCK if INTERPRETING else APPLY_BLOCK
    _susa_apply_kernel[(triton.cdiv(total, apply_block),)](
        x, scratch, out, out_index, total, C, out.shape[1], H, W, sxn, sxc, sxh, sxw, *out.stride(), int(h_wise),
        BLOCK=apply_block, CHANNELS_LAST=_channel_stride_smallest(x), num_warps=APPLY_WARPS)


def sm90_cases():
    cases = []
    for dt in SHIPPED_DTYPES:
        t = SIG[dt]
        for block, (bc, warps) in STRIPE_CONFIGS.items():
            cases.append(KernelCase(
                f"susa_stripe_{t}_b{block}_c{bc}", _susa_stripe_kernel,
                {"x_ptr": f"*{t}", "gw_ptr": "*fp32", "mw_ptr": "*fp32", "mb_ptr": "*fp32", "a_ptr": "*fp32",
                 "C": "i32", "R": "i32", "S": "i32", "sxn": "i32", "sxc": "i32", "sxr": "i32", "sxs": "i32",
                 "BLOCK": "constexpr", "BC": "constexpr"},
                {"BLOCK": block, "BC": bc}, num_warps=warps))
        for cl in (False, True):
            cases.append(KernelCase(
                f"susa_apply_{t}_{'cl' if cl else 'nchw'}", _susa_apply_kernel,
                {"x_ptr": f"*{t}", "gate_ptr": "*fp32", "out_ptr": f"*{t}", "idx_ptr": "*i32", "total": "i32",
                 "C": "i32", "C_out": "i32", "H": "i32", "W": "i32", "sxn": "i32", "sxc": "i32", "sxh": "i32", "sxw": "i32",
                 "son": "i32", "soc": "i32", "soh": "i32", "sow": "i32", "rows_are_h": "i32",
                 "BLOCK": "constexpr", "CHANNELS_LAST": "constexpr"},
                {"BLOCK": APPLY_BLOCK, "CHANNELS_LAST": cl}, num_warps=APPLY_WARPS))
    for bc, warps in GATE_WARPS.items():
        for ln in (False, True):
            cases.append(KernelCase(
                f"susa_gate_c{bc}_{'ln' if ln else 'noln'}", _susa_gate_kernel,
                {"a_ptr": "*fp32", "cw_ptr": "*fp32", "cb_ptr": "*fp32", "lw_ptr": "*fp32", "lb_ptr": "*fp32",
                 "C": "i32", "R": "i32", "eps": "fp32", "BC": "constexpr", "BL": "constexpr", "BK": "constexpr",
                 "LN": "constexpr"},
                {"BC": bc, "BL": GATE_BL, "BK": GATE_BK, "LN": ln}, num_warps=warps))
    return cases
