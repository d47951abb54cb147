"""The measuring instrument: FLOP counts against SPEC.md, derived figures and chart of benchmarks/report.py on a
synthetic pytest-benchmark JSON, and ``pyengine bench`` on a tiny model."""
import importlib.util
import json
import os

import pytest

from pyengine import bench as pb
from pyengine import cli

REPORT = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "report.py")


# SPEC.md §1: 2 x MACs of all linear layers and attention products, per window; §2: linear layers only.
@pytest.mark.parametrize("frames,gflops", [(27, 1.05), (81, 3.25), (243, 10.72), (351, 16.44)])
def test_mhformer_flops_match_spec(frames, gflops):
    assert pb.model_flops("mhformer", {"frames": frames})["total"] / 1e9 == pytest.approx(gflops, abs=0.006)


@pytest.mark.parametrize("arch,config,gflops", [
    ("mhformer", {"frames": 351}, 14.15),
    ("mixste", {"frames": 243}, 277.25),
    ("tpc_mhformer", {"frames": 351, "token_num": 117, "layer_index": 1}, 8.22),  # counted on CPU (selection)
])
def test_linear_flops_match_spec(arch, config, gflops):
    assert pb.model_flops(arch, config)["linear"] / 1e9 == pytest.approx(gflops, abs=0.006)


def test_flops_scale_with_batch_and_bytes_count_weights_once():
    config = {"frames": 27, "channel": 16, "d_hid": 32}
    f1, b1 = pb.case_counts("mhformer", config, 1, pb.DTYPES["float32"])
    f4, b4 = pb.case_counts("mhformer", config, 4, pb.DTYPES["float32"])
    assert f4["total"] == 4 * f1["total"] and f1["total"] == f1["linear"] + f1["attention"]
    io_per_window = 27 * 17 * (2 + 3) * 4  # fp32 input [27, 17, 2] + output [27, 17, 3]
    assert b4 - b1 == 3 * io_per_window
    _, half = pb.case_counts("mhformer", config, 1, pb.DTYPES["bfloat16"])
    assert half < b1  # weights counted at the row's dtype


def _bench(name, group, median, **extra):
    stats = {"median": median, "min": median * 0.9, "iqr": median * 0.1, "rounds": 10, "mean": median}
    return {"name": name, "fullname": f"benchmarks/x.py::{name}", "group": group, "stats": stats,
            "extra_info": extra}


def synthetic_results():
    row = dict(windows=2, frames_per_window=1, flops=2e11, bytes=5e8, device="NVIDIA H200")
    g = "m latency b2"
    return {
        "datetime": "2026-11-21T00:00:00", "machine_info": {"cpu": {"brand_raw": "test cpu", "count": 2}},
        "commit_info": {"id": "abc123", "branch": "main"}, "pyengine_versions": "torch X, triton Y, CUDA Z",
        "pyengine_device": "Test GPU", "pyengine_skipped": [
            {"name": "t[m-b2-pyengine-triton-bf16]", "fullname": "x::t[m-b2-pyengine-triton-bf16]",
             "skipped": "pyengine backend 'triton' unavailable: not landed"}],
        "benchmarks": [
            _bench("t[eager-fp32]", g, 0.010, impl="eager", variant="fp32", dtype="float32", **row),
            _bench("t[eager-bf16]", g, 0.004, impl="eager", variant="bf16", dtype="bfloat16", **row),
            _bench("t[compile-default]", g, 0.002, impl="compile", variant="default", dtype="bfloat16", **row),
            _bench("t[compile-max]", g, 0.0025, impl="compile", variant="max-autotune", dtype="bfloat16", **row),
            _bench("t[pyengine-cuda]", g, 0.001, impl="pyengine", variant="cuda", dtype="bfloat16", **row),
            _bench("test_peak[matmul]", "peaks", 0.001, impl="peak", variant="matmul-bf16", flops=1e12, bytes=0),
            _bench("test_peak[copy]", "peaks", 0.001, impl="peak", variant="copy", flops=0, bytes=1e9),
            _bench("test_other_op", "some op", 0.003),  # no extra_info: timing columns only
            # a recorded headline forward (full size): predicted from its kernel launches
            _bench("t[mhf-pyengine-triton]", "mhformer-351 latency b2", 0.002, impl="pyengine", variant="triton",
                   dtype="bfloat16", case="mhformer-351", size="full", **row),
            _bench("t[mhf-cpu]", "mhformer-351 cpu", 0.2, impl="pyengine", variant="cpp", dtype="float32",
                   **{**row, "device": "cpu"}),
        ]}


