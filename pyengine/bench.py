"""``pyengine bench`` and the measuring machinery shared with ``benchmarks/`` (docs/benchmarks.md).

One *row* is one way of running one model case at one batch: eager PyTorch (fp32 and the chosen precision),
``torch.compile`` (default, max-autotune, reduce-overhead) and ``pyengine.load(..., backend=b)`` per backend.
A row that cannot run here is *skipped with its reason* (``Skip``), never silently replaced: a backend that has
not landed raises ``BackendUnavailableError``, which becomes a skipped row, so rows light up as backends land.

Derived figures per row: windows/s and output frames/s, speedup over eager (same dtype) and over the best
torch.compile mode, achieved TFLOP/s from counted FLOPs, achieved GB/s from counted bytes, and both as a fraction
of the device's peaks measured in the same run (a bf16 matmul, a device copy; fp32 matmul / memcpy on CPU).
"""
import argparse
import copy
import os
import statistics
import time

import torch

from .arch import SPECS as _SPECS

# ---------------------------------------------------------------------------------------------------------------
# Model cases. "full" = the published sizes (used on CUDA); "small" = a reduced width/depth with the same frame
# counts where affordable (used on CPU and whenever benchmarks are disabled, i.e. CI). PYENGINE_BENCH_SIZE
# overrides the choice.
# ---------------------------------------------------------------------------------------------------------------
_SMALL_MHF = dict(channel=64, d_hid=128)
_SMALL_MIX = dict(frames=81, channel=32, depth=2)
_SMALL_MB = dict(maxlen=81, dim_feat=32, dim_rep=32, depth=2)  # MotionBERT: same frames as the small MixSTE
CASES = {  # name -> (arch, full config, small config); listed in priority order (a time budget cuts the tail)
    "mhformer-351": ("mhformer", dict(frames=351), dict(frames=351, **_SMALL_MHF)),
    "tpc_mhformer-351": ("tpc_mhformer", dict(frames=351, token_num=117, layer_index=1),
                         dict(frames=81, token_num=27, layer_index=1, **_SMALL_MHF)),
    "mixste-243": ("mixste", dict(frames=243), dict(_SMALL_MIX)),
    "hot_mixste-243": ("hot_mixste", dict(frames=243, token_num=81, layer_index=3),
                       dict(token_num=27, layer_index=1, **_SMALL_MIX)),
    "motionbert-243": ("motionbert", dict(dim_feat=512, mlp_ratio=2, maxlen=243), dict(mlp_ratio=2, **_SMALL_MB)),
    "motionbert_lite-243": ("motionbert", dict(dim_feat=256, mlp_ratio=4, maxlen=243),
                            dict(mlp_ratio=4, **_SMALL_MB)),
    "hot_motionbert-243": ("hot_motionbert", dict(maxlen=243, token_num=81, layer_index=1),
                           dict(mlp_ratio=4, token_num=27, layer_index=1, **_SMALL_MB)),
    "mhformer-243": ("mhformer", dict(frames=243), dict(frames=243, **_SMALL_MHF)),
    "mhformer-81": ("mhformer", dict(frames=81), dict(frames=81, **_SMALL_MHF)),
    "mhformer-27": ("mhformer", dict(frames=27), dict(frames=27, **_SMALL_MHF)),
}
# `pyengine bench --arch A` starts from this case's config (then applies the user's overrides).
ARCH_DEFAULT_CASE = {"mhformer": "mhformer-351", "tpc_mhformer": "tpc_mhformer-351", "mixste": "mixste-243",
                     "hot_mixste": "hot_mixste-243", "tpc_mixste": None, "motionbert": "motionbert-243",
                     "hot_motionbert": "hot_motionbert-243"}
_TPC_MIXSTE = (dict(frames=243, token_num=61, layer_index=7), dict(token_num=27, layer_index=1, **_SMALL_MIX))
SEQ2FRAME = tuple(n for n, s in _SPECS.items() if s.io == "seq2frame")  # one output frame per window at evaluation
# Windows per call: latency (1 and 2 windows) and throughput (a large batch; smaller at the small sizes).
LATENCY_BATCHES = (1, 2)
THROUGHPUT_BATCH = {"full": {"mhformer": 256, "tpc_mhformer": 256, "mixste": 32, "hot_mixste": 32,
                             "tpc_mixste": 32, "motionbert": 32, "hot_motionbert": 32},
                    "small": {"mhformer": 8, "tpc_mhformer": 8, "mixste": 8, "hot_mixste": 8, "tpc_mixste": 8,
                              "motionbert": 8, "hot_motionbert": 8}}
