"""Shared machinery for the pytest-benchmark suite; conventions in docs/benchmarks.md.

``time_rows(benchmark, fn, inputs, group=..., extra=...)`` is the one way a benchmark here times something:

* inputs are rotated (each call gets the next of several distinct input tensors, prepared outside the timed
  region), so a small case cannot be flattered by reusing the previous call's input in cache;
* on CUDA every timed call ends with ``torch.cuda.synchronize()`` (a synchronised timer), after warm-up calls;
* the number of rounds is chosen from one calibration call so a row takes about PYENGINE_BENCH_TIME seconds
  (default 1), between 5 and 200 rounds;
* ``extra`` goes into ``benchmark.extra_info`` (the keys ``impl``, ``variant``, ``dtype``, ``windows``,
  ``frames_per_window``, ``flops``, ``bytes``), from which ``benchmarks/report.py`` derives windows/s, speedups,
  TFLOP/s, GB/s and the fraction of the measured peaks.

With ``--benchmark-disable`` (CI) each function runs exactly once, as a test.
"""
import itertools
import os
import time

import pytest
import torch

from pyengine import bench as pb
from pyengine.bench import Skip, count_bytes, count_flops, tensor_bytes  # noqa: F401  (re-exported for op files)

DEVICE = pb.default_device()
DTYPE = pb.default_dtype(DEVICE)  # the chosen precision: bf16 on CUDA, fp32 on CPU
MIN_ROUNDS, MAX_ROUNDS = 5, 200


def device_name(device=DEVICE):
    return torch.cuda.get_device_name(device) if str(device).startswith("cuda") else "cpu"


def size(benchmark):
    """``"full"`` (published sizes) on CUDA with timing on, else ``"small"``; PYENGINE_BENCH_SIZE overrides."""
    return pb.size_tier(DEVICE, benchmark_disabled=benchmark.disabled)


def check_budget(needed_s=20.0):
    """Skip (with a note) when the stage's time budget, PYENGINE_BENCH_DEADLINE (a Unix time set by
    benchmarks/gpu_suite.sh), leaves less than ``needed_s`` seconds, rather than being killed mid-run."""
    deadline = os.environ.get("PYENGINE_BENCH_DEADLINE")
    if deadline and time.time() + needed_s > float(deadline):
        pytest.skip(f"time budget of this stage exhausted (less than {needed_s:.0f} s left before "
                    f"PYENGINE_BENCH_DEADLINE): not run")


def skip_row(fn, *args, **kwargs):
    """Call ``fn``; turn ``pyengine.bench.Skip`` into a pytest skip with the same reason (kept in the report)."""
    try:
        return fn(*args, **kwargs)
    except Skip as exc:
        pytest.skip(str(exc))


def time_rows(benchmark, fn, inputs, *, group, extra, device=DEVICE, warmup=2):
    """Time ``fn(x)`` over the rotated ``inputs`` (a list of arguments, or of argument tuples) with
    pytest-benchmark; returns the last output. See the module docstring."""
    benchmark.group = group
    benchmark.extra_info.update(extra, device=device_name(device))
    cuda = str(device).startswith("cuda")
    rotation = itertools.cycle([x if isinstance(x, tuple) else (x,) for x in inputs])

    def target(*args):
        out = fn(*args)
        if cuda:
            torch.cuda.synchronize(device)
        return out

    def setup():
        return next(rotation), {}

    with torch.no_grad():
        if benchmark.disabled:
            return benchmark.pedantic(target, setup=setup, rounds=1)
        for _ in range(warmup):
            target(*next(rotation))
        t0 = time.perf_counter()
        target(*next(rotation))
        one = max(time.perf_counter() - t0, 1e-6)
        budget = float(os.environ.get("PYENGINE_BENCH_TIME", "1.0"))
        rounds = min(MAX_ROUNDS, max(MIN_ROUNDS, int(budget / one)))
        return benchmark.pedantic(target, setup=setup, rounds=rounds, warmup_rounds=0, iterations=1)
