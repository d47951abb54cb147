"""``pyengine.export``: a verified ONNX file (ONNX Runtime against fp64 eager, verify's tolerance rule), written
only when it passes; clear errors otherwise."""
import os

import pytest
import torch

import pyengine
from pyengine.onnx_export import ExportError, export
from pyengine.testing import randomize_

pytest.importorskip("onnxruntime", reason="pip install onnx onnxscript onnxruntime (requirements.txt pins them)")

CASES = {
    "mixste": dict(frames=9, channel=32, depth=2, heads=4),
    "mhformer": dict(frames=27, channel=16, d_hid=32, layers=2),
    "hsusa": dict(channels=8),
    # TPC: the DPC-kNN selection runs inside the ONNX graph and picks the reference's frames
    "tpc_mixste": dict(frames=9, channel=16, depth=2, heads=4, token_num=3, layer_index=1),
    "hot_mixste": dict(frames=9, channel=16, depth=2, heads=4, token_num=5, layer_index=1),
    "motionbert": dict(dim_feat=16, dim_rep=8, depth=2, num_heads=4, mlp_ratio=2, maxlen=9),  # 3-channel input
}


def loaded(arch, backend="cpp"):
    return pyengine.load(randomize_(pyengine.arch.MODELS[arch](**CASES[arch]), seed=4).eval(), backend=backend)


@pytest.mark.parametrize("arch", list(CASES))
def test_export_writes_a_file_that_onnx_runtime_runs_like_eager(arch, tmp_path):
    import onnxruntime as ort
    path = tmp_path / f"{arch}.onnx"
    report = export(loaded(arch), path)
    assert path.exists() and report.deviation <= report.tolerance and report.batches_checked == [2, 3]
    assert [f for f in os.listdir(tmp_path)] == [path.name]  # no temporary file left behind
    sess = ort.InferenceSession(str(path))
    assert sess.get_inputs()[0].shape[0] == "batch" and sess.get_outputs()[0].name == "out"
    assert [o.name for o in sess.get_outputs()] == (["out", "index"] if arch == "tpc_mixste" else ["out"])


def test_a_deviating_file_is_not_written(tmp_path, monkeypatch):
    import onnxruntime as ort
    real = ort.InferenceSession

    class Wrong(real):
        def run(self, names, feeds):
            return [o + 1e-2 for o in super().run(names, feeds)]

    monkeypatch.setattr(ort, "InferenceSession", Wrong)
    path = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match=r"deviates from the fp64 eager reference by .* the file was not written"):
        export(loaded("mixste"), path)
    assert os.listdir(tmp_path) == []


def test_bad_arguments(tmp_path):
    model = loaded("mixste")
    with pytest.raises(ExportError, match=r"path: expected a file name ending in \.onnx, got .*m\.pt"):
        export(model, tmp_path / "m.pt")
    (tmp_path / "x.onnx").write_bytes(b"keep")
    with pytest.raises(ExportError, match="exists; pass overwrite=True"):
        export(model, tmp_path / "x.onnx")
    assert (tmp_path / "x.onnx").read_bytes() == b"keep"
    with pytest.raises(ExportError, match="folder .* does not exist"):
        export(model, tmp_path / "nowhere" / "m.onnx")
    with pytest.raises(ExportError, match="batch: expected an integer >= 1, got 0"):
        export(model, tmp_path / "m.onnx", batch=0)
    with pytest.raises(ExportError, match=r"model: expected a model returned by pyengine.load .* got Linear"):
        export(torch.nn.Linear(2, 2), tmp_path / "m.onnx")


def test_cli_export_writes_a_verified_file_and_refuses_bad_usage(tmp_path, capsys):
    from pyengine import cli
    out = tmp_path / "m.onnx"
    args = ["export", "--random-weights", "--arch", "mixste", "--frames", "9", "--channel", "16", "--depth", "2",
            "--heads", "4", "-o", str(out)]
    assert cli.main(args) == 0 and out.exists()
    text = capsys.readouterr()
    assert "ONNX Runtime vs fp64 eager" in text.out and "RANDOM WEIGHTS" in text.err
    for bad, words in [(args, "exists; pass --overwrite"), (args[:-1] + [str(tmp_path / "m.txt")], "ending in .onnx"),
                       (["export", "-o", str(tmp_path / "n.onnx")], "--checkpoint PATH or --random-weights")]:
        assert cli.main(bad) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1 and "Traceback" not in err
