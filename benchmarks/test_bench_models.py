"""Whole models side by side in one run: eager PyTorch (fp32 and the chosen precision), torch.compile (default,
max-autotune, reduce-overhead), ``pyengine.load(..., backend=b)`` per backend and, on CPU, the anchors OpenVINO
(fp32, bf16) and ONNX Runtime (fp32); latency (1 and 2 windows) and throughput (a large batch). Rows that cannot run here are skipped with the reason (a backend that has not landed,
compile rows on CPU, ...), and report.py lists those reasons.

Sizes (docs/benchmarks.md): the published ones on CUDA; reduced width/depth ("small", same frame counts where
affordable) on CPU and under --benchmark-disable; PYENGINE_BENCH_SIZE=full|small overrides.
Run: ``.venv/bin/python -m pytest benchmarks/test_bench_models.py --benchmark-json=out.json``."""
import pytest
import torch

from common import DEVICE, DTYPE, check_budget, size, skip_row, time_rows
from pyengine import bench as pb

REGIMES = ("b1", "b2", "throughput")
# dtype travels as its name: params are written to the JSON.
PARAMS = [pytest.param(case, reg, impl, variant, str(dtype).removeprefix("torch."),
                       id=f"{case}-{reg}-{pb.row_name(impl, variant, dtype)}")
          for case in pb.CASES for reg in REGIMES for impl, variant, dtype in pb.row_ids(DTYPE, DEVICE)]
# Seconds a row may need beyond its timing (compilation): it is skipped when the stage's budget has less left.
NEEDED_S = {"max-autotune": 240, "default": 90, "reduce-overhead": 90}
# Under --benchmark-disable (CI) the anchor rows run for these cases only: converting a model for OpenVINO and
# exporting (and verifying) it for ONNX Runtime takes 5-40 s per case on 2 cores; one case checks the plumbing.
CI_ANCHOR_CASES = ("mixste-243",)


@pytest.mark.parametrize("case,regime,impl,variant,dtype", PARAMS)
def test_model(benchmark, case, regime, impl, variant, dtype):
    dtype = pb.DTYPES[dtype]
    tier = size(benchmark)
    arch, config = pb.case_config(case, tier)
    batch = {"b1": 1, "b2": 2}.get(regime) or pb.THROUGHPUT_BATCH[tier][arch]
    if impl == "compile":
        check_budget(NEEDED_S[variant])
    if impl in pb.ANCHOR_IMPLS and benchmark.disabled and case not in CI_ANCHOR_CASES:
        pytest.skip(f"anchor rows run only for {list(CI_ANCHOR_CASES)} under --benchmark-disable (each "
                    f"conversion takes seconds); timed runs cover every case")
    model = pb.build_model(arch, config)
    fn = skip_row(pb.make_runner, model, impl, variant, dtype, DEVICE)
    flops, nbytes = pb.case_counts(arch, config, batch, dtype)
    inputs = pb.make_inputs(model, batch, dtype, DEVICE, copies=1 if benchmark.disabled else 8)
    extra = {"impl": impl, "variant": variant, "dtype": str(dtype).removeprefix("torch."), "case": case,
             "size": tier, "windows": batch, "frames_per_window": 1 if arch in pb.SEQ2FRAME else model.frames,
             "flops": flops["total"], "flops_linear": flops["linear"], "bytes": nbytes}
    out = time_rows(benchmark, fn, inputs, group=f"{case} {pb.regime(batch)} b{batch}", extra=extra,
                    warmup=pb.warmup_calls(impl, variant))
    out = out[0] if isinstance(out, tuple) else out  # TPC seq2frame models return (output, index)
    frames = model.token_num if arch == "tpc_mhformer" else model.frames
    # The anchors (OpenVINO, ONNX Runtime) return fp32 by design, also at bf16 compute precision: their
    # inputs and outputs are fp32 numpy arrays (pyengine/bench/anchors.py).
    out_dtype = torch.float32 if impl in pb.ANCHOR_IMPLS else dtype
    assert out.shape == (batch, frames, model.n_joints, 3) and out.dtype == out_dtype
    assert torch.isfinite(out).all()
