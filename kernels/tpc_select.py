"""Triton DPC-kNN token selection: the ``impl="triton"`` of ``pyengine::tpc_select`` (SPEC.md §2, TPC).

Two launches per call:

1. ``_tpc_distance_kernel``, grid ``(B, T, T)`` over ``TILE x TILE`` tiles of token pairs (only tiles with
   ``tj >= ti`` work): ``D_ij = sqrt(sum_c (x_ic - x_jc)^2) / sqrt(C)`` from direct differences, written to a
   ``[B, F, F]`` float32 scratch at ``(i, j)`` and, off the diagonal tiles, mirrored at ``(j, i)``, so ``D`` is
   symmetric bit for bit and ``D_ii == 0``; a NaN distance is stored as ``+inf`` (non-finite features, docs/tpc.md). The arithmetic is the one of ``csrc/tpc_select_cpu.cpp`` (so the three implementations agree to
   the bit on the distances): 16 fp32 partial sums (lane ``l`` takes channels ``c = l (mod 16)`` in order), the
   ``C mod 16`` tail channels summed in fp64, the lanes added to it in lane order in fp64, then
   ``sqrt(acc) * (1 / sqrt(C))`` in fp64 rounded to fp32. Launched with ``enable_fp_fusion=False`` (no FMA
   contraction, like the C++ build's ``-ffp-contract=off``).
2. ``_tpc_select_kernel``, one program per sample, over blocks of ``ROWS`` rows of ``D`` (each row complete,
   ``FBLOCK = next_pow2(F)`` wide):
   density ``rho_i = exp(-mean of the k smallest D_i.^2)`` (fp64, as the C++; + noise), the sample's largest
   distance, ``delta_i`` (nearest denser token, else that maximum), ``score = delta * rho`` (fp32), the rank by
   counting ``rank_i = #{j != center: s_j > s_i or (s_j == s_i and j < i)}``, the kept flags (``rank < n_rank``,
   plus the centre) and their positions in the ascending output by a running prefix sum. A NaN score (``inf * 0``)
   ranks as ``-inf``.
   Per-token vectors (rho, score) stay in registers as ``[FBLOCK]`` vectors; a row block's values are read
   out of them with a one-hot sum (exact: one value plus zeros).

fp16 / bf16 features are upcast to fp32 on load; all selection math is fp32 / fp64 as above. ``F <= MAX_F``.
"""
import torch
import triton
import triton.language as tl

from ._common import SIG, next_pow2

LANES = 16  # partial sums per distance: csrc/tpc_select_cpu.cpp kLanes
TILE = 32  # token pairs per distance program: TILE x TILE
DIST_WARPS = 8
MAX_F = 1024  # the select kernel holds whole rows of D (FBLOCK <= 1024 columns)
SCRATCH_FLOATS = 1 << 26  # at most 256 MiB of distance scratch per launch (larger batches run in chunks)


