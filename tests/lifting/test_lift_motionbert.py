"""MotionBERT's confidence channel end to end (issue 17 item 4): ``lift``, ``lift_tracks``, ``Lifter`` and
``pyengine lift`` feed ``[B, F, 17, 3]`` (x, y, keypoint score) to MotionBERT / HoT-MotionBERT; files without
scores get 1.0 with a note; seq2seq chunks edge-padded to exactly maxlen; flip TTA mirrors the confidence with
its joints and never negates it. Tiny random-weight models, reference backend (the fused paths have their own
parity tests in tests/models/test_motionbert.py)."""
import json
import os
import warnings

import numpy as np
import pytest
import torch

import pyengine
from pyengine import cli
from pyengine.data import synth
from pyengine.keypoints import LEFT_JOINTS, RIGHT_JOINTS, KeypointError, Keypoints2D, load_keypoints
from pyengine.lift import Lifter, lift, lift_tracks
from pyengine.models import HoTMotionBERT, MixSTE, MotionBERT
from pyengine.testing import randomize_
from test_lift import one_thread  # noqa: F401  (autouse fixture)

DATA = os.path.dirname(synth.__file__)
SAMPLE_NPZ = os.path.join(DATA, "sample_walk.npz")
SAMPLE_JSON = os.path.join(DATA, "sample_walk_mmpose.json")
TINY = dict(dim_feat=16, dim_rep=16, num_heads=2, mlp_ratio=2, maxlen=9)
CONFIGS = {"motionbert": dict(depth=1, **TINY), "hot_motionbert": dict(depth=2, token_num=3, layer_index=1, **TINY)}
CLASSES = {"motionbert": MotionBERT, "hot_motionbert": HoTMotionBERT}
CLI_TINY = ["--dim-feat", "16", "--dim-rep", "16", "--num-heads", "2", "--mlp-ratio", "2", "--maxlen", "9",
            "--backend", "reference"]
CLI_CONFIG = {"motionbert": ["--depth", "1"], "hot_motionbert": ["--depth", "2", "--token-num", "3",
                                                                    "--layer-index", "1"]}
SWAP, SWAPPED = list(LEFT_JOINTS + RIGHT_JOINTS), list(RIGHT_JOINTS + LEFT_JOINTS)


def tiny(arch, seed=0):
    return pyengine.load(randomize_(CLASSES[arch](**CONFIGS[arch]).eval(), seed), backend="reference")


def inputs(T=20, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-0.6, 0.6, (T, 17, 2)).astype(np.float32),
            rng.uniform(0.05, 1.0, (T, 17)).astype(np.float32))


def mirror(x):
    """SPEC §4 flip, written out independently of pyengine.lift.flip_pose: x negated, left/right swapped."""
    y = x[..., _perm(), :].clone()
    y[..., 0] = -y[..., 0]
    return y


