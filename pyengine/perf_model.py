"""A roofline performance model of the H200 for pyengine's kernels and the headline model forwards.

Every kernel launch gets counted FLOPs and bytes, and the time the H200 would need at its measured peaks::

    predicted = max(flops / peak(precision), bytes / bandwidth) + launch overhead

summed over the launches of one forward. The launches are the recorded ones (``pyengine/data/
launch_variants.json``, :mod:`pyengine.launch_record`): the exact shapes, dtypes and configurations a real
forward of MHFormer-351, TPC-MHFormer-351, MixSTE-243 and HoT-MixSTE-243 launches, at batch 2 and the bench's
throughput batch, in fp32 / TF32 / bf16.

Counting (per kernel below): FLOPs are the arithmetic the kernel must do; for the GEMM and attention kernels that
is SPEC.md §1's count (2 x MACs of the products, what :func:`pyengine.bench.count_flops` counts on the eager model;
``tests/bench/test_perf_model.py`` checks the two agree per forward), against the tensor-core peak of the precision
(bf16/fp16, TF32) or the fp32 FMA peak (exact fp32 dots and every elementwise / reduction kernel, one FLOP per
add, multiply or compare). Bytes are each kernel's compulsory DRAM traffic: every input read once, every output
written once (unused pointer arguments not counted; re-reads that L2 serves not counted).

What the model leaves out, on purpose, so that ``measured / predicted`` shows it: occupancy and wave quantisation
(a one-program-per-sample kernel cannot fill 132 SMs), padding (head dims padded to a power of two compute on
zeros), L2 misses beyond the compulsory traffic, and the host (Python launch cost above the GPU's ~4 us).

``python -m pyengine.perf_model`` prints the per-kernel table of every recorded forward.
"""
import dataclasses
import re
from typing import Dict, List, Optional

# H200 peaks (issue 14; measured on the box by benchmarks/test_bench_peaks.py for bf16 and copy)
PEAK_FLOPS = {"bf16": 790e12, "fp16": 790e12, "tf32": 395e12, "fp32": 60e12}
BANDWIDTH = 4.3e12  # bytes/s, device copy (read + write counted)
LAUNCH_S = 4e-6  # per kernel launch (3-5 us)
DEVICE = "H200"
ELEMENT_BYTES = {"fp64": 8, "fp32": 4, "fp16": 2, "bf16": 2, "int64": 8, "int32": 4, "int16": 2, "int8": 1,
                 "uint8": 1}
_DESC = re.compile(r"^(\w+)\[([\d,]*)\]$")


@dataclasses.dataclass
class Cost:
    """Counted work of one launch and its roofline time on the H200."""
    kernel: str
    flops: float
    bytes: float
    peak: str  # key of PEAK_FLOPS the FLOPs run at

    @property
    def compute_s(self):
        return self.flops / PEAK_FLOPS[self.peak]

    @property
    def memory_s(self):
        return self.bytes / BANDWIDTH

    @property
    def seconds(self):
        return roofline_seconds(self.flops, self.bytes, self.peak)

    @property
    def bound(self):
        return "compute" if self.compute_s >= self.memory_s else "memory"


def roofline_seconds(flops, nbytes, peak, launches=1):
    """``max(flops / PEAK_FLOPS[peak], nbytes / BANDWIDTH) + launches * LAUNCH_S``."""
    if peak not in PEAK_FLOPS:
        raise ValueError(f"peak: expected one of {sorted(PEAK_FLOPS)}, got {peak!r}")
    return max(flops / PEAK_FLOPS[peak], nbytes / BANDWIDTH) + launches * LAUNCH_S


def _tensor(desc, arg):
    """``(dtype, shape)`` of a recorded tensor argument (``"bf16[2,351,512]"``)."""
    m = _DESC.match(desc) if isinstance(desc, str) else None
    if m is None or m.group(1) not in ELEMENT_BYTES:
        raise ValueError(f"{arg}: expected a recorded tensor like 'bf16[2,351,512]', got {desc!r}")
    return m.group(1), [int(s) for s in m.group(2).split(",") if s]


def _esize(args, arg):
    return ELEMENT_BYTES[_tensor(args[arg], arg)[0]]


def _dot_peak(dtype, tf32):
    if dtype in ("bf16", "fp16"):
        return dtype
    return "tf32" if tf32 else "fp32"


