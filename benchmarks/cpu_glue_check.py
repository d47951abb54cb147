"""Eager fp32 vs pyengine ``backend="cpp"`` fp32 on CPU, interleaved in one process (issue 19's fp32 glue check).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/cpu_glue_check.py [--repeats 7] [-o results.md]

Full-width models, random weights; each round times every row once (in turn), so machine noise hits all rows
alike; the table gives the median over rounds and the speedup over eager fp32, with the relative error against
fp64 eager."""
import argparse
import statistics
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
import pyengine  # noqa: E402
from pyengine.testing import randomize_, rel_error  # noqa: E402

CASES = [("mhformer-81 b16", "mhformer", dict(frames=81), 16), ("mhformer-351 b2", "mhformer", dict(frames=351), 2),
         ("hot_mixste-243 b1", "hot_mixste", dict(frames=243, token_num=81, layer_index=3), 1),
         ("mixste-243 b1", "mixste", dict(frames=243), 1)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("-o", "--output", default=None)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    lines = [f"# CPU fp32: eager vs pyengine cpp, interleaved ({args.repeats} rounds, median)", "",
             f"torch {torch.__version__}, {torch.get_num_threads()} threads, commit-local run of "
             f"`benchmarks/cpu_glue_check.py`", "",
             "| case | eager fp32 ms | pyengine cpp fp32 ms | speedup | rel. error vs fp64 (eager / pyengine) |",
             "|---|---|---|---|---|"]
    for name, arch, cfg, batch in CASES:
        ref = randomize_(pyengine.arch.MODELS[arch](**cfg), seed=0).eval()
        fused = pyengine.load(ref, backend="cpp")
        x = torch.randn(batch, cfg["frames"], 17, 2) * 0.3
        kw = {"return_index": True} if arch == "hot_mixste" else {}
        with torch.no_grad():
            want = ref.double()(x.double(), **kw)
            ref.float()
            out_e, out_f = ref(x, **kw), fused(x, **kw)
            pick = (lambda o: o[0] if isinstance(o, tuple) else o)
            errs = (rel_error(pick(out_e), pick(want)), rel_error(pick(out_f), pick(want)))
            times = {"eager": [], "cpp": []}
            for _ in range(args.repeats):
                for key, model in (("eager", ref), ("cpp", fused)):
                    t = time.perf_counter()
                    model(x, **kw)
                    times[key].append(time.perf_counter() - t)
        e, f = statistics.median(times["eager"]) * 1e3, statistics.median(times["cpp"]) * 1e3
        lines.append(f"| {name} | {e:.1f} | {f:.1f} | {e / f:.2f}x | {errs[0]:.1e} / {errs[1]:.1e} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.output:
        open(args.output, "w").write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
