"""Issue 19's CPU table: eager, pyengine (cpp and auto; fp32 and bf16), ONNX Runtime and OpenVINO, interleaved.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/cpu_check.py [--repeats 7] [--cases mhformer-81,...] [--dtypes fp32] [-o out.md]

Full-width models, random weights. Every round times each row once, in turn, so machine noise hits all rows alike;
the table gives the median over rounds, the speedup over eager fp32 and the relative error of the row's output
against fp64 eager. The anchors (OpenVINO fp32 / bf16, ONNX Runtime fp32) come from ``pyengine.bench.anchors``
and are skipped with the reason when their package is missing. ``--compile`` adds a ``torch.compile`` (default
mode) fp32 row: inductor's CPU build of these models takes minutes on two cores, so it is off by default."""
import argparse
import functools
import platform
import statistics
import subprocess
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
import pyengine  # noqa: E402
from pyengine.bench import Skip  # noqa: E402
from pyengine.bench.anchors import make_anchor  # noqa: E402
from pyengine.testing import randomize_, rel_error  # noqa: E402

CASES = {"mhformer-81 b16": ("mhformer", dict(frames=81), 16), "mhformer-351 b2": ("mhformer", dict(frames=351), 2),
         "hot_mixste-243 b1": ("hot_mixste", dict(frames=243, token_num=81, layer_index=3), 1),
         "mixste-243 b1": ("mixste", dict(frames=243), 1)}
# (row name, kind, dtype): the order of the table's columns
ROWS = [("eager fp32", "eager", torch.float32), ("compile fp32", "compile", torch.float32),
        ("ONNX Runtime fp32", "onnxruntime", torch.float32), ("OpenVINO fp32", "openvino", torch.float32),
        ("pyengine cpp fp32", "cpp", torch.float32), ("pyengine auto fp32", "auto", torch.float32),
        ("eager bf16", "eager", torch.bfloat16), ("pyengine auto bf16", "auto", torch.bfloat16),
        ("OpenVINO bf16", "openvino", torch.bfloat16)]


def _first(out):
    return out[0] if isinstance(out, tuple) else out


def build_row(ref, kind, dtype):
    """``run(x) -> output`` for one row (x a float32 pose batch, cast to the row's dtype), or raise ``Skip``."""
    if kind == "eager":
        import copy
        model = copy.deepcopy(ref).to(dtype)
        return lambda x: model(x.to(dtype))
    if kind == "compile":
        model = torch.compile(ref, dynamic=False)
        return model
    if kind in ("openvino", "onnxruntime"):
        # fp32 in, fp32 out; OpenVINO's bf16 is its inference precision
        return make_anchor(ref, kind, "bf16" if dtype == torch.bfloat16 else "fp32", "cpu")
    model = pyengine.load(ref, backend=kind, dtype=dtype)
    return lambda x: model(x.to(dtype))


def _bf16_error_spread(ref, runs, rows, batch, frames, n):
    """{row: [relative error]} of the bf16 rows over ``n`` inputs (seeds 100, 101, ...) against fp64 eager."""
    import copy
    ref64 = copy.deepcopy(ref).double()
    errs = {}
    with torch.no_grad():
        for s in range(n):
            x = torch.randn(batch, frames, 17, 2, generator=torch.Generator().manual_seed(100 + s)) * 0.3
            want = _first(ref64(x.double()))
            for name, kind, dtype in rows:
                if dtype == torch.bfloat16 and name in runs:
                    errs.setdefault(name, []).append(rel_error(_first(runs[name](x)).float(), want))
    return errs