@triton.jit
def _tpc_distance_kernel(x_ptr, d_ptr, F, C, stride_xb, stride_xf,
                         TILE: tl.constexpr, LANES: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    ti = tl.program_id(1)
    tj = tl.program_id(2)
    if tj >= ti:  # upper triangle of tiles; each result is stored at (i, j) and (j, i)
        rows_i = ti * TILE + tl.arange(0, TILE)
        rows_j = tj * TILE + tl.arange(0, TILE)
        ok_i = rows_i < F
        ok_j = rows_j < F
        lane = tl.arange(0, LANES)
        xb = x_ptr + b * stride_xb
        ptr_i = xb + rows_i[:, None].to(tl.int64) * stride_xf + lane[None, :]
        ptr_j = xb + rows_j[:, None].to(tl.int64) * stride_xf + lane[None, :]
        acc = tl.zeros([TILE, TILE, LANES], dtype=tl.float32)
        c_main = (C // LANES) * LANES
        for c0 in range(0, c_main, LANES):
            xi = tl.load(ptr_i + c0, mask=ok_i[:, None], other=0.0).to(tl.float32)
            xj = tl.load(ptr_j + c0, mask=ok_j[:, None], other=0.0).to(tl.float32)
            diff = xi[:, None, :] - xj[None, :, :]
            acc += diff * diff
        total = tl.zeros([TILE, TILE], dtype=tl.float64)
        for c in range(c_main, C):  # tail channels, summed in fp64 first (as the C++)
            xi = tl.load(xb + rows_i.to(tl.int64) * stride_xf + c, mask=ok_i, other=0.0).to(tl.float32)
            xj = tl.load(xb + rows_j.to(tl.int64) * stride_xf + c, mask=ok_j, other=0.0).to(tl.float32)
            diff = xi.to(tl.float64)[:, None] - xj.to(tl.float64)[None, :]
            total += diff * diff
        for l in tl.static_range(LANES):  # then the lanes, in lane order
            total += tl.sum(tl.where(lane[None, None, :] == l, acc, 0.0), axis=2).to(tl.float64)
        # fp64 sqrt and division are correctly rounded on the GPU (sqrt.rn.f64, div.rn.f64), like std::sqrt and /
        inv_sqrt_c = 1.0 / tl.sqrt(tl.full([], C, tl.float64))
        dist = (tl.sqrt(total) * inv_sqrt_c).to(tl.float32)
        # non-finite features (docs/tpc.md): a NaN distance counts as +inf; a token stays at 0 from itself
        dist = tl.where(dist != dist, float("inf"), dist)
        dist = tl.where(rows_i[:, None] == rows_j[None, :], 0.0, dist)
        db = d_ptr + b * F * F
        ok = ok_i[:, None] & ok_j[None, :]
        tl.store(db + rows_i[:, None] * F + rows_j[None, :], dist, mask=ok)
        if tj > ti:  # the mirror; a diagonal tile computes (j, i) itself (writing both would store twice: a race)
            tl.store(db + rows_j[None, :] * F + rows_i[:, None], dist, mask=ok)


@triton.jit
def _pick(vec, cols, rows):
    """``vec[rows]`` for a per-token vector ``vec [FBLOCK]`` held in registers (one-hot sum: exact)."""
    return tl.sum(tl.where(cols[None, :] == rows[:, None], vec[None, :], 0.0), axis=1)


@triton.jit
def _tpc_select_kernel(d_ptr, noise_ptr, out_ptr, F, keep, n_rank, k, center, index_ties,
                       HAS_NOISE: tl.constexpr, FBLOCK: tl.constexpr, ROWS: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    db = d_ptr + b * F * F
    cols = tl.arange(0, FBLOCK)
    col_ok = cols < F
    rho_all = tl.zeros([FBLOCK], dtype=tl.float32)
    dist_max = tl.zeros([], dtype=tl.float32)
    # 1. density (k smallest distances of each row, the token itself included) and the sample's largest distance
    for r0 in range(0, F, ROWS):
        rows = r0 + tl.arange(0, ROWS)
        row_ok = rows < F
        ok = row_ok[:, None] & col_ok[None, :]
        d = tl.load(db + rows[:, None] * F + cols[None, :], mask=ok, other=float("inf"))
        dist_max = tl.maximum(dist_max, tl.max(tl.where(ok, d, 0.0)))
        mean_sq = tl.zeros([ROWS], dtype=tl.float64)
        for _ in range(k):  # ascending, as the C++ partial sort; take out one occurrence per step
            m = tl.min(d, axis=1)
            first = tl.min(tl.where(d == m[:, None], cols[None, :], FBLOCK), axis=1)
            d = tl.where(cols[None, :] == first[:, None], float("inf"), d)
            m64 = m.to(tl.float64)
            mean_sq += m64 * m64
        rho = tl.exp(-mean_sq / k).to(tl.float32)
        if HAS_NOISE:
            rho = rho + tl.load(noise_ptr + b * F + rows, mask=row_ok, other=0.0)
        rho = tl.where(row_ok, rho, 0.0)
        rho_all += tl.sum(tl.where(cols[None, :] == rows[:, None], rho[:, None], 0.0), axis=0)
    # 2. delta: distance to the nearest denser token, else the sample's largest distance; score = delta * rho
    score_all = tl.zeros([FBLOCK], dtype=tl.float32)
    for r0 in range(0, F, ROWS):
        rows = r0 + tl.arange(0, ROWS)
        row_ok = rows < F
        ok = row_ok[:, None] & col_ok[None, :]
        d = tl.load(db + rows[:, None] * F + cols[None, :], mask=ok, other=float("inf"))
        rho_i = _pick(rho_all, cols, rows)
        denser = rho_all[None, :] > rho_i[:, None]
        denser = denser | ((index_ties != 0) & (rho_all[None, :] == rho_i[:, None]) & (cols[None, :] < rows[:, None]))
        delta = tl.min(tl.where(denser & ok, d, dist_max), axis=1)
        score = delta * rho_i
        score = tl.where(score != score, float("-inf"), score)  # NaN (inf * 0) ranks as -inf (docs/tpc.md)
        score = tl.where(row_ok, score, 0.0)
        score_all += tl.sum(tl.where(cols[None, :] == rows[:, None], score[:, None], 0.0), axis=0)
    # 3. rank by counting (higher score first, equal scores: lower index), keep n_rank (+ centre), ascending
    competitor = col_ok & (cols != center)
    n_before = tl.zeros([], dtype=tl.int32)
    for r0 in range(0, F, ROWS):
        rows = r0 + tl.arange(0, ROWS)
        row_ok = rows < F
        s_i = _pick(score_all, cols, rows)
        beats = (score_all[None, :] > s_i[:, None]) | ((score_all[None, :] == s_i[:, None])
                                                       & (cols[None, :] < rows[:, None]))
        rank = tl.sum((beats & competitor[None, :]).to(tl.int32), axis=1)
        kept = row_ok & (((rank < n_rank) & (rows != center)) | (rows == center))
        kept_i = kept.to(tl.int32)
        pos = n_before + tl.cumsum(kept_i, axis=0) - kept_i
        tl.store(out_ptr + b * keep + pos, rows.to(tl.int64), mask=kept)
        n_before += tl.sum(kept_i, axis=0)


def select_config(F: int):
    """``(FBLOCK, ROWS, num_warps)`` for the select kernel: whole rows (FBLOCK = next_pow2(F) >= 32) and a row
    block of at most 4096 distances (fewer rows for wider rows), 16 per thread with 8 warps, since several
    ``[ROWS, FBLOCK]`` tiles are live at once (more spills registers)."""
    fblock = next_pow2(F, 32)
    rows = max(1, min(fblock, 4096 // fblock))
    return fblock, rows, 4 if fblock <= 32 else 8


def tpc_select_triton(x: torch.Tensor, keep: int, k: int, center: int, index_ties: bool, noise):
    """Launcher. ``x [B, F, C]`` float32/float16/bfloat16 with unit channel stride, ``center`` -1 for none,
    ``noise`` None or float32 ``[B, F]``. Returns int64 ``[B, keep]`` (ascending indices)."""
    B, F, C = x.shape
    if F > MAX_F:
        raise ValueError(f"x: the Triton tpc_select supports at most {MAX_F} tokens, got F={F}")
    if x.stride(2) != 1:
        x = x.contiguous()
    out = torch.full((B, keep), -1, dtype=torch.int64, device=x.device)  # poison: every slot must be written
    if B == 0:
        return out
    if noise is not None:
        noise = noise.to(torch.float32).contiguous()
    n_rank = keep - 1 if center >= 0 else keep
    fblock, rows, warps = select_config(F)
    tiles = triton.cdiv(F, TILE)
    chunk = max(1, SCRATCH_FLOATS // (F * F))
    for b0 in range(0, B, chunk):
        xb = x[b0:b0 + chunk]
        nb = xb.shape[0]
        dist = torch.empty((nb, F, F), dtype=torch.float32, device=x.device)
        _tpc_distance_kernel[(nb, tiles, tiles)](xb, dist, F, C, xb.stride(0), xb.stride(1), TILE=TILE, LANES=LANES,
                                                 num_warps=DIST_WARPS, enable_fp_fusion=False)
        nz = noise[b0:b0 + chunk] if noise is not None else dist
        _tpc_select_kernel[(nb,)](dist, nz, out[b0:b0 + chunk], F, keep, n_rank, k, center, int(index_ties),
                                  HAS_NOISE=noise is not None, FBLOCK=fblock, ROWS=rows, num_warps=warps,
                                  enable_fp_fusion=False)
    return out


def sm90_cases():
    """Every configuration the launcher can pick: the distance kernel per input dtype, the select kernel per
    FBLOCK (32 .. MAX_F) with and without noise."""
    from ._common import KernelCase

    cases = []
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        cases.append(KernelCase(
            f"tpc_distance-{SIG[dtype]}", _tpc_distance_kernel,
            {"x_ptr": f"*{SIG[dtype]}", "d_ptr": "*fp32", "F": "i32", "C": "i32", "stride_xb": "i64",
             "stride_xf": "i64", "TILE": "constexpr", "LANES": "constexpr"},
            {"TILE": TILE, "LANES": LANES}, num_warps=DIST_WARPS))
    fblock = 32
    while fblock <= MAX_F:
        fb, rows, warps = select_config(fblock)
        for has_noise in (False, True):
            cases.append(KernelCase(
                f"tpc_select-F{fb}-noise{int(has_noise)}", _tpc_select_kernel,
                {"d_ptr": "*fp32", "noise_ptr": "*fp32", "out_ptr": "*i64", "F": "i32", "keep": "i32",
                 "n_rank": "i32", "k": "i32", "center": "i32", "index_ties": "i32", "HAS_NOISE": "constexpr",
                 "FBLOCK": "constexpr", "ROWS": "constexpr"},
                {"HAS_NOISE": has_noise, "FBLOCK": fb, "ROWS": rows}, num_warps=warps))
        fblock *= 2
    return cases
