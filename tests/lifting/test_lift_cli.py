"""``pyengine lift`` end to end on the shipped samples with tiny random-weight models, its exit codes, the
``bench`` delegation, and ``pyengine.render`` writing a GIF."""
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import pyengine
from pyengine import cli
from pyengine.data import synth
from pyengine.keypoints import load_keypoints
from pyengine.lift import lift
from pyengine.models import MHFormer, MixSTE
from pyengine.render import RenderError, render
from pyengine.testing import randomize_
from test_lift import one_thread  # noqa: F401  (autouse fixture)

DATA = os.path.dirname(synth.__file__)
SAMPLE_NPZ = os.path.join(DATA, "sample_walk.npz")
SAMPLE_JSON = os.path.join(DATA, "sample_walk_mmpose.json")
MIXSTE = ["--arch", "mixste", "--frames", "27", "--channel", "16", "--depth", "2", "--heads", "2"]
MHFORMER = ["--arch", "mhformer", "--frames", "9", "--channel", "16", "--d-hid", "32"]


def run(capsys, *args):
    code = cli.main(["lift", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_lift_sample_npz_with_render(capsys, tmp_path):
    out_path, gif = tmp_path / "walk.npz", tmp_path / "walk.gif"
    code, out, err = run(capsys, SAMPLE_NPZ, "-o", str(out_path), "--random-weights", "--seed", "3",
                         "--backend", "reference", *MIXSTE, "--render", str(gif), "--render-every", "100")
    assert code == 0, err
    assert "RANDOM WEIGHTS (seed 3)" in out and "MEANINGLESS" in err  # announced on both streams
    with np.load(out_path) as d:  # no pickle needed to read the result
        assert d["positions_3d"].shape == (300, 17, 3) and d["positions_3d"].dtype == np.float32
        assert bool(d["random_weights"]) and bool(d["flip"]) and str(d["arch"]) == "mixste"
        got = d["positions_3d"]
    model = randomize_(MixSTE(frames=27, channel=16, depth=2, heads=2), 3).eval()
    kp, _ = load_keypoints(SAMPLE_NPZ)
    np.testing.assert_allclose(got, lift(model, kp), rtol=0, atol=1e-6)
    assert Image.open(gif).n_frames == 3
    # The picture plays at the input's frame rate (the sample says 50 fps) unless --render-fps says otherwise.
    assert "(50 fps, the input's)" in out and Image.open(gif).info["duration"] == 20


def test_lift_sample_mmpose_json_to_directory(capsys, tmp_path):
    code, out, err = run(capsys, SAMPLE_JSON, "-o", str(tmp_path / "out"), "--random-weights", "--no-flip",
                         "--backend", "reference", *MHFORMER, "--batch-size", "128")
    assert code == 0, err
    assert "lifted 300 frames" in out and "flip off" in out
    got = np.load(tmp_path / "out" / "sample_walk_mmpose.npz")["positions_3d"]
    model = randomize_(MHFormer(frames=9, channel=16, d_hid=32), 0).eval()
    kp, _ = load_keypoints(SAMPLE_JSON)
    np.testing.assert_allclose(got, lift(model, kp, flip=False), rtol=0, atol=1e-6)


def test_lift_checkpoint_and_missing_keypoints(capsys, tmp_path):
    ckpt = tmp_path / "m.pth"
    torch.save(randomize_(MixSTE(frames=8, channel=16, depth=2, heads=2), 1).state_dict(), ckpt)
    kp = np.load(SAMPLE_NPZ)["keypoints_2d"][:20].copy()
    kp[5:7, 13] = np.nan
    np.save(tmp_path / "gaps.npy", kp)
    args = [str(tmp_path / "gaps.npy"), "-o", str(tmp_path / "gaps_3d.npz"), "--checkpoint", str(ckpt),
            "--backend", "reference", "--width", "1000", "--height", "1002"]
    code, _, err = run(capsys, *args)
    assert code == 2 and "2 missing keypoints" in err and "--interpolate" in err
    code, out, err = run(capsys, *args, "--interpolate")
    assert code == 0, err
    assert "RANDOM" not in out + err and f"weights: {ckpt}" in out


@pytest.mark.parametrize("args,message", [
    ([SAMPLE_NPZ, "-o", "x.npz"], "exactly one of --checkpoint PATH"),
    ([SAMPLE_NPZ, "-o", "x.npz", "--random-weights", "--checkpoint", "m.pth"], "exactly one of --checkpoint"),
    (["nope.npz", "-o", "x.npz", "--random-weights"], "no such file"),
    ([SAMPLE_NPZ, SAMPLE_NPZ, "-o", "out", "--random-weights"], "write the same output"),
    ([SAMPLE_NPZ, "-o", "x.npz", "--random-weights", "--render", "x.png"], "expected a .gif or .mp4"),
    ([SAMPLE_NPZ, "-o", "x.npz", "--random-weights", "--frames", "10"], "not divisible"),
    ([SAMPLE_NPZ, "-o", "x.npz", "--random-weights", "--arch", "mixste", "--layers", "3"], "unknown options"),
    ([SAMPLE_NPZ, "-o", "x.npz", "--checkpoint", "missing.pth"], "no such file"),
    ([SAMPLE_NPZ, "-o", "x.npz", "--random-weights", *MHFORMER, "--backend", "cuda", "--device", "cpu"],
     "backend='cuda'"),  # not available yet, or not on a CPU model: an error either way, never a fallback
    ([SAMPLE_JSON, "-o", "x.npz", "--random-weights", "--format", "npz", *MIXSTE, "--backend", "reference"],
     "not a readable .npz"),
])
def test_lift_usage_errors_exit_2(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *args)
    assert code == 2 and message in err and "pyengine lift: error:" in err


def test_mp4_without_ffmpeg_is_a_clear_error(capsys, tmp_path, monkeypatch):
    from matplotlib import animation
    monkeypatch.setattr(animation.writers, "is_available", lambda name: False)
    code, _, err = run(capsys, SAMPLE_NPZ, "-o", str(tmp_path / "x.npz"), "--random-weights",
                       "--render", str(tmp_path / "x.mp4"))
    assert code == 2 and "needs ffmpeg" in err


def test_argparse_errors_and_help(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["lift", SAMPLE_NPZ])  # -o is required
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        cli.main(["lift", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--checkpoint", "--random-weights", "--arch", "--device", "--dtype", "--backend", "--width",
                   "--height", "--no-flip", "--batch-size", "--render", "--interpolate", "--score-threshold",
                   "exit codes: 0 success, 1 a check failed (verify), 2 bad usage or bad input", "torchrun"):
        assert option in text


def test_bench_is_delegated(capsys, monkeypatch):
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--help"])  # parsed by pyengine.bench's own add_arguments
    assert exc.value.code == 0 and "pyengine bench" in capsys.readouterr().out
    # Without pyengine.bench (an older install) the command says so and exits 2.
    monkeypatch.setitem(sys.modules, "pyengine.bench", None)
    monkeypatch.delattr(pyengine, "bench", raising=False)
    assert cli.main(["bench"]) == 2
    assert "pyengine.bench is not installed" in capsys.readouterr().err


def test_render_writes_a_small_gif(tmp_path, capsys):
    with np.load(SAMPLE_NPZ) as d:
        kp, pos = d["keypoints_2d"][:6], d["positions_3d"][:6]
    path = render(tmp_path / "t.gif", kp, pos, fps=10, every=2, dpi=30, title="test", progress=True)
    with Image.open(path) as im:
        assert im.format == "GIF" and im.n_frames == 3 and im.size == (240, 120)
    assert "rendering t.gif" in capsys.readouterr().err  # the progress bar
    with pytest.raises(RenderError, match=r"fps: expected a positive number, got 0"):
        render(tmp_path / "u.gif", kp, pos, fps=0)
    with pytest.raises(RenderError, match="same T"):
        render(tmp_path / "u.gif", kp, pos[:5])
    with pytest.raises(RenderError, match="NaN"):
        render(tmp_path / "u.gif", kp * np.nan, pos)
    if shutil.which("ffmpeg") is None:
        with pytest.raises(RenderError, match="needs ffmpeg"):
            render(tmp_path / "u.mp4", kp, pos)
