"""Turn pytest-benchmark results into a markdown table with derived figures (and optionally a speedup chart).

    python benchmarks/report.py RESULTS.json [MORE.json | PARTIAL.jsonl ...] [--chart speedup.png] > out.md

Several files are merged (e.g. the stages of benchmarks/gpu_suite.sh); a ``.jsonl`` file is the partial log
that benchmarks/conftest.py appends to as it goes (PYENGINE_BENCH_PARTIAL), read when a stage did not finish.
Derived columns (docs/benchmarks.md) come from each row's ``extra_info``: windows/s and frames/s, speedup over
the eager row of the same dtype and over the best torch.compile row, TFLOP/s and GB/s, and their fraction of
the peaks measured in the same run (rows with ``extra_info["impl"] == "peak"``, benchmarks/test_bench_peaks.py),
and the H200 roofline prediction of :mod:`pyengine.perf_model` with measured / predicted for every GPU row."""
import argparse
import json
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pyengine import bench as pb  # noqa: E402
from pyengine import perf_model as pm  # noqa: E402

SHORT_DTYPE = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def load(paths):
    """Merge the files: returns ``(meta of the first JSON file, benchmark dicts, skipped dicts)``."""
    meta, benchmarks, skipped = None, [], []
    for path in paths:
        if path.endswith(".jsonl"):
            for line in open(path):
                record = json.loads(line)
                (skipped if "skipped" in record else benchmarks).append(record)
            continue
        data = json.load(open(path))
        meta = meta or data
        benchmarks += data["benchmarks"]
        skipped += data.get("pyengine_skipped", [])
    seen, unique = set(), []
    for b in benchmarks:  # a partial log and the final JSON of the same stage hold the same rows
        key = b.get("fullname", b["name"])
        if key not in seen:
            seen.add(key)
            unique.append(b)
    done = {b.get("fullname", b["name"]) for b in unique}
    skipped = list({s["fullname"]: s for s in skipped if s["fullname"] not in done}.values())
    return meta or {}, unique, skipped


def label(b):
    """Short row label: ``eager-fp32``, ``compile-default-bf16``, ``pyengine-cuda-bf16``, the CPU anchors'
    ``openvino-bf16`` / ``onnxruntime-fp32`` (their variant is the precision), or the test name."""
    e = b.get("extra_info", {})
    if e.get("impl") in pb.ANCHOR_IMPLS:
        return f"{e['impl']}-{e['variant']}"
    if e.get("impl") in ("eager", "compile", "pyengine"):
        dt = SHORT_DTYPE.get(e.get("dtype"), e.get("dtype"))
        return f"eager-{dt}" if e["impl"] == "eager" else f"{e['impl']}-{e['variant']}-{dt}"
    if e.get("impl") == "peak":
        return f"peak-{e['variant']}"
    return b["name"]


def rows_of(benchmarks):
    rows = []
    for b in benchmarks:
        s = b["stats"]
        rows.append({"name": label(b), "test": b["name"], "group": b.get("group") or b["name"].split("[")[0],
                     "median": s["median"], "min": s["min"], "iqr": s["iqr"], "rounds": s["rounds"],
                     "extra": b.get("extra_info", {})})
    return rows


def header(meta, paths, peaks):
    mi, ci = meta.get("machine_info", {}), meta.get("commit_info", {})
    out = [f"# Benchmark results ({meta.get('datetime', '?')[:10]})", "",
           f"- device: {meta.get('pyengine_device', 'unknown')}",
           f"- host: {mi.get('cpu', {}).get('brand_raw', mi.get('processor'))}, "
           f"{mi.get('cpu', {}).get('count', '?')} logical CPUs, {mi.get('system')} {mi.get('release')}",
           f"- python {mi.get('python_version')}; versions: {meta.get('pyengine_versions', '?')}",
           f"- commit: {meta.get('pyengine_commit') or ci.get('id', '?')}{' (dirty)' if ci.get('dirty') else ''}"
           f" on {ci.get('branch', '?')}",
           f"- command: `{meta.get('pyengine_command', 'pytest benchmarks')}`",
           f"- sources: {', '.join(os.path.basename(p) for p in paths)}"]
    if peaks:
        out.append(f"- peaks measured in this run: {peaks.get('flops_per_s', 0) / 1e12:.4g} TFLOP/s (matmul), "
                   f"{peaks.get('bytes_per_s', 0) / 1e9:.4g} GB/s (device copy)")
    return out + [""]