COMPILE_MODES = ("default", "max-autotune", "reduce-overhead")
PYENGINE_BACKENDS = ("reference", "triton", "cuda", "cpp")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHORT = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


class Skip(Exception):
    """A row that cannot run here; the message is the reason recorded in the report."""


def default_device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device):
    """The chosen precision: bf16 on CUDA (tensor cores), fp32 on CPU (no fast bf16 path there); the environment
    variable PYENGINE_BENCH_DTYPE (float32 / bfloat16 / float16) wins (CI collects the GPU's rows with it)."""
    forced = os.environ.get("PYENGINE_BENCH_DTYPE")
    if forced:
        if forced not in DTYPES:
            raise ValueError(f"PYENGINE_BENCH_DTYPE: expected one of {sorted(DTYPES)}, got {forced!r}")
        return DTYPES[forced]
    return torch.bfloat16 if str(device).startswith("cuda") else torch.float32


def size_tier(device, benchmark_disabled=False):
    """``full`` on CUDA with timing on, else ``small``; the environment variable PYENGINE_BENCH_SIZE wins."""
    forced = os.environ.get("PYENGINE_BENCH_SIZE")
    if forced:
        if forced not in ("full", "small"):
            raise ValueError(f"PYENGINE_BENCH_SIZE: expected 'full' or 'small', got {forced!r}")
        return forced
    return "full" if str(device).startswith("cuda") and not benchmark_disabled else "small"


def case_config(case, size):
    arch, full, small = CASES[case]
    return arch, dict(full if size == "full" else small)


def batches(arch, size):
    return (*LATENCY_BATCHES, THROUGHPUT_BATCH[size][arch])


def regime(batch):
    return "latency" if batch in LATENCY_BATCHES else "throughput"


_MODELS = {}


def model_class(arch):
    """The eager reference class of ``arch``: ``pyengine.arch.MODELS``, plus MotionBERT / HoT-MotionBERT
    (pyengine.models.motionbert) until the loader registers them there."""
    from .arch import MODELS
    from .models import HoTMotionBERT, MotionBERT

    return {"motionbert": MotionBERT, "hot_motionbert": HoTMotionBERT, **MODELS}[arch]


def input_shape(model, batch):
    """``[batch, frames, joints, channels]``: 2 channels (x, y), 3 for MotionBERT (``dim_in``: + confidence)."""
    return (batch, model.frames, model.n_joints, getattr(model, "dim_in", 2))


def build_model(arch, config, seed=0):
    """The eager fp32 reference model on CPU with deterministic random weights (cached per config)."""
    from .testing import randomize_

    key = (arch, tuple(sorted(config.items())), seed)
    if key not in _MODELS:
        _MODELS[key] = randomize_(model_class(arch)(**config), seed=seed).eval()
    return _MODELS[key]


def make_inputs(model, batch, dtype, device, copies=8, seed=0):
    """``copies`` distinct input batches (rotated between calls so no call reuses the previous one's input)."""
    gen = torch.Generator().manual_seed(seed)
    shape = input_shape(model, batch)
    return [(0.3 * torch.randn(shape, generator=gen)).to(device=device, dtype=dtype) for _ in range(copies)]


# ---------------------------------------------------------------------------------------------------------------
# Counting. FLOPs follow SPEC.md §1: 2 x MACs of every linear layer (incl. 1x1 convs) and attention product,
# counted by torch.utils.flop_counter on the eager model (checked against SPEC's numbers in tests/test_bench.py).
# Bytes are the compulsory traffic: weights + input + output, each read/written once; so GB/s is a lower bound
# on the DRAM bandwidth a row used (the real traffic adds activations).
# ---------------------------------------------------------------------------------------------------------------
LINEAR_OPS = ("aten.addmm", "aten.mm", "aten.convolution")


