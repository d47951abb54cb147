"""Several people in one video (issue 18): windows/s of ``pyengine.lift_tracks`` (every person's windows in
shared model calls) against one ``pyengine.lift`` call per person, for 1, 4 and 16 people on the same video.

Rows (group ``tracks <case> P people``): ``per-person`` (P calls of ``lift``, batch_size 64 each), ``batched``
(one ``lift_tracks``, batch_size 64: the people fill the same calls one after the other, so each person's
partly filled last call is saved) and ``batched-wide`` (one ``lift_tracks`` with batch_size 64 x P, capped at
1024: about P times fewer, larger calls). ``windows`` is P x T (seq2frame: one window per frame), so report.py's
windows/s compares the rows directly. The people are the shipped walking sample, shifted per person (distinct
inputs). Sizes: the "small" model config and T = 32 frames on CPU, the published config and T = 300 on CUDA
(docs/benchmarks.md); under --benchmark-disable (CI runs each row once) T = 8.
Run: ``.venv/bin/python -m pytest benchmarks/test_bench_tracks.py --benchmark-json=out.json``."""
import os

import numpy as np
import pytest
import torch

import pyengine
from common import DEVICE, DTYPE, size, time_rows
from pyengine import bench as pb
from pyengine.data import synth
from pyengine.keypoints import load_keypoints
from pyengine.lift import DEFAULT_BATCH_SIZE, lift, lift_tracks
from pyengine.tracks import Segment, Tracks

CASES = ("mhformer-27", "mixste-243")
PEOPLE = (1, 4, 16)
IMPLS = ("per-person", "batched", "batched-wide")
MAX_BATCH = 1024


_LOADED = {}


def loaded(case, arch, config):
    """``pyengine.load`` of the case's model, once per case (loading validates against the reference)."""
    if case not in _LOADED:
        _LOADED[case] = pyengine.load(pb.build_model(arch, config), dtype=DTYPE, device=DEVICE)
    return _LOADED[case]


def scene(P, T):
    """P people walking the sample's first T frames, person p shifted by 0.05 p (normalised units) to the right."""
    kp, _ = load_keypoints(os.path.join(os.path.dirname(synth.__file__), "sample_walk.npz"))
    people = [(kp[:T] + np.array([0.05 * p, 0.0], dtype=np.float32)).astype(np.float32) for p in range(P)]
    segments = [Segment(p, 0, x, np.ones(T, dtype=bool)) for p, x in enumerate(people)]
    tracks = Tracks(np.arange(T), segments, [], [], "track_id", dict(min_oks=0.3, max_gap=10, min_length=10,
                                                                  score_threshold=0.3))
    return people, tracks


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("people", PEOPLE)
@pytest.mark.parametrize("case", CASES)
def test_tracks(benchmark, case, people, impl):
    tier = size(benchmark)
    arch, config = pb.case_config(case, tier)
    T = 8 if benchmark.disabled else 300 if tier == "full" else 32  # CI: each row once, kept cheap
    model = loaded(case, arch, config)
    seqs, tracks = scene(people, T)
    wide = min(DEFAULT_BATCH_SIZE * people, MAX_BATCH)
    if impl == "per-person":
        def fn(_):
            return [lift(model, x, progress=False) for x in seqs]
    else:
        bs = DEFAULT_BATCH_SIZE if impl == "batched" else wide

        def fn(_):
            return lift_tracks(model, tracks, batch_size=bs, progress=False)
    seq2frame = arch in pb.SEQ2FRAME
    windows = people * (T if seq2frame else -(-T // model.pyengine.config["frames"]))
    extra = {"impl": "tracks", "variant": impl, "dtype": str(DTYPE).removeprefix("torch."), "case": case,
             "size": tier, "people": people, "frames": T, "windows": windows,
             "frames_per_window": 1 if seq2frame else model.pyengine.config["frames"]}
    out = time_rows(benchmark, fn, [None], group=f"tracks {case} {people} people", extra=extra, warmup=1)
    got = np.stack(out) if impl == "per-person" else out.positions_3d
    assert got.shape == (people, T, 17, 3) and np.isfinite(got).all()
    if impl != "per-person":  # sharing the calls changes nothing: the last person alone, in the same layout
        alone = lift(model, seqs[-1], batch_size=out.batch_size, first_row=out.first_rows[-1], progress=False)
        torch.testing.assert_close(torch.from_numpy(got[-1]), torch.from_numpy(alone), rtol=0, atol=0)
