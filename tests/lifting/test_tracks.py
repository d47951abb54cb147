"""Several people in one video (issue 18): tracks from MMPose detections (pyengine/tracks.py), one batched lift
of every track (``pyengine.lift_tracks``) equal bit for bit to lifting each person alone, the multi-person
``Lifter``, the CLI's multi-person .npz and picture, and the bad inputs of all of these.

The scene is built from the shipped walking sample: person A walks as recorded; B is A mirrored left-right,
smaller and lower in the picture (A and B cross paths twice), and leaves the picture for 50 frames (longer than
max_gap) before coming back; C is A played backwards, larger and higher (crossing A around frame 150); one
spurious 4-frame detection. Instance order is shuffled in every frame."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import pyengine
from pyengine import cli
from pyengine.data import synth
from pyengine.keypoints import KeypointError, coco_to_h36m, load_keypoints, read_detections
from pyengine.lift import Lifter, lift, lift_tracks
from pyengine.testing import rel_error
from pyengine.tracks import build_tracks, oks
from test_lift import one_thread, tiny  # noqa: F401  (one_thread: autouse fixture)

DATA = os.path.dirname(synth.__file__)
W, H = 1000, 1002
T = 120  # frames of the scene (the sample has 300; fewer keep the tests fast)
LEAVES, RETURNS = 40, 90  # B is absent on frames 40..89
SPURIOUS = range(70, 74)
TINY_CLI = ["--arch", "mhformer", "--frames", "9", "--channel", "16", "--d-hid", "32", "--backend", "reference"]


def people():
    """The true H36M pixel keypoints ``{name: [T, 17, 2]}`` and the frames each person is in."""
    with np.load(os.path.join(DATA, "sample_walk.npz")) as d:
        a = d["keypoints_2d"][:300].astype(np.float64)
    hip = a[:, :1]
    b = (a - hip) * 0.8 + hip
    b[..., 0] = 1050 - b[..., 0]  # mirrored: walks the other way
    b[..., 1] += 110
    c = ((a - hip) * 1.1 + hip)[::-1].copy()
    c[..., 1] -= 90
    # A is on frames 0..T-1 of the sample; B and C take frames of it that cross A's path within the scene.
    seqs = {"A": a[:T], "B": b[20:20 + T], "C": c[90:90 + T]}
    frames = {"A": np.arange(T), "B": np.r_[0:LEAVES, RETURNS:T], "C": np.arange(T)}
    spurious = (a[0] - a[0, :1]) * 0.4 + np.array([120.0, 150.0])
    return seqs, frames, spurious


def scene(seed=0, track_ids=False, extra=None):
    """The MMPose prediction document of the scene, each frame's instances in a seeded random order."""
    seqs, frames, spurious = people()
    rng = np.random.default_rng(seed)
    ids = {"A": 7, "B": 3, "C": 11, "S": 5}
    out = []
    for t in range(T):
        insts = [(name, seqs[name][t]) for name in seqs if t in frames[name]]
        if t in SPURIOUS:
            insts.append(("S", spurious))
        entries = []
        for name, kp in insts:
            coco = synth.h36m_to_coco(kp[None])[0]
            inst = {"keypoints": coco.tolist(), "keypoint_scores": [0.9] * 17}
            if track_ids:
                inst["track_id"] = ids[name]
            entries.append(inst)
        entries = [entries[i] for i in rng.permutation(len(entries))]
        out.append({"frame_id": t, "instances": entries})
    doc = {"meta_info": {"image_width": W, "image_height": H, "fps": 50.0}, "instance_info": out}
    if extra:
        extra(doc)
    return doc


def write(path, doc):
    with open(path, "w") as f:
        json.dump(doc, f)
    return str(path)


def single_person_json(path, name, first, last):
    """The instances of one true person on frames first..last as a one-person MMPose file."""
    seqs, _, _ = people()
    frames = [{"frame_id": t, "instances": [{"keypoints": synth.h36m_to_coco(seqs[name][t][None])[0].tolist(),
                                              "keypoint_scores": [0.9] * 17}]} for t in range(first, last + 1)]
    return write(path, {"meta_info": {"image_width": W, "image_height": H}, "instance_info": frames})