@torch.no_grad()
def count_flops(model, x):
    """``{"total", "linear", "attention"}`` FLOPs of one call ``model(x)`` (any batch, device, dtype)."""
    from torch.utils.flop_counter import FlopCounterMode

    # The module tracker inside FlopCounterMode trips over expanded parameters that require grad (HoT's x_token).
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
    per_op = {str(k): v for k, v in counter.get_flop_counts().get("Global", {}).items()}
    linear = sum(v for k, v in per_op.items() if k in LINEAR_OPS)
    total = counter.get_total_flops()
    return {"total": total, "linear": linear, "attention": total - linear}


def tensor_bytes(obj):
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(tensor_bytes(o) for o in obj)
    return 0


def count_bytes(model, x, out, dtype=None):
    """Compulsory bytes of one call: parameters and buffers (at ``dtype`` if given) + input + output."""
    weights = sum(t.numel() * (torch.empty((), dtype=dtype).element_size() if dtype and t.is_floating_point()
                               else t.element_size())
                  for t in (*model.parameters(), *model.buffers()))
    return weights + tensor_bytes(x) + tensor_bytes(out)


_FLOPS = {}


def model_flops(arch, config):
    """FLOPs of one window (batch 1) of ``arch(**config)``: counted on the meta device (no compute), or on CPU
    for the TPC models, whose token selection needs real values."""
    key = (arch, tuple(sorted(config.items())))
    if key not in _FLOPS:
        try:
            with torch.device("meta"):
                model = model_class(arch)(**config).eval()
                x = torch.empty(input_shape(model, 1))
            _FLOPS[key] = count_flops(model, x)
        except RuntimeError:  # data-dependent (Tensor.item) on meta tensors
            model = build_model(arch, config)
            _FLOPS[key] = count_flops(model, make_inputs(model, 1, torch.float32, "cpu", copies=1)[0])
    return _FLOPS[key]


def case_counts(arch, config, batch, dtype):
    """FLOPs (total, linear, attention) and compulsory bytes of one call at ``batch`` windows (FLOPs scale
    linearly with the batch; the weights are read once per call)."""
    flops = {k: v * batch for k, v in model_flops(arch, config).items()}
    model = build_model(arch, config)
    x = torch.empty(input_shape(model, batch), dtype=dtype, device="meta")
    out_frames = model.token_num if arch in ("tpc_mhformer", "tpc_mixste") else model.frames
    out = torch.empty(batch, out_frames, model.n_joints, 3, dtype=dtype, device="meta")
    return flops, count_bytes(model, x, out, dtype)


# ---------------------------------------------------------------------------------------------------------------
# Rows: the callables to time.
# ---------------------------------------------------------------------------------------------------------------
def row_ids(dtype, device):
    """Every row for one case as ``(impl, variant, dtype)``, in table order."""
    rows = [("eager", "fp32", torch.float32)]
    if dtype != torch.float32:
        rows.append(("eager", SHORT[dtype], dtype))
    rows += [("compile", mode, dtype) for mode in COMPILE_MODES]
    # pyengine at the chosen precision and, below it, in fp32 too (the fp32 kernels are checked and timed as well)
    rows += [("pyengine", b, d) for d in dict.fromkeys((dtype, torch.float32)) for b in PYENGINE_BACKENDS]
    return rows


def row_name(impl, variant, dtype):
    return f"{impl}-{variant}" if impl == "eager" else f"{impl}-{variant}-{SHORT[dtype]}"


_COMPILED = {}


