"""Derived figures and markdown tables, shared by ``pyengine bench`` and benchmarks/report.py.

A row is a dict with "name", "group", "median" (s) and "extra" (the extra_info conventions in
docs/benchmarks.md), or "skipped" (the reason).
"""
from .cases import ANCHOR_IMPLS


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
    the same group: ``vs_eager`` with the eager row of the same dtype (else eager fp32; always eager fp32 for the
    anchor rows, ``ANCHOR_IMPLS``), ``vs_compile`` with the fastest torch.compile row of the same dtype."""
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
            eager_rows = [o for o in timed if o.get("extra", {}).get("impl") == "eager"]
            if e.get("impl") in ANCHOR_IMPLS:
                # An anchor (OpenVINO / ONNX Runtime) takes and returns fp32 whatever its compute precision, so
                # the fp32 model it replaces is the baseline, also for its bf16 row.
                eager = [o for o in eager_rows if o["extra"].get("dtype") == "float32"]
            else:
                eager = [o for o in same if o["extra"].get("impl") == "eager"] or eager_rows
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