def by_hand(model, xy, conf, flip, negate_confidence=False):
    """Consecutive chunks of maxlen frames, the last one edge-padded, all in one call through the model."""
    F, T = model.maxlen, len(xy)
    x = torch.from_numpy(np.concatenate([xy, conf[..., None]], -1))
    n = -(-T // F)
    idx = torch.arange(n * F).clamp(max=T - 1).reshape(n, F)
    chunks = x[idx]
    with torch.inference_mode():
        out = model(chunks)
        if flip:
            flipped = mirror(chunks)
            if negate_confidence:
                flipped[..., 2] = -flipped[..., 2]
            out = (out + mirror(model(flipped))) / 2
    return out.reshape(-1, 17, 3)[:T].numpy()


@pytest.mark.parametrize("arch", ["motionbert", "hot_motionbert"])
@pytest.mark.parametrize("flip", [False, True])
def test_lift_equals_chunks_through_the_reference(arch, flip):
    model = tiny(arch)
    xy, conf = inputs()  # 20 frames: chunks 0-8, 9-17 and 18-19 edge-padded to 9
    got = lift(model, xy, confidence=conf, flip=flip, batch_size=3)  # one call of 3 chunks, as by_hand
    np.testing.assert_array_equal(got, by_hand(model, xy, conf, flip))
    # other batch layouts: the same up to float summation order
    np.testing.assert_allclose(lift(model, xy, confidence=conf, flip=flip, batch_size=1), got, rtol=0, atol=1e-5)


def test_flip_keeps_the_confidence_channel_unnegated():
    model = tiny("motionbert")
    xy, conf = inputs()
    seen = []
    hook = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        got = lift(model, xy, confidence=conf, flip=True, batch_size=3)
    finally:
        hook.remove()
    plain, flipped = seen
    assert (flipped[..., 2] >= 0).all()
    torch.testing.assert_close(flipped[..., 2], plain[..., _perm(), 2], rtol=0, atol=0)  # swapped, same sign
    torch.testing.assert_close(flipped[..., 0], -plain[..., _perm(), 0], rtol=0, atol=0)
    # and the output would differ if the confidence were negated
    wrong = by_hand(model, xy, conf, True, negate_confidence=True)
    assert np.abs(got - wrong).max() > 1e-3


def _perm():
    """Joint j of the mirrored pose is joint _perm()[j] of the original."""
    p = np.arange(17)
    p[SWAP] = SWAPPED
    return p


@pytest.mark.parametrize("arch", ["motionbert", "hot_motionbert"])
def test_scores_reach_the_model(arch):
    model = tiny(arch)
    xy, conf = inputs()
    a = lift(model, xy, confidence=conf)
    changed = conf.copy()
    changed[5, 3] = 0.0  # one joint of one frame
    b = lift(model, xy, confidence=changed)
    assert np.abs(a - b).max() > 1e-4
    # a Keypoints2D's own scores are the confidence (normalised keypoints, no threshold hit: scores >= 0.3)
    kp = Keypoints2D(xy.astype(np.float64), np.maximum(conf, 0.3).astype(np.float64), normalized=True)
    np.testing.assert_array_equal(lift(model, kp), lift(model, xy, confidence=np.maximum(conf, 0.3)))


def test_without_scores_the_confidence_is_one_with_a_warning():
    model = tiny("motionbert")
    xy, _ = inputs()
    with pytest.warns(UserWarning, match="no keypoint scores.*1.0"):
        got = lift(model, xy)
    np.testing.assert_array_equal(got, lift(model, xy, confidence=np.ones((20, 17), np.float32)))


def test_filled_keypoints_get_confidence_zero():
    model = tiny("motionbert")
    xy, conf = inputs()
    xy64, scores = xy.astype(np.float64), conf.astype(np.float64)
    scores[4, 2] = 0.1  # below the default threshold 0.3: missing, filled, confidence 0
    xy64[7, 9] = np.nan  # missing, filled, confidence 0
    scores[:, [0, 1]] = 0.5
    kp = Keypoints2D(xy64, scores, normalized=True)
    x, c = pyengine.keypoints.prepare_keypoints(kp, interpolate=True, return_confidence=True)
    assert c[4, 2] == 0 and c[7, 9] == 0 and c[0, 0] == 0.5 and c[4, 3] == kp.scores[4, 3].astype(np.float32)
    with pytest.raises(KeypointError, match="missing keypoints"):  # same threshold rule as for 2-channel lifters
        lift(model, kp)


def test_bad_confidence_is_refused():
    model = tiny("motionbert")
    xy, conf = inputs()
    bad = conf.copy()
    bad[3, 4] = 1.5
    with pytest.raises(KeypointError, match=r"frame 3 .*score 1.5.*\[0, 1\]"):
        lift(model, xy, confidence=bad)
    with pytest.raises(KeypointError, match=r"confidence: expected a numeric \[T, 17\]"):
        lift(model, xy, confidence=conf[:5])
    mix = pyengine.load(randomize_(MixSTE(frames=9, channel=16, depth=1, heads=2).eval(), 0), backend="reference")
    with pytest.raises(ValueError, match="confidence: arch 'mixste' takes x, y only"):
        lift(mix, xy, confidence=conf)


@pytest.mark.parametrize("arch", ["motionbert", "hot_motionbert"])
def test_lifter_streams_the_confidence(arch):
    model = tiny(arch)
    xy, conf = inputs(T=13)
    want = lift(model, xy, confidence=conf, batch_size=1)
    lifter = Lifter(model)
    out = []
    for t in range(13):
        out += lifter.push(np.concatenate([xy[t], conf[t, :, None]], 1))
    out += lifter.flush()
    np.testing.assert_array_equal(np.stack(out), want)
    # several people, one of them without scores ([17, 2] frames: 1.0, warned once)
    got = {0: [], 1: []}
    with pytest.warns(UserWarning, match="no keypoint scores"):
        for t in range(13):
            res = lifter.push({0: np.concatenate([xy[t], conf[t, :, None]], 1), 1: xy[t]})
            for k in res:
                got[k] += res[k]
        for k, v in lifter.flush().items():
            got[k] += v
    np.testing.assert_allclose(np.stack(got[0]), want, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.stack(got[1]), lift(model, xy, confidence=np.ones((13, 17), np.float32),
                                                      batch_size=1), rtol=0, atol=1e-5)
    with pytest.raises(KeypointError, match=r"\[17, 3\] \(x, y, score"):
        lifter.push(np.zeros((17, 4)))
    with pytest.raises(KeypointError, match="score -0.5"):
        lifter.push(np.concatenate([xy[0], np.full((17, 1), -0.5)], 1))


def test_lift_tracks_feeds_each_segments_scores(tmp_path):
    from test_tracks import scene, write
    model = tiny("motionbert")
    res = lift_tracks(model, write(tmp_path / "scene.json", scene()), interpolate=True, batch_size=4)
    assert res.notes == [] and res.confidence.shape == res.valid.shape + (17,)
    for k, seg in enumerate(res.tracks.segments):
        assert seg.confidence.shape == seg.keypoints.shape[:2]
        p = list(res.track_ids).index(seg.track_id)
        np.testing.assert_array_equal(res.confidence[p, seg.start:seg.stop], seg.confidence)
        np.testing.assert_array_equal(
            res.positions_3d[p, seg.start:seg.stop],
            lift(model, seg.keypoints, confidence=seg.confidence, batch_size=res.batch_size,
                 first_row=res.first_rows[k]))


def run(capsys, *args):
    try:
        code = cli.main(["lift", *args])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def cli_model(arch):
    """The model ``pyengine lift --random-weights --arch ARCH`` with CLI_TINY builds (seed 0)."""
    from pyengine import arch as archs
    kwargs = {**archs.constructor_args(arch), **CONFIGS[arch]}
    return pyengine.load(randomize_(archs.construct(arch, kwargs, given=set(CONFIGS[arch])), 0),
                         backend="reference")


@pytest.mark.parametrize("arch", ["motionbert", "hot_motionbert"])
def test_cli_sample_npz_without_scores(capsys, tmp_path, arch):
    out = tmp_path / "walk.npz"
    code, stdout, err = run(capsys, SAMPLE_NPZ, "-o", str(out), "--random-weights", "--arch", arch, *CLI_TINY,
                            *CLI_CONFIG[arch])
    assert code == 0, err
    assert "note: " in err and "no keypoint scores" in err and "1.0" in err
    with np.load(out) as z:
        notes, conf, pos = json.loads(str(z["notes"])), z["confidence"], z["positions_3d"]
        assert str(z["arch"]) == arch
    assert len(notes) == 1 and "no keypoint scores" in notes[0]
    assert conf.shape == (300, 17) and (conf == 1).all()
    kp, _ = load_keypoints(SAMPLE_NPZ)
    np.testing.assert_array_equal(pos, lift(cli_model(arch), kp, confidence=conf))


@pytest.mark.parametrize("arch", ["motionbert", "hot_motionbert"])
def test_cli_mmpose_json_with_scores(capsys, tmp_path, arch):
    out = tmp_path / "walk.npz"
    code, stdout, err = run(capsys, SAMPLE_JSON, "-o", str(out), "--random-weights", "--arch", arch, *CLI_TINY,
                            *CLI_CONFIG[arch])
    assert code == 0, err
    assert "no keypoint scores" not in err + stdout
    kp, conf, raw = load_keypoints(SAMPLE_JSON, return_confidence=True)
    assert raw.scores is not None and conf.min() < conf.max()  # real, varying scores
    with np.load(out) as z:
        assert json.loads(str(z["notes"])) == []
        np.testing.assert_array_equal(z["confidence"], conf)
        np.testing.assert_array_equal(z["positions_3d"], lift(cli_model(arch), kp, confidence=conf))
        # the scores mattered: all-ones confidence gives another answer
        assert np.abs(z["positions_3d"] - lift(cli_model(arch), kp, confidence=np.ones_like(conf))).max() > 1e-4


def test_cli_motionbert_options(capsys, tmp_path):
    assert {"motionbert", "hot_motionbert"} <= set(cli.LIFT_ARCHS)
    code, _, err = run(capsys, SAMPLE_NPZ, "-o", str(tmp_path / "a.npz"), "--random-weights", "--arch",
                       "motionbert", "--mlp-ratio", "zero", *CLI_TINY[2:])
    assert code == 2 and "--mlp-ratio" in err and "positive" in err
    code, _, err = run(capsys, SAMPLE_NPZ, "-o", str(tmp_path / "a.npz"), "--random-weights", "--arch",
                       "motionbert", "--dim-feat", "16", "--dim-rep", "16", "--depth", "1", "--num-heads", "2",
                       "--mlp-ratio", "1.5", "--maxlen", "9", "--backend", "reference")
    assert code == 0, err
    with np.load(tmp_path / "a.npz") as z:
        config = json.loads(str(z["config"]))
    assert config["mlp_ratio"] == 1.5 and config["maxlen"] == 9 and config["dim_feat"] == 16


def test_cli_multi_person(capsys, tmp_path):
    from test_tracks import scene, write
    doc = scene(track_ids=True)  # B keeps its id across its 50-frame absence
    for frame in doc["instance_info"]:  # drop the scores: 1.0 where detected, with the note
        for inst in frame["instances"]:
            inst.pop("keypoint_scores", None)
    src, out = write(tmp_path / "scene.json", doc), tmp_path / "scene_3d.npz"
    code, stdout, err = run(capsys, src, "-o", str(out), "--random-weights", "--arch", "motionbert", *CLI_TINY,
                            *CLI_CONFIG["motionbert"], "--interpolate",
                            "--max-gap", "60")  # B's 50-frame absence is filled: confidence 0 there
    assert code == 0, err
    assert "no keypoint scores" in err
    with np.load(out) as z:
        assert bool(z["multi_person"]) and len(json.loads(str(z["notes"]))) == 1
        conf, valid, detected = z["confidence"], z["valid"], z["detected"]
    assert (conf[detected] == 1).all() and np.isnan(conf[~valid]).all()
    assert (valid & ~detected).any() and (conf[valid & ~detected] == 0).all()  # filled frames of short gaps