def machine():
    cpu = platform.processor() or "cpu"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    flags = open("/proc/cpuinfo").read() if sys.platform.startswith("linux") else ""
    isa = [f for f in ("avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    versions = [f"torch {torch.__version__}"]
    for name in ("openvino", "onnxruntime"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            versions.append(f"{name} absent")
    return f"{cpu} ({', '.join(isa) or 'no AVX-512'}), {torch.get_num_threads()} threads; " + ", ".join(versions)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--cases", default=",".join(c.split()[0] for c in CASES),
                   help="comma list of " + ", ".join(c.split()[0] for c in CASES))
    p.add_argument("--compile", action="store_true", help="add the torch.compile fp32 row (slow to build)")
    p.add_argument("--error-inputs", type=int, default=5,
                   help="bf16 rows: also the error over this many more inputs (0: off)")
    p.add_argument("--dtypes", default="fp32,bf16",
                   help="comma list of fp32, bf16: the rows to run (bf16 is hours on CPUs without bf16 dot products)")
    p.add_argument("-o", "--output", default=None)
    args = p.parse_args(argv)
    wanted = [c for c in CASES if c.split()[0] in args.cases.split(",")]
    if not wanted:
        print(f"cpu_check: error: --cases: expected some of {[c.split()[0] for c in CASES]}, got {args.cases!r}",
              file=sys.stderr)
        return 2
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    if not args.dtypes or any(d not in dtypes for d in args.dtypes.split(",")):
        print(f"cpu_check: error: --dtypes: expected a comma list of fp32, bf16, got {args.dtypes!r}", file=sys.stderr)
        return 2
    wanted_dtypes = {dtypes[d] for d in args.dtypes.split(",")} | {torch.float32}  # eager fp32 is the baseline
    rows = [r for r in ROWS if (args.compile or r[1] != "compile")
            and (r[2] in wanted_dtypes and (r[2] != torch.float32 or "fp32" in args.dtypes.split(",") or r[1] == "eager"))]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = [f"# CPU: eager vs pyengine vs ONNX Runtime / OpenVINO, interleaved ({args.repeats} rounds, median)", "",
             f"{machine()}; commit {commit or '?'}; `benchmarks/cpu_check.py`", "",
             "Each cell: median ms, speedup over eager fp32, relative error vs fp64 eager.", "",
             "| case | " + " | ".join(r[0] for r in rows) + " |", "|---|" + "---|" * len(rows)]
    notes, spread = {}, {}
    for case in wanted:
        arch, cfg, batch = CASES[case]
        torch.manual_seed(0)
        ref = randomize_(pyengine.arch.MODELS[arch](**cfg), seed=0).eval()
        x = torch.randn(batch, cfg["frames"], 17, 2) * 0.3
        with torch.no_grad():
            want = _first(ref.double()(x.double()))
            ref.float()
            fns, runs, errs = {}, {}, {}
            for name, kind, dtype in rows:
                try:
                    runs[name] = run = build_row(ref, kind, dtype)
                    fn = functools.partial(run, x)
                    errs[name] = rel_error(_first(fn()).float(), want)  # also the warm-up call
                    fn()
                    fns[name] = fn
                except Skip as exc:
                    notes.setdefault(str(exc), []).append(f"{case} {name}")
            times = {name: [] for name in fns}
            for _ in range(args.repeats):
                for name, fn in fns.items():
                    t = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t)
        base = statistics.median(times["eager fp32"])
        cells = []
        for name, _, _ in rows:
            if name not in times:
                cells.append("skipped")
                continue
            t = statistics.median(times[name])
            cells.append(f"{t * 1e3:.0f} ms, **{base / t:.2f}x**, {errs[name]:.1e}")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
        if args.error_inputs:  # bf16 rows: the error over more inputs (one input's is noisy where tokens are selected)
            spread[case] = _bf16_error_spread(ref, runs, rows, batch, cfg["frames"], args.error_inputs)
    if spread:
        names = [name for name, _, dtype in rows if dtype == torch.bfloat16]
        lines += ["", f"bf16 relative error vs fp64 eager over {args.error_inputs} more inputs (mean / max; HoT's token "
                      "selection makes one input's error noisy):", "",
                  "| case | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
        for case, errs in spread.items():
            lines.append(f"| {case} | " + " | ".join(
                f"{statistics.mean(errs[n]):.2e} / {max(errs[n]):.2e}" if n in errs else "skipped" for n in names) + " |")
    for reason, where in notes.items():
        lines.append(f"\n- skipped {', '.join(where)}: {reason}")
    text = "\n".join(lines) + "\n"
    if args.output:
        open(args.output, "w").write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