def who(segment):
    """The true person whose normalised keypoints ``segment`` holds on every detected frame (None if mixed)."""
    seqs, frames, _ = people()
    seqs = {n: coco_to_h36m(synth.h36m_to_coco(x))[0] for n, x in seqs.items()}  # as the reader sees them
    names = set()
    for k, t in enumerate(range(segment.start, segment.stop)):
        if not segment.detected[k]:
            continue  # a filled gap
        x = segment.keypoints[k].astype(np.float64) * W / 2 + np.array([W / 2, H / 2])  # back to pixels
        dist = {n: np.abs(x - seqs[n][t]).max() for n in seqs if t in frames[n]}
        best = min(dist, key=dist.get)
        names.add(best if dist[best] < 0.5 else "?")
    return names.pop() if len(names) == 1 else None


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    return write(tmp_path_factory.mktemp("scene") / "scene.json", scene())


def test_oks():
    a = np.random.default_rng(0).uniform(100, 400, size=(1, 17, 2))
    ok = np.ones((1, 17), dtype=bool)
    assert oks(a, ok, a, ok)[0, 0] == 1.0
    far = oks(a, ok, a + 300, ok)[0, 0]
    near = oks(a, ok, a + 3, ok)[0, 0]
    assert 0 <= far < 0.01 < 0.9 < near < 1
    assert oks(a, ok, a, np.zeros((1, 17), dtype=bool))[0, 0] == 0  # no joint in common


def test_the_scene_has_crossing_paths():
    seqs, frames, _ = people()
    for a, b in [("A", "B"), ("A", "C"), ("B", "C")]:
        both = np.intersect1d(frames[a], frames[b])
        dx = seqs[a][both, 0, 0] - seqs[b][both, 0, 0]  # hip x: the left-right order swaps
        assert dx.min() < 0 < dx.max(), (a, b)


def test_tracks_are_recovered_without_track_id(scene_file):
    tracks = build_tracks(scene_file)
    assert tracks.method == "oks"
    got = sorted((who(s), int(s.start), int(s.stop)) for s in tracks.segments)
    # B's 50-frame absence is longer than max_gap: it comes back as a new track.
    assert got == [("A", 0, T), ("B", 0, LEAVES), ("B", RETURNS, T), ("C", 0, T)]
    assert len(set(tracks.track_ids)) == 4 and all(s.detected.all() for s in tracks.segments)
    # The spurious detection is reported and skipped, not silently dropped.
    assert [(s["first_frame"], s["last_frame"], s["detections"]) for s in tracks.skipped] == [(70, 73, 4)]
    assert any("skipped track" in line and "70..73" in line for line in tracks.summary())


def test_instance_order_does_not_matter(tmp_path):
    a = build_tracks(write(tmp_path / "a.json", scene(seed=1)))
    b = build_tracks(write(tmp_path / "b.json", scene(seed=2)))
    assert a.track_ids == b.track_ids and len(a.segments) == len(b.segments)
    for s, t in zip(a.segments, b.segments):
        assert (s.track_id, s.start) == (t.track_id, t.start)
        np.testing.assert_array_equal(s.keypoints, t.keypoints)


def test_track_ids_from_the_file(tmp_path):
    tracks = build_tracks(write(tmp_path / "ids.json", scene(track_ids=True)))
    assert tracks.method == "track_id" and tracks.track_ids == (3, 7, 11)
    got = sorted((s.track_id, who(s), int(s.start), int(s.stop)) for s in tracks.segments)
    # Same id after the long absence: one track, two segments (the gap is not lifted).
    assert got == [(3, "B", 0, LEAVES), (3, "B", RETURNS, T), (7, "A", 0, T), (11, "C", 0, T)]
    assert [s["track_id"] for s in tracks.skipped] == [5]
    # With max_gap beyond the absence the gap stays inside the track: filled only when asked.
    with pytest.raises(KeypointError, match=r"track 3: 50 frame\(s\) without a detection inside frames 0...119.*"
                                            r"interpolate=True"):
        build_tracks(write(tmp_path / "ids.json", scene(track_ids=True)), max_gap=60)
    filled = build_tracks(tmp_path / "ids.json", max_gap=60, interpolate=True)
    seg = [s for s in filled.segments if s.track_id == 3]
    assert len(seg) == 1 and (~seg[0].detected).sum() == RETURNS - LEAVES