# --------------------------------------------------------------------------------------------------------------
# Per-kernel counts: ``f(args, grid) -> (flops, bytes, peak)``; ``args`` are a recorded launch's arguments by name
# (scalars and constexprs as values, tensors as "dtype[shape]"), ``grid`` its 3 grid sizes.
# --------------------------------------------------------------------------------------------------------------
def _ln_linear(a, grid):
    """Grouped GEMM, G = grid[1] groups per launch: ``y[:, g] = act(LN(x[:, c_g:c_g+K]) @ W[g].T + b[g]) (+ r)``.
    FLOPs 2 M N K per group; bytes x slice + W + bias (+ LN weight, bias) + y (+ residual)."""
    e = _esize(a, "x_ptr")
    M, N, K, G = a["M"], a["N"], a["K"], grid[1]
    nbytes = e * G * (M * K + N * K + N + M * N * (1 + a["has_res"]) + (2 * K if a["HAS_LN"] else 0))
    return 2 * M * N * K * G, nbytes, _dot_peak(_tensor(a["x_ptr"], "x_ptr")[0], a["DOT_PRECISION"] == "tf32")


def _attention(a, grid):
    """Flash attention over ``[B, G, N, H, D]``: FLOPs 4 B G H Nq Nk D (QK^T and PV); bytes q, k, v, out once."""
    e = _esize(a, "q_ptr")
    B = _tensor(a["q_ptr"], "q_ptr")[1][0]
    G, H, D, Nq, Nk = a["G"], a["H"], a["D"], a["Nq"], a["Nk"]
    flops = 4 * B * G * H * Nq * Nk * D
    return flops, e * B * G * H * D * (2 * Nq + 2 * Nk), _dot_peak(_tensor(a["q_ptr"], "q_ptr")[0],
                                                                   a["ALLOW_TF32"])


def _layernorm(a, grid):
    """LayerNorm of ``[M, K]`` rows (+ a P-row pattern add, + residual): ~8 FLOPs per element (mean, deviation,
    square, sum, scale, shift); bytes x, y (+ add pattern, + residual) and the affine parameters."""
    e = _esize(a, "x_ptr")
    M, K = a["M"], a["K"]
    nbytes = e * (2 * M * K + 2 * K + (a["P"] * K if a["HAS_ADD"] else 0) + (M * K if a["HAS_RES"] else 0))
    return 8 * M * K + (M * K if a["HAS_ADD"] else 0) + (M * K if a["HAS_RES"] else 0), nbytes, "fp32"


def _gather_tokens(a, grid):
    """``out[b, t] = x[b, index[b, t]] (+ add[t])``, grid[0] = B * keep rows of R: bytes read + write + index."""
    e = _esize(a, "x_ptr")
    rows, R = grid[0], a["R"]
    nbytes = 2 * e * rows * R + 8 * rows + (e * a["keep"] * a["A"] if a["HAS_ADD"] else 0)
    return (rows * R if a["HAS_ADD"] else 0), nbytes, "fp32"


def _tpc_distance(a, grid):
    """Pairwise distances of F tokens of C channels, per sample (grid[0]): upper triangle only, 3 FLOPs per
    pair and channel (subtract, multiply, add: no FMA, the kernel is built without contraction); bytes the
    features once and the full ``[F, F]`` fp32 matrix written."""
    e = _esize(a, "x_ptr")
    nb, F, C = grid[0], a["F"], a["C"]
    return 3 * C * nb * F * (F + 1) // 2, nb * (e * F * C + 4 * F * F), "fp32"


def _tpc_select(a, grid):
    """DPC-kNN select per sample (grid[0]) on its ``[F, F]`` distances: two passes over the matrix (density from
    the k nearest, then delta) and a ranking by counting; ~(3 k + 8) FLOPs per matrix entry; bytes the two
    passes (the matrix does not stay in L2 at large batches), the noise and the kept indices."""
    nb, F = grid[0], a["F"]
    nbytes = nb * (2 * 4 * F * F + 8 * a["keep"] + (4 * F if a["HAS_NOISE"] else 0))
    return nb * (3 * a["k"] + 8) * F * F, nbytes, "fp32"


KERNELS = {"_ln_linear_kernel": _ln_linear, "_attention_fwd_kernel": _attention, "_layernorm_kernel": _layernorm,
           "_gather_tokens_kernel": _gather_tokens, "_tpc_distance_kernel": _tpc_distance,
           "_tpc_select_kernel": _tpc_select}


def launch_cost(kernel: str, args: Dict, grid) -> Cost:
    """The :class:`Cost` of one launch of ``kernel`` (its function name or ``module:function``)."""
    name = kernel.split(":")[-1]
    if name not in KERNELS:
        raise KeyError(f"kernel: no performance model for {kernel!r} (modelled: {sorted(KERNELS)}); add one to "
                       "pyengine/perf_model.py")
    grid = list(grid) + [1] * (3 - len(grid))
    flops, nbytes, peak = KERNELS[name](args, grid)
    return Cost(name, float(flops), float(nbytes), peak)


@dataclasses.dataclass
class ForwardPrediction:
    label: str
    rows: List[Dict]  # per distinct launch: kernel, count, cost (one call), seconds (all calls)
    seconds: float
    flops: float
    dot_flops: float  # the GEMM + attention FLOPs (SPEC's count)
    bytes: float
    launches: int