HEADER = ("| row | median (ms) | min (ms) | IQR (ms) | rounds | vs fastest | windows/s | frames/s | vs eager "
          "| vs best compile | TFLOP/s | % peak FLOP/s | GB/s (compulsory) | % peak BW | predicted (H200 roofline, ms) "
          "| measured / predicted |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
PREDICTION_NOTE = (
    f"- predicted: the {pm.DEVICE} roofline of pyengine/perf_model.py (docs/benchmarks.md), max(FLOPs / peak, bytes / "
    f"{pm.BANDWIDTH / 1e12:.1f} TB/s) + {pm.LAUNCH_S * 1e6:.0f} us per launch at peaks "
    + ", ".join(f"{k} {v / 1e12:.0f}" for k, v in pm.PEAK_FLOPS.items()) + " TFLOP/s; `k`: summed over the "
    "recorded kernel launches of this forward (pyengine/data/launch_variants.json), `c`: from the row's counted "
    "FLOPs and compulsory bytes as one launch. measured / predicted only for GPU rows (a CPU row's prediction is "
    "still the H200's).")


def is_gpu_row(r):
    return r["extra"].get("device", "cpu") != "cpu"


def prediction_cells(r):
    """``(predicted, measured / predicted)`` cells of a row (``–`` when there is no prediction / a CPU row)."""
    pred = pm.predict_row(r["extra"])
    if pred is None:
        return "–", "–"
    seconds, basis = pred
    ratio = f"{r['median'] / seconds:.2f}x" if is_gpu_row(r) else "–"
    return f"{seconds * 1e3:.4g} {basis}", ratio


def line(r, fastest):
    derived = pb.table_row(r["name"], r).split("|")[3:-1]  # windows/s ... % peak BW (after name and median)
    predicted, ratio = prediction_cells(r)
    return (f"| `{r['name']}` | {r['median'] * 1e3:.3f} | {r['min'] * 1e3:.3f} | {r['iqr'] * 1e3:.3f} | "
            f"{r['rounds']} | {r['median'] / fastest:.2f}x |" + "|".join(derived) + f"| {predicted} | {ratio} |")


def report(paths, chart=None):
    """The markdown text for the merged ``paths``; writes the speedup chart to ``chart`` if given."""
    meta, benchmarks, skipped = load(paths)
    rows = rows_of(benchmarks)
    peaks = pb.peaks_of(rows)
    pb.derive(rows, peaks)
    out = header(meta, paths, peaks)
    out[-1:-1] = [PREDICTION_NOTE]
    groups = defaultdict(list)
    for r in rows:
        groups[r["group"]].append(r)
    for group, group_rows in groups.items():
        group_rows.sort(key=lambda r: r["median"])
        out += [f"## {group}", "", HEADER]
        out += [line(r, group_rows[0]["median"]) for r in group_rows]
        out.append("")
    if skipped:
        out += ["## Skipped rows", ""]
        out += pb.skip_notes([{"name": s["name"], "skipped": s["skipped"]} for s in skipped])
        out.append("")
    if chart:
        try:
            pb.plot_speedups(rows, chart, title=f"speedup over eager, {meta.get('pyengine_device', '')}")
            out.append(f"![speedup over eager]({os.path.basename(chart)})")
        except (ImportError, ValueError) as exc:
            out.append(f"(chart not written: {exc})")
            print(f"report.py: chart not written: {exc}", file=sys.stderr)
    return "\n".join(out) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="pytest-benchmark JSON files and/or partial .jsonl logs")
    parser.add_argument("--chart", default=None, help="write a speedup chart (PNG) here")
    parser.add_argument("-o", "--output", default=None, help="write the markdown here instead of stdout")
    args = parser.parse_args(argv)
    text = report(args.paths, args.chart)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