@pytest.mark.parametrize("arch", ["mhformer", "tpc_mhformer", "mixste", "hot_mixste"])
def test_each_track_equals_its_own_lift(scene_file, tmp_path, arch):
    model = tiny(arch)
    bs = 16  # several segments share calls: a segment's windows start mid-call
    res = lift_tracks(model, scene_file, batch_size=bs)
    tracks = res.tracks
    assert res.positions_3d.shape == (4, T, 17, 3) and res.valid.shape == (4, T)
    assert res.first_rows[0] == 0 and any(r != 0 for r in res.first_rows)
    np.testing.assert_array_equal(res.frame_ids, np.arange(T))
    for seg, row in zip(tracks.segments, res.first_rows):
        p = list(res.track_ids).index(seg.track_id)
        # The person's own detections, read as a one-person file and lifted alone with the same layout.
        name = who(seg)
        kp, _ = load_keypoints(single_person_json(tmp_path / f"{name}{seg.start}.json", name, seg.start,
                                                  seg.stop - 1))
        alone = lift(model, kp, batch_size=res.batch_size, first_row=row)
        assert torch.equal(torch.from_numpy(res.positions_3d[p, seg.start:seg.stop]), torch.from_numpy(alone))
        assert res.valid[p, seg.start:seg.stop].all()
    assert np.isnan(res.positions_3d[~res.valid]).all() and np.isfinite(res.positions_3d[res.valid]).all()
    # Balanced calls: the same number as batch_size would need, with at most one padding row each.
    step = 1 if arch.startswith(("mhformer", "tpc_")) else model.frames
    G = sum(-(-len(s.keypoints) // step) for s in tracks.segments)
    assert res.batch_size == -(-G // -(-G // bs)) <= bs
    # Any layout equals the per-frame result up to float summation order.
    alone = [lift(model, s.keypoints, batch_size=bs) for s in sorted(tracks.segments, key=lambda s: s.track_id)]
    assert rel_error(torch.from_numpy(res.positions_3d[res.valid]), torch.from_numpy(np.concatenate(alone))) < 1e-5


def test_first_row_pads_every_call_to_batch_size():
    # lift_tracks's layout: every model call has exactly batch_size windows (one shape, so a window's result
    # does not depend on its neighbours), the first window in row first_row; the plain layout's last call is
    # smaller.
    model = tiny("mhformer")
    shapes = []
    handle = model.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    x = (0.3 * np.random.default_rng(0).normal(size=(21, 17, 2))).astype(np.float32)
    plain = lift(model, x, batch_size=8, flip=False)
    assert shapes == [(8, 9, 17, 2)] * 2 + [(5, 9, 17, 2)]
    shapes.clear()
    padded = lift(model, x, batch_size=8, flip=False, first_row=6)
    handle.remove()
    assert shapes == [(8, 9, 17, 2)] * 4  # rows 6..26 of 4 calls
    assert rel_error(torch.from_numpy(padded), torch.from_numpy(plain)) < 1e-5
    with pytest.raises(ValueError, match=r"first_row: expected None or an int in \[0, batch_size=8\), got 8"):
        lift(model, x, batch_size=8, first_row=8)


def test_lifter_streams_several_people(scene_file):
    model = tiny("mhformer")
    tracks = build_tracks(scene_file)
    segs = {s.track_id: s for s in tracks.segments}
    lifter = Lifter(model)
    calls = []
    handle = model.register_forward_pre_hook(lambda m, args: calls.append(len(args[0])))
    got = {tid: [] for tid in segs}
    for t in range(T):
        frame = {tid: s.keypoints[t - s.start] for tid, s in segs.items() if s.start <= t < s.stop}
        for tid, frames in lifter.push(frame).items():
            got[tid] += frames
    for tid, frames in lifter.flush().items():
        got[tid] += frames
    handle.remove()
    assert max(calls) == 3  # the three people present in a frame share one call (per flip pass)
    for tid, s in segs.items():
        want = lift(model, s.keypoints, batch_size=32)  # other calls' shapes: equal up to float order
        assert len(got[tid]) == len(want)
        assert rel_error(torch.from_numpy(np.stack(got[tid])), torch.from_numpy(want)) < 1e-5
    # One person in a dict stream: bit for bit the single-person stream.
    solo = segs[min(segs)].keypoints[:30]
    out = []
    for frame in solo:
        out += lifter.push({"solo": frame})["solo"]
    out += lifter.flush()["solo"]
    np.testing.assert_array_equal(np.stack(out), lift(model, solo, batch_size=1))


def test_lifter_multi_person_bad_frames():
    model = tiny("mixste")
    lifter = Lifter(model)
    good = np.zeros((17, 2))
    lifter.push({1: good, 2: good})
    with pytest.raises(KeypointError, match=r"frame_2d\[2\]: frame 1 joint 0 \(hip\): \(300, 300\).*look like "
                                            r"pixels"):
        lifter.push({1: good, 2: np.full((17, 2), 300.0)})
    assert lifter._people[1].count == 1 and lifter._people[2].count == 1  # the refused push stored nothing
    with pytest.raises(ValueError, match="streaming 2 people"):
        lifter.push(good)
    with pytest.raises(KeypointError, match="track ids"):
        lifter.push({None: good})
    pool = len(lifter._pool)
    out = lifter.push({1: good})  # 2 left: its one frame is flushed in this push's result, its ring reused
    assert len(out[2]) == 1 and out[1] == [] and 2 not in lifter._people and len(lifter._pool) == pool + 1


# ------------------------------------------------------------------------------------------------ bad input
def _edit(path_fn):
    def extra(doc):
        path_fn(doc["instance_info"])
    return extra


def _drop_scores(frames):
    del frames[5]["instances"][1]["keypoint_scores"]


def _null_keypoints(frames):
    frames[3]["instances"][0]["keypoints"] = None


def _short_keypoints(frames):
    frames[3]["instances"][0]["keypoints"] = frames[3]["instances"][0]["keypoints"][:16]


def _some_track_ids(frames):
    del frames[8]["instances"][2]["track_id"]


def _duplicate_track_id(frames):
    frames[4]["instances"][1]["track_id"] = frames[4]["instances"][0]["track_id"]


def _string_track_id(frames):
    frames[2]["instances"][0]["track_id"] = "seven"


def _all_empty(frames):
    for fr in frames:
        fr["instances"] = []


def _empty_frames_inside_tracks(frames):
    for fr in frames[30:33]:
        fr["instances"] = []


# (scene options, edit, build_tracks options, exception, words of the message)
BAD_SCENES = [
    (False, _drop_scores, {}, KeypointError, ["keypoint_scores", "1 of", "have none", "frame 5 instance 1"]),
    (False, _null_keypoints, {}, KeypointError, ["frame 3 instance 0", "keypoints is null"]),
    (False, _short_keypoints, {}, KeypointError, ["frame 3 instance 0", "17 COCO keypoints", "[16, 2]"]),
    (True, _some_track_ids, {}, KeypointError, ["track_id", "of", "instances have one", "frame 8 instance 2"]),
    (True, _duplicate_track_id, {}, KeypointError, ["frame 4", "track_id", "appears in instances 0 and 1"]),
    (True, _string_track_id, {}, KeypointError, ["frame 2 instance 0", "track_id", "'seven'"]),
    (False, _all_empty, {}, KeypointError, ["no instance in any of its 120 frame(s)"]),
    (False, _empty_frames_inside_tracks, {}, KeypointError,
     ["track 0: 3 frame(s) without a detection", "first [30, 31, 32]", "interpolate=True"]),
    (False, None, {"max_gap": -1}, ValueError, ["max_gap", "-1"]),
    (False, None, {"min_length": 0}, ValueError, ["min_length", "0"]),
    (False, None, {"min_oks": 1.5}, ValueError, ["min_oks", "(0, 1]", "1.5"]),
    (True, None, {"min_oks": 0.5}, ValueError, ["min_oks=0.5", "track_id on every instance"]),
    (False, None, {"width": 10, "height": 10}, KeypointError, ["width=10 contradicts", "width 1000"]),
]


@pytest.mark.parametrize("ids,edit,options,exc,words", BAD_SCENES, ids=range(len(BAD_SCENES)))
def test_bad_detections_are_refused(tmp_path, ids, edit, options, exc, words):
    path = write(tmp_path / "bad.json", scene(track_ids=ids, extra=_edit(edit) if edit else None))
    with pytest.raises(exc) as info:
        build_tracks(path, **options)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_empty_frames_inside_tracks_are_filled_when_asked(tmp_path):
    path = write(tmp_path / "gaps.json", scene(extra=_edit(_empty_frames_inside_tracks)))
    tracks = build_tracks(path, interpolate=True)
    assert sorted((who(s), s.start, s.stop) for s in tracks.segments)[0] == ("A", 0, T)
    assert sum(int((~s.detected).sum()) for s in tracks.segments) == 3 * 3  # A, B and C each miss 30..32


def test_files_without_scores_are_tracked(tmp_path):
    def no_scores(frames):
        for fr in frames:
            for inst in fr["instances"]:
                del inst["keypoint_scores"]
    det = read_detections(write(tmp_path / "plain.json", scene(extra=_edit(no_scores))))
    assert not det.has_scores and (det.scores == 1).all()
    assert len(build_tracks(det).segments) == 4


def test_read_detections_refuses_other_formats(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 17, 2)))
    with pytest.raises(KeypointError, match="MMPose .json predictions only"):
        read_detections(tmp_path / "x.npy")


# ------------------------------------------------------------------------------------------------ the CLI
def run(capsys, *args):
    try:
        code = cli.main(["lift", *args])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_multi_person_npz_and_picture(capsys, tmp_path, scene_file):
    out, gif = tmp_path / "scene_3d.npz", tmp_path / "scene.gif"
    code, stdout, err = run(capsys, scene_file, "-o", str(out), "--random-weights", *TINY_CLI, "--render",
                            str(gif), "--render-every", "40", "--batch-size", "32")
    assert code == 0, err
    assert "4 track(s)" in stdout and "skipped track" in stdout and "lifted 4 tracks" in stdout
    with np.load(out) as d:
        assert d["positions_3d"].shape == (4, T, 17, 3) and d["valid"].shape == (4, T) and bool(d["multi_person"])
        np.testing.assert_array_equal(d["frame_ids"], np.arange(T))
        tracking = json.loads(str(d["tracking"]))
        assert tracking["method"] == "oks" and len(tracking["skipped"]) == 1
        model = pyengine.load(tiny_cli_model(), backend="reference", device="cpu")
        want = lift_tracks(model, scene_file, batch_size=32)
        np.testing.assert_array_equal(d["positions_3d"], want.positions_3d)
        np.testing.assert_array_equal(d["track_ids"], want.track_ids)
        np.testing.assert_array_equal(d["detected"], want.detected)
    with Image.open(gif) as im:
        assert im.n_frames == 3


def test_render_tracks(tmp_path, capsys, scene_file):
    from pyengine.render import RenderError, render_tracks
    res = lift_tracks(tiny("mixste"), scene_file, flip=False)
    path = render_tracks(tmp_path / "t.gif", res.keypoints_2d, res.positions_3d, res.valid, res.track_ids,
                         every=30, dpi=30, progress=True)
    with Image.open(path) as im:
        assert im.n_frames == 4 and im.size == (240, 120)
    assert "rendering t.gif" in capsys.readouterr().err  # the progress bar
    with pytest.raises(RenderError, match="no track has a pose"):
        render_tracks(tmp_path / "u.gif", res.keypoints_2d, res.positions_3d, res.valid & False, res.track_ids)
    with pytest.raises(RenderError, match=r"P track ids, got .* and 2 ids"):
        render_tracks(tmp_path / "u.gif", res.keypoints_2d, res.positions_3d, res.valid, res.track_ids[:2])


def tiny_cli_model():
    from pyengine.models import MHFormer
    from pyengine.testing import randomize_
    return randomize_(MHFormer(frames=9, channel=16, d_hid=32), 0).eval()


def test_cli_single_person_files_keep_their_format(capsys, tmp_path):
    out = tmp_path / "walk.npz"
    code, _, err = run(capsys, os.path.join(DATA, "sample_walk_mmpose.json"), "-o", str(out), "--random-weights",
                       *TINY_CLI)
    assert code == 0, err
    with np.load(out) as d:
        assert d["positions_3d"].shape == (300, 17, 3) and "valid" not in d.files and "multi_person" not in d.files
    # --multi-person tracks even a one-person file: one track.
    code, _, err = run(capsys, os.path.join(DATA, "sample_walk_mmpose.json"), "-o", str(out), "--random-weights",
                       *TINY_CLI, "--multi-person", "--overwrite")
    assert code == 0, err
    with np.load(out) as d:
        assert d["positions_3d"].shape == (1, 300, 17, 3) and d["valid"].all()


@pytest.mark.parametrize("extra,words", [
    (["--single-person", "--max-gap", "3"], ["--max-gap", "--single-person"]),
    (["--multi-person", "--single-person"], ["not allowed with argument"]),
    (["--min-oks", "0"], ["--min-oks", "'0'"]),
    (["--min-track-length", "500"], ["skipped track", "nothing to lift"]),
])
def test_cli_multi_person_errors(capsys, tmp_path, monkeypatch, scene_file, extra, words):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, scene_file, "-o", "x.npz", "--random-weights", *TINY_CLI, *extra)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, (word, err)
    assert os.listdir(tmp_path) == []