def make_runner(model, impl, variant, dtype, device):
    """A callable ``f(x)`` for the row, on ``device`` at ``dtype``; raises ``Skip`` with the reason if the row
    cannot run here. ``model`` is the eager fp32 CPU model (left untouched)."""
    cuda = str(device).startswith("cuda")
    if impl == "eager":
        return copy.deepcopy(model).to(device=device, dtype=dtype)
    if impl == "compile":
        if not cuda and os.environ.get("PYENGINE_BENCH_COMPILE") != "1":
            raise Skip("torch.compile rows run on CUDA only by default (inductor's CPU build of these models "
                       "takes minutes on a 2-core box); set PYENGINE_BENCH_COMPILE=1 to run them")
        if variant == "reduce-overhead" and not cuda:
            raise Skip("torch.compile mode 'reduce-overhead' uses CUDA graphs: CUDA only")
        # One compiled module per (model, mode, dtype), reused across batches; dynamic=False specialises each
        # batch size (what a deployment with a fixed batch would do).
        key = (id(model), variant, dtype, str(device))
        if key not in _COMPILED:
            eager = copy.deepcopy(model).to(device=device, dtype=dtype)
            _COMPILED[key] = torch.compile(eager, mode=None if variant == "default" else variant, dynamic=False)
        return _COMPILED[key]
    if impl == "pyengine":
        from .backends import BackendUnavailableError
        from .load import load

        if variant in ("triton", "cuda") and not cuda:
            raise Skip(f"pyengine backend {variant!r} runs on CUDA only (Triton's CPU interpreter is not a "
                       f"benchmark)")
        if variant == "cpp" and cuda:
            raise Skip("pyengine backend 'cpp' is the CPU backend; this run is on CUDA")
        try:
            return load(model, backend=variant, dtype=dtype, device=device)
        except BackendUnavailableError as exc:
            raise Skip(f"pyengine backend {variant!r} unavailable: {exc}") from exc
    raise ValueError(f"impl: expected eager, compile or pyengine, got {impl!r}")


def warmup_calls(impl, variant):
    """Calls before timing: compile rows compile on the first call and CUDA graphs record on the third."""
    return 5 if impl == "compile" else 2


