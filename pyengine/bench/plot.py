"""The speedup chart (``pyengine bench --plot``, ``benchmarks/report.py --chart``)."""


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
    colours = {"eager": "#999999", "compile": "#4c72b0", "pyengine": "#dd8452", "openvino": "#8172b3",
               "onnxruntime": "#937860"}
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
