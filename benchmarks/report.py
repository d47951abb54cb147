"""Turn a pytest-benchmark JSON file into a markdown results table with the machine, versions and commit.

``python benchmarks/report.py RESULTS.json > benchmarks/results/YYYY-MM-DD-<device>.md``"""
import json
import sys
from collections import defaultdict


def main(path):
    data = json.load(open(path))
    mi, ci = data["machine_info"], data.get("commit_info", {})
    groups = defaultdict(list)
    for b in data["benchmarks"]:
        groups[b.get("group") or b["name"].split("[")[0]].append(b)
    out = [f"# Benchmark results ({data['datetime'][:10]})", "",
           f"- machine: {mi.get('cpu', {}).get('brand_raw', mi.get('processor'))}, "
           f"{mi.get('cpu', {}).get('count', '?')} logical CPUs, {mi.get('system')} {mi.get('release')}",
           f"- python {mi.get('python_version')}; versions: {data.get('pyengine_versions', '')}",
           f"- commit: {ci.get('id', '?')}{' (dirty)' if ci.get('dirty') else ''} on {ci.get('branch', '?')}",
           f"- command: `{data.get('pyengine_command', 'pytest benchmarks')}`", ""]
    for group, rows in sorted(groups.items()):
        rows.sort(key=lambda b: b["stats"]["median"])
        best = rows[0]["stats"]["median"]
        out += [f"## {group}", "", "| case | median (ms) | min (ms) | IQR (ms) | rounds | vs fastest |",
                "|---|---:|---:|---:|---:|---:|"]
        for b in rows:
            s = b["stats"]
            out.append(f"| `{b['name']}` | {s['median'] * 1e3:.2f} | {s['min'] * 1e3:.2f} | {s['iqr'] * 1e3:.2f} | "
                       f"{s['rounds']} | {s['median'] / best:.2f}x |")
        out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