# ---------------------------------------------------------------------------------------------------------------
# Timing and peaks.
# ---------------------------------------------------------------------------------------------------------------
def synchronize(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


@torch.no_grad()
def time_calls(fn, inputs, device, warmup=2, min_time=0.5, min_reps=5, max_reps=200):
    """Per-call seconds of ``fn(inputs[i % len(inputs)])`` after ``warmup`` calls: CUDA events on CUDA,
    ``time.perf_counter`` on CPU. Repeats until ``min_time`` seconds and ``min_reps`` calls (at most ``max_reps``)."""
    cuda = str(device).startswith("cuda")
    for i in range(warmup):
        fn(inputs[i % len(inputs)])
    synchronize(device)
    times, total, i = [], 0.0, 0
    while i < max_reps and (i < min_reps or total < min_time):
        x = inputs[i % len(inputs)]
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(x)
            end.record()
            end.synchronize()
            dt = start.elapsed_time(end) / 1e3
        else:
            t0 = time.perf_counter()
            fn(x)
            dt = time.perf_counter() - t0
        times.append(dt)
        total += dt
        i += 1
    return times


def peak_cases(device, small=False):
    """The two peak measurements: ``{name: (fn, args, flops, bytes)}``. On CUDA a bf16 8192^3 matmul and a
    1 GiB device copy; on CPU an fp32 matmul and a 128 MiB copy (smaller when ``small``)."""
    cuda = str(device).startswith("cuda")
    n = (8192 if cuda else 1024) if not small else 256
    mm_dtype = torch.bfloat16 if cuda else torch.float32
    a = torch.randn(n, n, device=device).to(mm_dtype)
    b = torch.randn(n, n, device=device).to(mm_dtype)
    numel = ((1 << 28) if cuda else (1 << 25)) if not small else (1 << 20)  # fp32 elements
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    return {f"matmul-{SHORT[mm_dtype]}-{n}": (torch.mm, (a, b), 2 * n ** 3, 3 * n * n * a.element_size()),
            f"copy-{numel * 4 >> 20}MiB": (lambda s: dst.copy_(s), (src,), 0, 2 * numel * 4)}


def measure_peaks(device, small=False):
    """``{"flops_per_s", "bytes_per_s", "matmul", "copy"}``: the best of a few timed calls of each peak case."""
    peaks = {}
    for name, (fn, args, flops, nbytes) in peak_cases(device, small).items():
        t = min(time_calls(lambda _x: fn(*args), [None], device, warmup=2, min_time=0.3, max_reps=20))
        if flops:
            peaks.update(flops_per_s=flops / t, matmul=name)
        else:
            peaks.update(bytes_per_s=nbytes / t, copy=name)
    return peaks


# ---------------------------------------------------------------------------------------------------------------
# Derived figures, shared by the CLI table and benchmarks/report.py. A row is a dict with "name", "group",
# "median" (s) and "extra" (the extra_info conventions in docs/benchmarks.md), or "skipped" (the reason).
# ---------------------------------------------------------------------------------------------------------------
def peaks_of(rows):
    """Peaks from the rows with ``extra["impl"] == "peak"`` (the fastest of each kind)."""
    peaks = {}
    for r in rows:
        e = r.get("extra", {})
        if e.get("impl") != "peak" or not r.get("median"):
            continue
        if e.get("flops"):
            peaks["flops_per_s"] = max(peaks.get("flops_per_s", 0), e["flops"] / r["median"])
        if e.get("bytes") and not e.get("flops"):
            peaks["bytes_per_s"] = max(peaks.get("bytes_per_s", 0), e["bytes"] / r["median"])
    return peaks


def derive(rows, peaks=None):
    """Add the derived figures to each timed row (in place) and return the rows. Speedups compare with rows of
    the same group: ``vs_eager`` with the eager row of the same dtype (else eager fp32), ``vs_compile`` with the
    fastest torch.compile row of the same dtype."""
    peaks = peaks or {}
    by_group = {}
    for r in rows:
        by_group.setdefault(r.get("group"), []).append(r)
    for group_rows in by_group.values():
        timed = [r for r in group_rows if r.get("median")]
        for r in timed:
            e, t = r.get("extra", {}), r["median"]
            d = r.setdefault("derived", {})
            if e.get("windows"):
                d["windows_per_s"] = e["windows"] / t
                d["frames_per_s"] = e["windows"] * e.get("frames_per_window", 1) / t
            if e.get("flops"):
                d["tflops"] = e["flops"] / t / 1e12
                if peaks.get("flops_per_s"):
                    d["flops_frac"] = e["flops"] / t / peaks["flops_per_s"]
            if e.get("bytes"):
                d["gbps"] = e["bytes"] / t / 1e9
                if peaks.get("bytes_per_s"):
                    d["bytes_frac"] = e["bytes"] / t / peaks["bytes_per_s"]
            if e.get("impl") in (None, "peak"):
                continue
            same = [o for o in timed if o.get("extra", {}).get("dtype") == e.get("dtype")]
            eager = ([o for o in same if o["extra"].get("impl") == "eager"]
                     or [o for o in timed if o.get("extra", {}).get("impl") == "eager"])
            if eager:
                d["vs_eager"] = eager[0]["median"] / t
            compiled = [o["median"] for o in same if o["extra"].get("impl") == "compile"]
            if compiled:
                d["vs_compile"] = min(compiled) / t
    return rows


def _fmt(value, spec, suffix=""):
    return "–" if value is None else f"{value:{spec}}{suffix}"


TABLE_HEADER = ("| row | median (ms) | windows/s | frames/s | vs eager | vs best compile | TFLOP/s | % peak FLOP/s "
                "| GB/s (compulsory) | % peak BW |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def table_row(name, r):
    """One markdown table line for a row dict; a skipped row says so (its reason goes in ``skip_notes``)."""
    if r.get("skipped"):
        return f"| `{name}` | skipped | | | | | | | | |"
    d = r.get("derived", {})
    pct = lambda k: None if d.get(k) is None else 100 * d[k]  # noqa: E731
    return (f"| `{name}` | {r['median'] * 1e3:.3f} | {_fmt(d.get('windows_per_s'), '.1f')} | "
            f"{_fmt(d.get('frames_per_s'), '.1f')} | {_fmt(d.get('vs_eager'), '.2f', 'x')} | "
            f"{_fmt(d.get('vs_compile'), '.2f', 'x')} | {_fmt(d.get('tflops'), '.3g')} | "
            f"{_fmt(pct('flops_frac'), '.3g', '%')} | {_fmt(d.get('gbps'), '.3g')} | "
            f"{_fmt(pct('bytes_frac'), '.3g', '%')} |")


def skip_notes(rows):
    """Markdown lines listing each distinct skip reason once, with the rows it applies to."""
    reasons = {}
    for r in rows:
        if r.get("skipped"):
            reasons.setdefault(r["skipped"], []).append(r["name"])
    lines = []
    for reason, names in reasons.items():
        names = list(dict.fromkeys(names))
        shown = ", ".join(f"`{n}`" for n in names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        lines.append(f"- skipped {shown}: {reason}")
    return lines


def plot_speedups(rows, path, title="speedup over eager (same dtype)"):
    """A horizontal bar chart of ``vs_eager`` per row, grouped by group; returns ``path``. Needs matplotlib
    (raises ImportError with the reason otherwise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(r.get("group") or "", r["name"], r["derived"]["vs_eager"]) for r in rows
            if r.get("derived", {}).get("vs_eager") is not None]
    if not bars:
        raise ValueError("plot_speedups: no row has a speedup over eager (no eager row, or nothing timed)")
    colours = {"eager": "#999999", "compile": "#4c72b0", "pyengine": "#dd8452"}
    fig, ax = plt.subplots(figsize=(9, 0.28 * len(bars) + 1.2))
    labels, ypos, y, last = [], [], 0, None
    for group, name, speedup in bars:
        if group != last and last is not None:
            y += 0.6  # a gap between groups
        last = group
        ax.barh(y, speedup, color=colours.get(name.split("-")[0], "#55a868"))
        ax.text(speedup, y, f" {speedup:.2f}x", va="center", fontsize=7)
        labels.append(f"{group}  {name}" if group else name)
        ypos.append(y)
        y += 1
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(ypos, labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("speedup over eager (x)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------------------------
# The CLI: `pyengine bench`.
# ---------------------------------------------------------------------------------------------------------------
CONFIG_INTS = ("frames", "channel", "d_hid", "layers", "depth", "heads", "token_num", "layer_index")


def add_arguments(parser):
    """Add ``pyengine bench``'s options to ``parser`` (the sub-parser of the ``bench`` command)."""
    parser.description = ("Time one model architecture side by side: eager PyTorch (fp32 and --dtype), "
                          "torch.compile (default, max-autotune, reduce-overhead) and pyengine per backend, at "
                          "latency (1 and 2 windows) and throughput batches; print a markdown table with "
                          "windows/s, speedups, TFLOP/s and GB/s against the device's measured peaks.")
    parser.add_argument("--arch", default="mhformer", help="pose lifter: " + ", ".join(ARCH_DEFAULT_CASE)
                        + " (default mhformer)")
    parser.add_argument("--size", choices=["full", "small"], default=None,
                        help="model size: full (published) or small (reduced width/depth); default full on "
                             "CUDA, small on CPU")
    parser.add_argument("--device", default=None, help="torch device (default cuda if available, else cpu)")
    parser.add_argument("--dtype", default=None, choices=sorted(DTYPES),
                        help="the chosen precision (default bfloat16 on CUDA, float32 on CPU)")
    parser.add_argument("--batch", type=int, nargs="+", default=None,
                        help="windows per call (default: 1 2 and the throughput batch of the size)")
    parser.add_argument("--rows", default="eager,compile,pyengine",
                        help="comma list of row kinds: eager, compile, pyengine, or one row like "
                             "compile-default, pyengine-cpp (default all)")
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds of timed calls per row (default 0.5)")
    parser.add_argument("--plot", default=None, metavar="OUT.png", help="also write a speedup chart")
    for name in CONFIG_INTS:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=int, default=None,
                            help=f"hyperparameter {name} (published name)")
    return parser


def _config_for(args, size):
    if args.arch not in ARCH_DEFAULT_CASE:
        raise ValueError(f"--arch: expected one of {sorted(ARCH_DEFAULT_CASE)}, got {args.arch!r}")
    case = ARCH_DEFAULT_CASE[args.arch]
    config = dict((_TPC_MIXSTE[0] if size == "full" else _TPC_MIXSTE[1]) if case is None
                  else case_config(case, size)[1])
    config.update({k: getattr(args, k) for k in CONFIG_INTS if getattr(args, k, None) is not None})
    return config


def _wanted(impl, variant, selection):
    return any(s in (impl, f"{impl}-{variant}") for s in selection)


def bench_model(arch, config, batches_, device, dtype, selection=("eager", "compile", "pyengine"), min_time=0.5,
                log=None):
    """Time every selected row of one model at each batch; returns row dicts (timed or skipped)."""
    model = build_model(arch, config)
    rows = []
    for batch in batches_:
        group = f"{arch} {regime(batch)} b{batch}"
        for impl, variant, row_dtype in row_ids(dtype, device):
            if not _wanted(impl, variant, selection):
                continue
            flops, nbytes = case_counts(arch, config, batch, row_dtype)
            name = row_name(impl, variant, row_dtype)
            row = {"name": name, "group": group}
            try:
                fn = make_runner(model, impl, variant, row_dtype, device)
                inputs = make_inputs(model, batch, row_dtype, device)
                times = time_calls(fn, inputs, device, warmup=warmup_calls(impl, variant), min_time=min_time)
                row.update(median=statistics.median(times), min=min(times), rounds=len(times))
            except Skip as exc:
                row["skipped"] = str(exc)
            fpw = 1 if arch in SEQ2FRAME else config.get("frames", model.frames)
            row["extra"] = {"impl": impl, "variant": variant, "dtype": str(row_dtype).replace("torch.", ""),
                            "windows": batch, "frames_per_window": fpw, "flops": flops["total"], "bytes": nbytes}
            if log:
                log(f"{group} {name}: " + (f"skipped ({row['skipped']})" if "skipped" in row
                                           else f"{row['median'] * 1e3:.3f} ms"))
            rows.append(row)
    return rows


def run(args):
    """Run ``pyengine bench``; returns the exit code (0 ok, 2 bad usage)."""
    import sys

    try:
        device = torch.device(args.device or default_device())
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device: CUDA was asked for but torch.cuda.is_available() is False")
        dtype = DTYPES[args.dtype] if args.dtype else default_dtype(device)
        size = args.size or size_tier(device)
        config = _config_for(args, size)
        batches_ = args.batch or batches(args.arch, size)
        if any(b < 1 for b in batches_):
            raise ValueError(f"--batch: expected positive window counts, got {batches_}")
        selection = [s.strip() for s in args.rows.split(",") if s.strip()]
        known = {"eager", "compile", "pyengine"} | {f"{i}-{v}" for i, v, _ in row_ids(dtype, device)}
        bad = sorted(set(selection) - known)
        if bad or not selection:
            raise ValueError(f"--rows: unknown row kinds {bad}; expected some of {sorted(known)}")
        build_model(args.arch, config)  # bad hyperparameters fail here, as usage errors
    except (ValueError, TypeError, RuntimeError) as exc:
        print(f"pyengine bench: error: {exc}", file=sys.stderr)
        return 2
    peaks = measure_peaks(device)
    rows = bench_model(args.arch, config, batches_, device, dtype, selection, args.min_time,
                       log=lambda msg: print(msg, file=sys.stderr))
    derive(rows, peaks)
    cfg = ", ".join(f"{k}={v}" for k, v in config.items())
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"# pyengine bench: {args.arch} ({cfg}), size {size}, {name}, dtype {SHORT.get(dtype, dtype)}\n")
    print(f"peaks measured in this run: {peaks['flops_per_s'] / 1e12:.4g} TFLOP/s ({peaks['matmul']}), "
          f"{peaks['bytes_per_s'] / 1e9:.4g} GB/s ({peaks['copy']})\n")
    for group in dict.fromkeys(r["group"] for r in rows):
        print(f"## {group}\n\n{TABLE_HEADER}")
        for r in rows:
            if r["group"] == group:
                print(table_row(r["name"], r))
        print()
    print("\n".join(skip_notes(rows)) + "\n")
    if args.plot:
        try:
            plot_speedups(rows, args.plot, title=f"pyengine bench {args.arch} ({name}): speedup over eager")
            print(f"chart written to {args.plot}")
        except (ImportError, ValueError) as exc:
            print(f"pyengine bench: chart not written: {exc}", file=sys.stderr)
    return 0


def main(argv=None):
    """Stand-alone entry (``python -m pyengine.bench``) until the ``pyengine bench`` subcommand is wired."""
    return run(add_arguments(argparse.ArgumentParser(prog="pyengine bench")).parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