_DATA = []


def recorded(data=None):
    if data is not None:
        return data
    if not _DATA:
        from pyengine.launch_record import load_file
        _DATA.append(load_file())
    return _DATA[0]


def predict_forward(label: str, data=None) -> ForwardPrediction:
    """The prediction of one recorded forward (``"mhformer-351/bf16/b2"``)."""
    data = recorded(data)
    if label not in data["forwards"]:
        raise KeyError(f"label: no recorded forward {label!r} (recorded: {', '.join(sorted(data['forwards']))})")
    rows, seconds, flops, dot, nbytes, n = [], 0.0, 0.0, 0.0, 0.0, 0
    for launch in data["forwards"][label]:
        kernel = data["variants"][launch["v"]]["kernel"]
        cost = launch_cost(kernel, launch["args"], launch["grid"])
        c = launch["count"]
        rows.append({"kernel": cost.kernel, "count": c, "cost": cost, "seconds": c * cost.seconds,
                     "args": launch["args"], "grid": launch["grid"]})
        seconds += c * cost.seconds
        flops += c * cost.flops
        dot += c * cost.flops if cost.kernel in ("_ln_linear_kernel", "_attention_fwd_kernel") else 0
        nbytes += c * cost.bytes
        n += c
    return ForwardPrediction(label, rows, seconds, flops, dot, nbytes, n)


PRECISION_OF_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def predict_row(extra: Dict, data=None) -> Optional[tuple]:
    """``(seconds, basis)`` for a benchmark row's ``extra_info``, or None when nothing can be predicted:

    * basis ``"k"``: a model row whose forward is recorded (full size, headline case, batch, precision): the
      sum over that forward's kernel launches. All rows of the forward (eager, compile, every backend) get it:
      it is the H200 time of the work pyengine's Triton kernels do, so the ratio says how far each is from it.
    * basis ``"c"``: any other row with counted ``flops`` / ``bytes`` (op benchmarks, small sizes): one launch
      at the roofline of its counts, at the peak of its dtype (fp32: the FMA peak; ``extra["tf32"]``: TF32;
      the peak rows: the matmul's dtype from its name)."""
    precision = PRECISION_OF_DTYPE.get(extra.get("dtype"))
    if extra.get("impl") == "peak" and precision is None:  # "matmul-bf16-8192" / "copy-1024MiB"
        m = re.match(r"matmul-(\w+?)-", str(extra.get("variant", "")))
        precision = m.group(1) if m and m.group(1) in PEAK_FLOPS else "fp32"
    if precision is None:
        return None
    if extra.get("case") and extra.get("size") == "full" and extra.get("windows"):
        from pyengine.launch_record import forward_label
        label = forward_label(extra["case"], "tf32" if extra.get("tf32") else precision, extra["windows"])
        if label in recorded(data)["forwards"]:
            return predict_forward(label, data).seconds, "k"
    if extra.get("flops") or extra.get("bytes"):
        peak = "tf32" if (precision == "fp32" and extra.get("tf32")) else precision
        return roofline_seconds(extra.get("flops") or 0, extra.get("bytes") or 0, peak), "c"
    return None


def table(label: str, data=None) -> str:
    """Markdown: per distinct launch of the forward, calls, FLOPs, bytes, bound and predicted time."""
    p = predict_forward(label, data)
    out = [f"### {label}: {p.seconds * 1e3:.3f} ms predicted on the {DEVICE} ({p.launches} launches, "
           f"{p.flops / 1e9:.3f} GFLOP, {p.bytes / 1e6:.1f} MB)", "",
           "| kernel | shape | calls | GFLOP/call | MB/call | peak | bound | us/call | us total |",
           "|---|---|---:|---:|---:|---|---|---:|---:|"]
    for r in sorted(p.rows, key=lambda r: -r["seconds"]):
        c, a = r["cost"], r["args"]
        shape = ", ".join(f"{k}={a[k]}" for k in ("M", "N", "K", "Nq", "Nk", "H", "D", "F", "C", "R", "keep")
                          if k in a)
        out.append(f"| `{c.kernel.strip('_')}` | {shape}, grid {tuple(r['grid'])} | {r['count']} | "
                   f"{c.flops / 1e9:.4g} | {c.bytes / 1e6:.4g} | {c.peak} | {c.bound} | {c.seconds * 1e6:.2f} | "
                   f"{r['seconds'] * 1e6:.1f} |")
    return "\n".join(out) + "\n"


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description="H200 roofline prediction of the recorded forwards")
    parser.add_argument("labels", nargs="*", help="forwards (default: all), e.g. mhformer-351/bf16/b2")
    args = parser.parse_args(argv)
    data = recorded()
    for label in args.labels or list(data["forwards"]):
        print(table(label, data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
