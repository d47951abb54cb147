"""``pyengine bench`` and the measuring machinery shared with ``benchmarks/`` (docs/benchmarks.md).

One *row* is one way of running one model case at one batch: eager PyTorch (fp32 and the chosen precision),
``torch.compile`` (default, max-autotune, reduce-overhead), ``pyengine.load(..., backend=b)`` per backend and, on
CPU, the anchors OpenVINO (fp32, bf16) and ONNX Runtime (fp32). A row that cannot run here is *skipped with its
reason* (``Skip``), never silently replaced: a backend that has not landed raises ``BackendUnavailableError``,
which becomes a skipped row, so rows light up as backends land.

Derived figures per row: windows/s and output frames/s, speedup over eager (same dtype) and over the best
torch.compile mode, achieved TFLOP/s from counted FLOPs, achieved GB/s from counted bytes, and both as a fraction
of the device's peaks measured in the same run (a bf16 matmul, a device copy; fp32 matmul / memcpy on CPU).

One concern per module: ``cases`` (models, sizes, batches, the row catalogue), ``counting`` (FLOPs, bytes),
``runners`` (the rows' callables; ``anchors`` the OpenVINO / ONNX Runtime ones), ``timing`` (timed calls,
peaks), ``tables`` (derived figures, markdown), ``plot`` (the chart), ``cli`` (``pyengine bench``). Everything
used elsewhere is re-exported here, so ``from pyengine import bench as pb; pb.X`` reads as before the split.
"""
from .cases import (ANCHOR_IMPLS, ANCHOR_ROWS, ARCH_DEFAULT_CASE, CASES, COMPILE_MODES, DTYPES,
                    LATENCY_BATCHES, PYENGINE_BACKENDS, SEQ2FRAME, SHORT, THROUGHPUT_BATCH, batches,
                    build_model, case_config, default_device, default_dtype, input_shape, make_inputs,
                    model_class, regime, size_tier)
from .cli import CONFIG_INTS, add_arguments, bench_model, main, run
from .counting import LINEAR_OPS, case_counts, count_bytes, count_flops, model_flops, tensor_bytes
from .plot import plot_speedups
from .runners import make_runner, row_ids, row_name, warmup_calls
from .skip import Skip
from .tables import TABLE_HEADER, derive, peaks_of, skip_notes, table_row
from .timing import measure_peaks, peak_cases, synchronize, time_calls

__all__ = ["ANCHOR_IMPLS", "ANCHOR_ROWS", "ARCH_DEFAULT_CASE", "CASES", "COMPILE_MODES", "CONFIG_INTS", "DTYPES",
           "LATENCY_BATCHES", "LINEAR_OPS", "PYENGINE_BACKENDS", "SEQ2FRAME", "SHORT", "TABLE_HEADER",
           "THROUGHPUT_BATCH", "Skip", "add_arguments", "batches", "bench_model", "build_model", "case_config",
           "case_counts", "count_bytes", "count_flops", "default_device", "default_dtype", "derive", "input_shape",
           "main", "make_inputs", "make_runner", "measure_peaks", "model_class", "model_flops", "peak_cases",
           "peaks_of", "plot_speedups", "regime", "row_ids", "row_name", "run", "size_tier", "skip_notes",
           "synchronize", "table_row", "tensor_bytes", "time_calls", "warmup_calls"]