def test_report_derived_columns_and_chart(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(synthetic_results()))
    spec = importlib.util.spec_from_file_location("bench_report", REPORT)
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    chart, md = tmp_path / "speedup.png", tmp_path / "out.md"
    assert report.main([str(path), "--chart", str(chart), "-o", str(md)]) == 0
    text = md.read_text()
    assert "Test GPU" in text and "abc123" in text and "torch X, triton Y, CUDA Z" in text
    assert "1000 TFLOP/s (matmul), 1000 GB/s" in text  # peaks: 1e12 FLOP / 1 ms, 1e9 B / 1 ms
    line = next(x for x in text.splitlines() if x.startswith("| `pyengine-cuda-bf16`"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    # row, median, min, IQR, rounds, vs fastest, windows/s, frames/s, vs eager, vs compile, TFLOP/s, %, GB/s, %,
    # predicted (H200), measured / predicted
    assert cells[1] == "1.000" and cells[5] == "1.00x" and cells[6] == "2000.0" and cells[7] == "2000.0"
    assert cells[8] == "4.00x"  # vs the bf16 eager row (same dtype), not fp32
    assert cells[9] == "2.00x"  # vs the fastest compile row (default, 2 ms)
    assert cells[10:14] == ["200", "20%", "500", "50%"]
    # H200 roofline by hand: bf16 2e11 FLOP at 790 TFLOP/s (2.532e-4 s) > 5e8 B at 4.3 TB/s, + 4 us launch
    predicted = max(2e11 / 790e12, 5e8 / 4.3e12) + 4e-6
    assert cells[14] == f"{predicted * 1e3:.4g} c" == "0.2572 c"
    assert cells[15] == f"{1e-3 / predicted:.2f}x" == "3.89x"
    assert "predicted: the H200 roofline" in text
    eager32 = next(x for x in text.splitlines() if x.startswith("| `eager-fp32`"))
    assert "| 1.00x | – |" in eager32  # its own dtype's eager is itself; no fp32 compile row
    other = next(x for x in text.splitlines() if x.startswith("| `test_other_op`"))
    assert other.count("–") == 10
    from pyengine import perf_model as pm
    mhf = next(x for x in text.splitlines() if x.startswith("| `pyengine-triton-bf16`"))
    cells = [c.strip() for c in mhf.strip("|").split("|")]
    kernels = pm.predict_forward("mhformer-351/bf16/b2").seconds  # the recorded launches of that forward
    assert cells[14] == f"{kernels * 1e3:.4g} k" and cells[15] == f"{2e-3 / kernels:.2f}x"
    cpu = next(x for x in text.splitlines() if x.startswith("| `pyengine-cpp-fp32`"))
    cells = [c.strip() for c in cpu.strip("|").split("|")]
    # a CPU row: the H200 prediction is shown (fp32 FMA peak), no ratio
    assert cells[14] == f"{(max(2e11 / 60e12, 5e8 / 4.3e12) + 4e-6) * 1e3:.4g} c" and cells[15] == "–"
    assert "## Skipped rows" in text and "not landed" in text
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "![speedup over eager](speedup.png)" in text


def test_report_reads_partial_log(tmp_path):
    results = synthetic_results()
    log = tmp_path / "bench.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in results["benchmarks"][:2] + results["pyengine_skipped"]))
    spec = importlib.util.spec_from_file_location("bench_report", REPORT)
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    text = report.report([str(log)])
    assert "| `eager-bf16` |" in text and "not landed" in text


def test_pyengine_bench_tiny_model_prints_table(capsys, tmp_path):
    chart = tmp_path / "bench.png"
    code = cli.main(["bench", "--arch", "mhformer", "--frames", "27", "--channel", "16", "--d-hid", "32",
                     "--batch", "1", "3", "--rows", "eager,pyengine-reference,pyengine-triton,compile-default",
                     "--min-time", "0.01", "--plot", str(chart)])
    out = capsys.readouterr().out
    assert code == 0, out
    for text in ("## mhformer latency b1", "## mhformer throughput b3", "| `eager-fp32` |",
                 "| `pyengine-reference-fp32` |", "| `pyengine-triton-fp32` | skipped |", "TFLOP/s", "peaks measured"):
        assert text in out
    assert "skipped `pyengine-triton-fp32`" in out and "CUDA only" in out
    assert chart.exists()


@pytest.mark.parametrize("args", [["--arch", "bogus"], ["--rows", "nope"], ["--batch", "0"],
                                  ["--frames", "28"]])
def test_pyengine_bench_bad_usage_exits_2(capsys, args):
    assert cli.main(["bench", "--channel", "16", "--d-hid", "32", *args]) == 2
    assert "pyengine bench: error:" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# The CPU anchor rows (issue 19): OpenVINO fp32 / bf16 and ONNX Runtime fp32, on a tiny MixSTE.
# ---------------------------------------------------------------------------------------------------------------
TINY_MIXSTE = {"frames": 27, "channel": 16, "depth": 1, "heads": 2}


def test_row_ids_have_the_anchor_rows_on_cpu_only():
    f32, bf16 = pb.DTYPES["float32"], pb.DTYPES["bfloat16"]
    cpu = pb.row_ids(f32, "cpu")
    assert cpu[-3:] == [("openvino", "fp32", f32), ("openvino", "bf16", bf16), ("onnxruntime", "fp32", f32)]
    assert [pb.row_name(*r) for r in cpu[-3:]] == ["openvino-fp32", "openvino-bf16", "onnxruntime-fp32"]
    assert not [r for r in pb.row_ids(bf16, "cuda") if r[0] in pb.ANCHOR_IMPLS]


@pytest.mark.parametrize("impl,variant,tol", [("openvino", "fp32", 1e-4), ("openvino", "bf16", 5e-2),
                                              ("onnxruntime", "fp32", 1e-4)])
def test_anchor_rows_match_eager_fp32(impl, variant, tol):
    import torch

    from pyengine.testing import rel_error

    ov = pytest.importorskip(impl)  # optional (docs/benchmarks.md): the rows are skipped with a reason without it
    if variant == "bf16" and "BF16" not in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        pytest.skip("this CPU has no bf16 support")
    model = pb.build_model("mixste", TINY_MIXSTE)
    dtype = torch.bfloat16 if variant == "bf16" else torch.float32
    fn = pb.make_runner(model, impl, variant, dtype, "cpu")
    x = pb.make_inputs(model, 3, torch.float32, "cpu", copies=1)[0]  # 3: not the batch it was converted at (2)
    out = fn(x)
    with torch.no_grad():
        want = model(x)
    assert out.dtype == torch.float32 and out.shape == want.shape  # fp32 out, also at bf16 compute precision
    assert rel_error(out, want) < tol


def test_anchor_rows_return_tpc_output_and_index():
    import torch

    pytest.importorskip("openvino")
    model = pb.build_model("tpc_mixste", {**TINY_MIXSTE, "depth": 2, "token_num": 9, "layer_index": 1})
    x = pb.make_inputs(model, 1, torch.float32, "cpu", copies=1)[0]
    out, index = pb.make_runner(model, "openvino", "fp32", torch.float32, "cpu")(x)
    with torch.no_grad():
        want, want_index = model(x)
    assert torch.equal(index.long(), want_index) and out.shape == want.shape


@pytest.mark.parametrize("impl", ["openvino", "onnxruntime"])
def test_anchor_rows_skip_without_their_package(monkeypatch, impl):
    import sys

    import torch

    monkeypatch.setitem(sys.modules, impl, None)  # import fails
    with pytest.raises(pb.Skip, match=f"^{impl} is not installed: pip install {impl}$"):
        pb.make_runner(pb.build_model("mixste", TINY_MIXSTE), impl, "fp32", torch.float32, "cpu")


@pytest.mark.parametrize("impl,name", [("openvino", "OpenVINO"), ("onnxruntime", "ONNX Runtime")])
def test_anchor_rows_skip_on_cuda(impl, name):
    import torch

    with pytest.raises(pb.Skip, match=f"{name} rows are CPU anchors"):
        pb.make_runner(pb.build_model("mixste", TINY_MIXSTE), impl, "fp32", torch.float32, "cuda")


def test_anchor_rows_skip_when_conversion_fails(monkeypatch):
    import torch

    from pyengine import onnx_export

    pytest.importorskip("onnxruntime")

    def fail(*args, **kwargs):
        raise onnx_export.ExportError("mixste: torch.onnx.export failed: no kernel for op X\nsecond line")

    monkeypatch.setattr(onnx_export, "export", fail)
    model = pb.build_model("mixste", TINY_MIXSTE, seed=1)  # not converted by another test (conversions are cached)
    with pytest.raises(pb.Skip, match=r"^pyengine.export to ONNX failed: mixste: .* no kernel for op X$"):
        pb.make_runner(model, "onnxruntime", "fp32", torch.float32, "cpu")


def test_anchor_rows_compare_with_eager_fp32():
    def row(name, median, impl, variant, dtype):
        return {"name": name, "group": "g", "median": median,
                "extra": {"impl": impl, "variant": variant, "dtype": dtype}}

    rows = pb.derive([row("eager-fp32", 0.010, "eager", "fp32", "float32"),
                      row("eager-bf16", 0.020, "eager", "bf16", "bfloat16"),
                      row("openvino-bf16", 0.005, "openvino", "bf16", "bfloat16")])
    assert rows[2]["derived"]["vs_eager"] == pytest.approx(2.0)  # eager fp32 / 5 ms, not eager bf16 (4x)
    spec = importlib.util.spec_from_file_location("bench_report", REPORT)
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    assert report.label({"name": "t", "extra_info": rows[2]["extra"]}) == "openvino-bf16"
