"""`pyengine verify`: the table, the exit codes, and its use with checkpoints."""
import subprocess
import sys

import pytest
import torch

import pyengine
from pyengine import cli, verify
from pyengine.models import MHFormer
from pyengine.testing import randomize_


def run(capsys, *args):
    code = cli.main(["verify", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_verify_small_mhformer_lists_every_accelerated_module(capsys):
    small = ("--arch", "mhformer", "--frames", "27", "--channel", "32", "--d-hid", "48")
    code, out, _ = run(capsys, *small)  # auto on CPU: the fused model; one row per fused module
    assert code == 0, out
    for name in ("Transformer_encoder_1", "Transformer_encoder_3", "Transformer_hypothesis.SHR_blocks.1",
                 "Transformer_hypothesis.CHI_blocks.0", "(whole model output)"):
        assert name in out
    assert "OK: 7 checks within tolerance" in out
    # The kernels column says what ran (as model.report() does), never the requested backend "auto".
    assert " auto " not in out
    report = pyengine.load(randomize_(MHFormer(frames=27, channel=32, d_hid=48), 0)).report()
    ran = {kv.split("=")[1] for r in report if r.module == "Transformer_encoder_1"
           for kv in r.kernels.replace(",", " ").split()}
    row = next(line for line in out.splitlines() if line.startswith("Transformer_encoder_1 "))
    assert ran and row.split()[3] == "+".join(sorted(ran))
    code, out, _ = run(capsys, *small, "--backend", "reference")  # the reference: every watched module
    assert code == 0 and "regression" in out and "OK: 11 checks within tolerance" in out


@pytest.mark.parametrize("args,expect", [
    (["--arch", "tpc_mhformer", "--frames", "27", "--channel", "32", "--d-hid", "48", "--token-num", "9"],
     "SHR block"),
    (["--arch", "hot_mixste", "--frames", "27", "--channel", "32", "--depth", "3", "--token-num", "9",
      "--layer-index", "1"], "TRA"),
    (["--arch", "tpc_mixste", "--frames", "27", "--channel", "32", "--depth", "3", "--token-num", "9",
      "--layer-index", "2"], "temporal block"),
    (["--arch", "px_shuffle_unit", "--in-channels", "40", "--out-channels", "40"], "SUSA"),
    (["--frames", "27", "--channel", "32", "--d-hid", "48", "--dtype", "bfloat16"], "dtype bfloat16"),
])
def test_verify_other_architectures(capsys, args, expect):
    code, out, _ = run(capsys, *args)
    assert code == 0, out
    assert expect in out


def test_verify_checkpoint_and_deviation_exit_code(capsys, tmp_path, monkeypatch):
    path = tmp_path / "m.pth"
    torch.save(randomize_(MHFormer(frames=27, channel=32, d_hid=48), seed=2).state_dict(), path)
    code, out, _ = run(capsys, "--checkpoint", str(path))
    assert code == 0 and f"weights: {path}" in out
    # A tolerance no computation can meet must fail the run with exit code 1.
    monkeypatch.setitem(verify.TOLERANCE, torch.float32, 0.0)
    monkeypatch.setattr(verify, "EAGER_FACTOR", 0.0)
    code, out, _ = run(capsys, "--checkpoint", str(path))
    assert code == 1 and "FAILED" in out


def test_verify_usage_errors_exit_2(capsys, tmp_path):
    code, _, err = run(capsys, "--checkpoint", str(tmp_path / "missing.pth"))
    assert code == 2 and "no such file" in err
    code, _, err = run(capsys, "--arch", "mhformer", "--frames", "28")
    assert code == 2 and "not divisible" in err
    code, _, err = run(capsys, "--backend", "cuda", "--frames", "27", "--channel", "32", "--d-hid", "48")
    assert code == 2 and "backend='cuda' runs on CUDA tensors" in err
    code, _, err = run(capsys, "--arch", "hsusa")
    assert code == 2 and "needs ['channels']" in err


def test_console_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "pyengine", "verify", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--checkpoint" in out.stdout and "--token-num" in out.stdout


def test_top_level_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "pyengine", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for word in ("verify", "lift", "bench", "exit codes: 0 success, 1 a check failed"):
        assert word in out.stdout
