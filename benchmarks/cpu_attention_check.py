"""torch SDPA (``pyengine.dispatch.sdpa_attention``) vs the C++ kernel (``attention(..., backend="cpp")``) on CPU,
fp32 and bf16, interleaved in one process (issue 19: bf16 attention on CPU).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/cpu_attention_check.py [--repeats 15] [--shapes a,b] [-o out.md]

q / k / v are strided views of one fused QKV buffer ``[B*N, 3*G*H*D]``, as the models produce them. Each round
times every variant once (in turn: SDPA fp32, cpp fp32, SDPA bf16, cpp bf16), so machine noise hits all of them
alike; the table gives the median over rounds of the wall time and of the process CPU time (all threads, so up to
threads x wall) per call, and the speedup of cpp over SDPA in the same dtype (wall; CPU time in brackets). The
last column is the relative error against fp64 ``attention_ref`` (SDPA / cpp)."""
import argparse
import statistics
import sys
import time

import torch

sys.path.insert(0, __file__.rsplit("/benchmarks/", 1)[0])
from pyengine.dispatch import sdpa_attention  # noqa: E402
from pyengine.ops.attention import attention, attention_ref  # noqa: E402
from pyengine.testing import rel_error  # noqa: E402

# name: (B, G, N, H, D)
SHAPES = {
    "mhformer-81 b16 G3": (16, 3, 81, 8, 64),
    "mhformer-81 b16": (16, 1, 81, 8, 64),
    "mhformer-81 b16 small": (16, 1, 34, 9, 9),
    "mixste-243 spatial": (243, 1, 17, 8, 32),
    "mixste-243 temporal": (17, 1, 243, 8, 32),
    "mhformer-351 b2": (2, 1, 351, 8, 64),
    "mhformer-351 b2 G3": (2, 3, 351, 8, 64),
}


def fused_qkv(B, G, N, H, D, dtype, seed=0):
    buf = torch.randn(B * N, 3 * G * H * D, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return buf.view(B, N, 3, G, H, D).permute(2, 0, 3, 1, 4, 5).unbind(0)  # q, k, v [B, G, N, H, D] views


def cpp_attention(q, k, v):
    return attention(q, k, v, backend="cpp")


def time_call(fn, args, calls):
    w, c = time.perf_counter(), time.process_time()
    for _ in range(calls):
        fn(*args)
    return (time.perf_counter() - w) / calls, (time.process_time() - c) / calls


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated names of: " + ", ".join(SHAPES))
    p.add_argument("-o", "--output", default=None)
    args = p.parse_args(argv)
    variants = [("sdpa", torch.float32, sdpa_attention), ("cpp", torch.float32, cpp_attention),
                ("sdpa", torch.bfloat16, sdpa_attention), ("cpp", torch.bfloat16, cpp_attention)]
    lines = [f"# CPU attention: SDPA vs pyengine cpp, interleaved ({args.repeats} rounds, median ms per call)", "",
             f"torch {torch.__version__}, {torch.get_num_threads()} threads; wall ms (process CPU ms)", "",
             "| shape [B, G, N, H, D] | SDPA fp32 | cpp fp32 | speedup fp32 | SDPA bf16 | cpp bf16 | speedup bf16 "
             "| cpp bf16 vs SDPA fp32 | rel. err fp32 / bf16 (SDPA, cpp) |",
             "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for name in args.shapes.split(","):
        shape = SHAPES[name]
        inputs = {dt: fused_qkv(*shape, dt) for dt in (torch.float32, torch.bfloat16)}
        want = attention_ref(*(t.double() for t in inputs[torch.bfloat16]))  # bf16 inputs are exact in fp32/fp64
        want32 = attention_ref(*(t.double() for t in inputs[torch.float32]))
        errs = {}
        with torch.no_grad():
            for kind, dt, fn in variants:
                errs[kind, dt] = rel_error(fn(*inputs[dt]), want32 if dt == torch.float32 else want)
            w, _ = time_call(sdpa_attention, inputs[torch.float32], 1)
            calls = max(1, int(0.01 / max(w, 1e-6)))  # about 10 ms per measurement
            times = {key[:2]: ([], []) for key in variants}
            for _ in range(args.repeats):
                for kind, dt, fn in variants:
                    wall, cpu = time_call(fn, inputs[dt], calls)
                    times[kind, dt][0].append(wall * 1e3)
                    times[kind, dt][1].append(cpu * 1e3)
        med = {key: (statistics.median(t[0]), statistics.median(t[1])) for key, t in times.items()}

        def cell(key):
            return f"{med[key][0]:.3f} ({med[key][1]:.3f})"

        def speed(a, b):
            return f"{med[a][0] / med[b][0]:.2f}x ({med[a][1] / med[b][1]:.2f}x)"

        f32, bf = torch.float32, torch.bfloat16
        lines.append(f"| {name} {list(shape)} | {cell(('sdpa', f32))} | {cell(('cpp', f32))} | "
                     f"{speed(('sdpa', f32), ('cpp', f32))} | {cell(('sdpa', bf))} | {cell(('cpp', bf))} | "
                     f"{speed(('sdpa', bf), ('cpp', bf))} | {speed(('sdpa', f32), ('cpp', bf))} | "
                     f"{errs['sdpa', f32]:.1e}, {errs['cpp', f32]:.1e} / {errs['sdpa', bf]:.1e}, "
                     f"{errs['cpp', bf]:.1e} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    if args.output:
        open(args.output, "w").write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
