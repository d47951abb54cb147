"""The CLI: ``pyengine bench`` (and ``python -m pyengine.bench``): one architecture's rows, timed side by side,
as a markdown table."""
import argparse
import statistics

import torch

from .cases import (_TPC_MIXSTE, ARCH_DEFAULT_CASE, DTYPES, SEQ2FRAME, SHORT, batches, build_model, case_config,
                    default_device, default_dtype, make_inputs, regime, size_tier)
from .counting import case_counts
from .plot import plot_speedups
from .runners import Skip, make_runner, row_ids, row_name, warmup_calls
from .tables import TABLE_HEADER, derive, skip_notes, table_row
from .timing import measure_peaks, time_calls

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
                        help="comma list of row kinds: eager, compile, pyengine, on CPU also the anchors "
                             "openvino and onnxruntime, or one row like compile-default, pyengine-cpp, "
                             "openvino-bf16 (default eager,compile,pyengine)")
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
        known = {i for i, _, _ in row_ids(dtype, device)} | {f"{i}-{v}" for i, v, _ in row_ids(dtype, device)}
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
    """Stand-alone entry (``python -m pyengine.bench``), the same as ``pyengine bench``."""
    return run(add_arguments(argparse.ArgumentParser(prog="pyengine bench")).parse_args(argv))
