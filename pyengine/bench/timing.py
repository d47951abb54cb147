"""Timing calls (CUDA events on CUDA, ``time.perf_counter`` on CPU) and the device's peaks measured in the same
run (a matmul and a device copy)."""
import time

import torch

from .cases import SHORT


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
