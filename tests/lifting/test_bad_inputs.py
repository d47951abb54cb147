"""Nothing silent (issue 16): every entry point refuses bad input with a clear error naming the argument (or file,
frame, joint) and the actual value; the CLI exits 2 with one line and no traceback; a failed run touches no output
file; a hypothesis property: ``lift`` either raises KeypointError or returns finite output equal to the eager
fp64 reference."""
import json
import os

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

import pyengine
from pyengine import cli
from pyengine.backends import BackendUnavailableError
from pyengine.checkpoint import CheckpointError
from pyengine.data import synth
from pyengine.keypoints import COORD_LIMIT, KeypointError, load_keypoints, read_keypoints
from pyengine.lift import Lifter, lift
from pyengine.models import MHFormer
from pyengine.testing import randomize_, rel_error
from test_lift import naive_lift, one_thread  # noqa: F401  (one_thread: autouse fixture)

DATA = os.path.dirname(synth.__file__)
SAMPLE_NPZ = os.path.join(DATA, "sample_walk.npz")
SAMPLE_JSON = os.path.join(DATA, "sample_walk_mmpose.json")
TINY = ["--arch", "mhformer", "--frames", "9", "--channel", "16", "--d-hid", "32", "--backend", "reference"]
with np.load(SAMPLE_NPZ) as _d:
    WALK = _d["keypoints_2d"][:20].astype(np.float64)  # pixels of a 1000 x 1002 image
W, H = 1000.0, 1002.0
CUDA = torch.cuda.is_available()


def tiny_model(**load_options):
    return pyengine.load(randomize_(MHFormer(frames=9, channel=16, d_hid=32), 0), device="cpu", **load_options)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad files of every format, each with one defect."""
    d = tmp_path_factory.mktemp("bad")
    coco = np.random.default_rng(0).uniform(100, 900, size=(6, 17, 2))
    paths = {}

    def frames_json(name, ids, **extra):
        frames = [{"frame_id": i, "instances": [{"keypoints": coco[k % 6].tolist(), "keypoint_scores": [0.9] * 17}]}
                  for k, i in enumerate(ids)]
        paths[name] = str(d / f"{name}.json")
        with open(paths[name], "w") as f:
            json.dump({"meta_info": {"image_width": 1000, "image_height": 1000, **extra}, "instance_info": frames}, f)

    frames_json("gap", [0, 1, 2, 5, 6])  # frames 3 and 4 absent
    frames_json("dupe", [0, 1, 1, 2])
    frames_json("negative_id", [0, -1, 2])
    frames_json("string_width", [0, 1], image_width="wide")
    coco[2, 9, 0] = np.inf  # left wrist of the third record, video frame 12
    frames_json("inf_json", [10, 11, 12])
    inf = WALK[:5].copy()
    inf[2, 7, 1] = np.inf
    paths["inf_npy"] = str(d / "inf.npy")
    np.save(paths["inf_npy"], inf)
    paths["inf_csv"] = str(d / "inf.csv")
    rows = WALK[:3].reshape(3, 34).astype(str)
    rows[1, 5] = "inf"
    np.savetxt(paths["inf_csv"], rows, fmt="%s", delimiter=",")
    paths["width_str_npz"] = str(d / "width_str.npz")
    np.savez(paths["width_str_npz"], keypoints_2d=WALK[:5], width=np.array("abc"), height=1002)
    paths["layout_npz"] = str(d / "layout.npz")
    np.savez(paths["layout_npz"], keypoints_2d=WALK[:5], layout=np.array("coco"))
    # Two people per frame (MMPose JSON), each file with one defect (pyengine/tracks.py).
    person = np.random.default_rng(1).uniform(100, 400, size=(17, 2))  # walking right by 2 px a frame

    def people_json(name, edit=None, n=12):
        frames = [{"frame_id": t, "instances": [{"keypoints": (person + [2 * t + 400 * p, 0]).tolist(),
                                                 "keypoint_scores": [0.9] * 17} for p in range(2)]}
                  for t in range(n)]
        if edit:
            edit(frames)
        paths[name] = str(d / f"{name}.json")
        with open(paths[name], "w") as f:
            json.dump({"meta_info": {"image_width": 1000, "image_height": 1000}, "instance_info": frames}, f)

    people_json("people")
    people_json("people_gap", lambda fr: fr[5].update(instances=[]))  # nobody detected in frame 5
    people_json("people_no_scores", lambda fr: [i.pop("keypoint_scores") for f in fr for i in f["instances"]])
    people_json("people_some_scores", lambda fr: fr[2]["instances"][1].pop("keypoint_scores"))
    people_json("people_null", lambda fr: fr[3]["instances"][0].update(keypoints=None))
    people_json("people_some_ids", lambda fr: [i.update(track_id=k) for f in fr[:4]
                                               for k, i in enumerate(f["instances"])])
    people_json("people_same_id", lambda fr: [i.update(track_id=0) for f in fr for i in f["instances"]])
    paths["dir"] = str(d / "a_directory.npz")
    os.mkdir(paths["dir"])
    return paths


# ------------------------------------------------------------------------------------------------ the readers
# (file, read options, exception type, the words the message must contain: the argument / place and the value)
READER_CASES = [
    ("gap", {}, None, None),  # read fine; prepare_keypoints refuses (below)
    ("dupe", {}, KeypointError, ["frame_id", "more than once", "[1]"]),
    ("negative_id", {}, KeypointError, ["frame_id", "non-negative integers", "[-1]"]),
    ("string_width", {}, KeypointError, ["meta_info.image_width", "'wide'"]),
    ("inf_npy", {}, KeypointError, ["frame 2 joint 7 (spine)", "infinite coordinate", "inf"]),
    ("inf_json", {}, KeypointError, ["inf_json.json: frame 12 joint 9 (left_wrist)", "infinite coordinate"]),
    ("inf_csv", {}, KeypointError, ["frame 1 joint 2 (r_knee)", "infinite coordinate", "inf"]),
    ("width_str_npz", {}, KeypointError, ["width", "'abc'"]),
    ("layout_npz", {"layout": "h36m"}, KeypointError, ["layout='h36m'", "'coco'"]),
    ("inf_npy", {"subject": "S1"}, KeypointError, ["subject='S1'", "VideoPose3D", ".npy"]),
    ("gap", {"layout": "h36m"}, KeypointError, ["layout='h36m'", "MMPose"]),
    ("gap", {"camera": 1}, KeypointError, ["camera=1", "VideoPose3D"]),
    ("inf_npy", {"format": "xml"}, KeypointError, ["format", "'xml'"]),
    ("dir", {}, IsADirectoryError, ["a_directory.npz", "is a directory"]),
]


# Several people: read_detections / build_tracks (file, build_tracks options, exception, words)
DETECTION_CASES = [
    ("people_gap", {}, KeypointError, ["people_gap.json track 0", "1 frame(s) without a detection", "first [5]",
                                       "interpolate=True"]),
    ("people_some_scores", {}, KeypointError, ["keypoint_scores", "1 of 24 instances have none",
                                               "frame 2 instance 1"]),
    ("people_null", {}, KeypointError, ["frame 3 instance 0", "keypoints is null"]),
    ("people_some_ids", {}, KeypointError, ["track_id: 8 of 24 instances have one", "frame 4 instance 0"]),
    ("people_same_id", {}, KeypointError, ["frame 0", "track_id 0 appears in instances 0 and 1"]),
    ("people", {"max_gap": 1.5}, ValueError, ["max_gap", "1.5"]),
    ("people", {"min_oks": 0}, ValueError, ["min_oks", "got 0"]),
    ("people", {"min_length": 13}, None, None),  # every segment shorter: reported, none kept (the CLI: exit 2)
    ("inf_npy", {}, KeypointError, ["inf.npy", "MMPose .json predictions only", "'npy'"]),
]


@pytest.mark.parametrize("name,options,exc,words", DETECTION_CASES, ids=[c[0] for c in DETECTION_CASES])
def test_detections_refuse(files, name, options, exc, words):
    from pyengine.tracks import build_tracks
    if exc is None:
        tracks = build_tracks(files[name], **options)
        assert tracks.segments == [] and len(tracks.skipped) == 2
        return
    with pytest.raises(exc) as info:
        build_tracks(files[name], **options)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize("name,options,exc,words", [c for c in READER_CASES if c[2] is not None],
                         ids=[f"{c[0]}-{'-'.join(c[1]) or 'plain'}" for c in READER_CASES if c[2] is not None])
def test_readers_refuse(files, name, options, exc, words):
    with pytest.raises(exc) as info:
        read_keypoints(files[name], **options)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_json_frame_gaps_keep_the_video_frame_axis(files):
    raw = read_keypoints(files["gap"])
    np.testing.assert_array_equal(raw.frame_ids, np.arange(7))  # the video's frame axis, gaps included
    assert raw.absent_frames == (3, 4) and np.isnan(raw.xy[3:5]).all()
    with pytest.raises(KeypointError, match=r"2 frame\(s\) inside frame_id 0...6 are not in the file, first \[3, 4\]"
                                            r".*interpolate=True"):
        load_keypoints(files["gap"])
    kp, _ = load_keypoints(files["gap"], interpolate=True)
    assert kp.shape == (7, 17, 2)
    # Filled linearly between video frames 2 and 5 (not between list positions 2 and 3).
    np.testing.assert_allclose(kp[3], kp[2] + (kp[5] - kp[2]) / 3, atol=1e-6)
    np.testing.assert_allclose(kp[4], kp[2] + 2 * (kp[5] - kp[2]) / 3, atol=1e-6)


# ------------------------------------------------------------------------------------------------ prepare / lift
def _pixels_times(f):
    x = WALK.copy()
    x[4, 9] *= f
    return x


# (keyword arguments of lift besides the model, exception type, words of the message)
LIFT_CASES = [
    (dict(keypoints_2d=WALK), KeypointError, ["keypoints_2d: frame 0 joint 0 (hip)", "outside [-4, 4]",
                                              "look like pixels", "width="]),
    (dict(keypoints_2d=WALK * 1e30, width=W, height=H), KeypointError,
     ["keypoints_2d: frame 0 joint 0 (hip)", "px is", "after normalisation with width=1000, height=1002"]),
    (dict(keypoints_2d=_pixels_times(1e300), width=W, height=H), KeypointError,
     ["frame 4 joint 9 (neck_nose)", "(2.76039e+302, 3.60809e+302) px", "width=1000"]),
    (dict(keypoints_2d=WALK, width=10, height=10), KeypointError,
     ["frame 0 joint 0 (hip)", "after normalisation with width=10, height=10", "check the image size"]),
    (dict(keypoints_2d=np.where(np.arange(17)[None, :, None] == 3, np.inf, WALK), width=W, height=H), KeypointError,
     ["keypoints_2d: frame 0 joint 3 (r_ankle)", "infinite coordinate"]),
    (dict(keypoints_2d=np.full((4, 17, 2), np.nan)), KeypointError, ["68 missing keypoints", "interpolate=True"]),
    (dict(keypoints_2d=WALK, width="abc", height=H), KeypointError, ["width", "'abc'"]),
    (dict(keypoints_2d=WALK, width=0, height=H), KeypointError, ["width", "got 0"]),
    (dict(keypoints_2d=WALK, width=W), KeypointError, ["width/height", "width=1000.0, height=None"]),
    (dict(keypoints_2d=WALK[:, :16]), KeypointError, ["keypoints_2d", "[20, 16, 2]"]),
    (dict(keypoints_2d=WALK.astype(np.complex128)), KeypointError, ["keypoints_2d", "complex128"]),
    (dict(keypoints_2d=WALK / W, batch_size=0), ValueError, ["batch_size", "0"]),
]


@pytest.mark.parametrize("kwargs,exc,words", LIFT_CASES, ids=range(len(LIFT_CASES)))
def test_lift_refuses(model, recwarn, kwargs, exc, words):
    with pytest.raises(exc) as info:
        lift(model, **kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]  # no numpy overflow warning leaks


def test_lift_uses_a_keypoints2d_size(model):
    raw = read_keypoints(SAMPLE_NPZ)  # width / height 1000 x 1002 from the file
    np.testing.assert_array_equal(lift(model, raw), lift(model, raw.xy, width=W, height=H))
    with pytest.raises(KeypointError, match=r"width=640 contradicts .*sample_walk.npz, which says width 1000"):
        lift(model, raw, width=640, height=480)


LIFTER_CASES = [
    (dict(), np.full((17, 2), 300.0), ["frame_2d: frame 0 joint 0 (hip)", "(300, 300)", "look like pixels"]),
    (dict(width=W, height=H), np.full((17, 2), 1e30), ["frame_2d: frame 0 joint 0 (hip)", "(1e+30, 1e+30) px",
                                                       "width=1000"]),
    (dict(), np.where(np.arange(17)[:, None] == 5, np.nan, np.zeros((17, 2))), ["frame_2d: frame 0 joint 5 (l_knee)",
                                                                   "(nan, nan)", "not finite"]),
    (dict(), np.zeros((17, 3)), ["frame_2d", "[17, 3]"]),
]


@pytest.mark.parametrize("options,frame,words", LIFTER_CASES, ids=range(len(LIFTER_CASES)))
def test_lifter_push_refuses(model, options, frame, words):
    lifter = Lifter(model, **options)
    with pytest.raises(KeypointError) as info:
        lifter.push(frame)
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    assert lifter._count == 0  # nothing was stored


def test_lifter_names_the_frame_of_the_sequence(model):
    lifter = Lifter(model)
    for _ in range(3):
        lifter.push(np.zeros((17, 2)))
    with pytest.raises(KeypointError, match="frame_2d: frame 3 joint 0"):
        lifter.push(np.full((17, 2), 50.0))
    with pytest.raises(KeypointError, match=r"width: expected the image width in pixels, a positive number, got -5"):
        Lifter(model, width=-5, height=H)


# ------------------------------------------------------------------------------------------------ load
@pytest.fixture(scope="module")
def state_dict():
    return randomize_(MHFormer(frames=27, channel=32, d_hid=48), 1).state_dict()


def _edited(sd, key, value):
    out = dict(sd)
    out[key] = value(sd[key])
    return out


LOAD_CASES = [
    ("empty", lambda sd, d: _write(d / "empty.pth", b""), {}, CheckpointError,
     ["empty.pth", "empty (0 bytes)"]),
    ("truncated", lambda sd, d: _truncated(sd, d), {}, CheckpointError, ["half.pth", "truncated"]),
    ("junk", lambda sd, d: _write(d / "junk.pt", b"hello world" * 9), {}, CheckpointError,
     ["junk.pt", "(99 bytes)"]),
    ("directory", lambda sd, d: d, {}, CheckpointError, ["is a directory"]),
    ("int param", lambda sd, d: _edited(sd, "regression.1.weight", lambda t: t.long()), {}, CheckpointError,
     ["'regression.1.weight'", "expected a floating tensor", "int64"]),
    ("bool param", lambda sd, d: _edited(sd, "norm_1.weight", lambda t: t > 0), {}, CheckpointError,
     ["'norm_1.weight'", "bool"]),
    ("misshaped", lambda sd, d: _edited(sd, "norm_1.weight", lambda t: torch.ones(28)), {}, CheckpointError,
     ["mis-shaped key(s) 'norm_1.weight' of shape [28]", "give frames=27"]),
    ("default", lambda sd, d: sd, {"arch": "tpc_mhformer"}, ValueError,
     ["token_num", "got 117", "token_num=117 is arch 'tpc_mhformer''s default", "--token-num"]),
    ("device", lambda sd, d: sd, {"device": "foo"}, ValueError, ["device", "'foo'"]),
    ("check_finite", lambda sd, d: sd, {"check_finite": "yes"}, TypeError, ["check_finite", "'yes'"]),
]


def _write(path, data):
    path.write_bytes(data)
    return path


def _truncated(sd, d):
    torch.save(sd, d / "full.pth")
    data = (d / "full.pth").read_bytes()
    (d / "half.pth").write_bytes(data[:len(data) // 2])
    return d / "half.pth"


@pytest.mark.parametrize("name,make,options,exc,words", LOAD_CASES, ids=[c[0] for c in LOAD_CASES])
def test_load_refuses(state_dict, tmp_path, name, make, options, exc, words):
    with pytest.raises(exc) as info:
        pyengine.load(make(state_dict, tmp_path), **options)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.skipif(CUDA, reason="checks the CPU-only message")
def test_load_cuda_on_a_cpu_only_machine(state_dict):
    with pytest.raises(BackendUnavailableError, match=r"device='cuda': .*(built without CUDA|no CUDA device)"):
        pyengine.load(state_dict, device="cuda")


def test_check_finite_is_opt_in_and_names_the_value():
    x = torch.zeros(2, 9, 17, 2)
    x[1, 4, 6, 0] = float("nan")
    plain = tiny_model()
    assert not plain._forward_pre_hooks  # off by default: no host sync in the forward
    checked = tiny_model(check_finite=True)
    with pytest.raises(ValueError, match=r"x: expected finite values .*got nan at window 1, frame 4, joint 6 "
                                         r"\(1 non-finite of 612 values"):
        checked(x)
    x[1, 4, 6, 0] = 0.5
    torch.testing.assert_close(checked(x), plain(x), rtol=0, atol=0)


def test_report_has_one_type_from_both_entry_points(model):
    ref = pyengine.load(randomize_(MHFormer(frames=9, channel=16, d_hid=32), 0), backend="reference")
    for m in (model, ref):
        a, b = pyengine.report(m), m.report()
        assert type(a) is type(b) is pyengine.engine.Report
        assert repr(a) == str(a) == str(b) and str(a).startswith("module")


# ------------------------------------------------------------------------------------------------ the CLI
def run_cli(capsys, *args):
    try:
        code = cli.main(list(args))
    except SystemExit as exc:  # argparse's errors (one line, see cli._Parser) leave through SystemExit
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def cli_files(tmp_path, files):
    ckpt = tmp_path / "m.pth"
    torch.save(randomize_(MHFormer(frames=9, channel=16, d_hid=32), 0).state_dict(), ckpt)
    (tmp_path / "empty.pth").write_bytes(b"")
    np.save(tmp_path / "plain.npy", WALK)
    (tmp_path / "taken.npz").write_bytes(b"keep me")
    (tmp_path / "a_file").write_text("x")
    return {"ckpt": str(ckpt), "empty": str(tmp_path / "empty.pth"), "npy": str(tmp_path / "plain.npy"),
            "taken": str(tmp_path / "taken.npz"), "file": str(tmp_path / "a_file"), **files}


def _out(tmp_path):
    return str(tmp_path / "out.npz")


# (argv builder, words the one stderr line must contain)
CLI_CASES = [
    (lambda f, o: ["verify", "--device", "foo"], ["--device", "'foo'"]),
    (lambda f, o: ["verify", "--frames", "0"], ["--frames", "0"]),
    (lambda f, o: ["verify", "--batch", "0"], ["--batch", "0"]),
    (lambda f, o: ["verify", "--checkpoint", f["empty"]], ["empty.pth", "empty (0 bytes)"]),
    (lambda f, o: ["verify", "--arch", "tpc_mixste", "--channel", "16", "--depth", "2"],
     ["layer_index", "got 7", "default", "--layer-index"]),
    (lambda f, o: ["lift", SAMPLE_NPZ, "-o", o, "--random-weights", "--device", "foo"], ["--device", "'foo'"]),
    (lambda f, o: ["lift", SAMPLE_NPZ, "-o", o, "--random-weights", "--score-threshold", "1.5"],
     ["--score-threshold", "'1.5'"]),
    (lambda f, o: ["lift", SAMPLE_NPZ, "-o", o, "--random-weights", "--render-every", "0"], ["--render-every", "0"]),
    (lambda f, o: ["lift", SAMPLE_NPZ, "-o", o, "--random-weights", "--render-fps", "-3"], ["--render-fps", "'-3'"]),
    (lambda f, o: ["lift", SAMPLE_NPZ, "-o", o, "--random-weights", "--render", "x.png"], ["x.png", ".gif or .mp4"]),
    (lambda f, o: ["lift", SAMPLE_NPZ, "-o", o, "--random-weights", "--render", f["file"] + "/x.gif"],
     ["--render", "a_file", "is a file"]),
    (lambda f, o: ["lift", SAMPLE_NPZ, "-o", o, "--random-weights", "--width", "abc"], ["--width", "'abc'"]),
    (lambda f, o: ["lift", SAMPLE_NPZ, "-o", o, "--random-weights", "--width", "640"], ["--width 640.0", "--height"]),
    (lambda f, o: ["lift", SAMPLE_NPZ, "-o", o, "--random-weights", "--normalized", "--width", "640", "--height",
                   "480"], ["--normalized", "--width 640.0"]),
    (lambda f, o: ["lift", f["gap"], "-o", o, "--random-weights", "--subject", "S1"], ["--subject", "gap.json"]),
    (lambda f, o: ["lift", f["gap"], "-o", o, "--random-weights", "--layout", "h36m"], ["--layout h36m", "gap.json"]),
    (lambda f, o: ["lift", SAMPLE_NPZ, "-o", o, "--random-weights", "--camera", "-1"], ["--camera", "-1"]),
    (lambda f, o: ["lift", SAMPLE_NPZ, "-o", "out.txt", "--random-weights"], ["-o out.txt", "'.txt'"]),
    (lambda f, o: ["lift", SAMPLE_NPZ, "-o", f["taken"], "--random-weights"], ["taken.npz", "--overwrite"]),
    (lambda f, o: ["lift", SAMPLE_NPZ, SAMPLE_JSON, "-o", f["file"], "--random-weights"], ["a_file", "is a file"]),
    (lambda f, o: ["lift", f["dir"], "-o", o, "--random-weights"], ["a_directory.npz", "is a directory"]),
    (lambda f, o: ["lift", SAMPLE_NPZ, "-o", o, "--checkpoint", f["ckpt"], "--seed", "3"], ["--seed 3"]),
    (lambda f, o: ["lift", SAMPLE_NPZ, "-o", o, "--checkpoint", f["empty"]], ["empty.pth", "empty"]),
    (lambda f, o: ["lift", SAMPLE_NPZ, "-o", o, "--checkpoint", f["ckpt"], "--width", "5", "--height", "5"],
     ["width=5 contradicts", "width 1000"]),
    (lambda f, o: ["lift", f["npy"], "-o", o, "--checkpoint", f["ckpt"], "--width", "5", "--height", "5"],
     ["plain.npy: frame 0 joint 0 (hip)", "after normalisation with width=5, height=5"]),
    (lambda f, o: ["lift", f["npy"], "-o", o, "--checkpoint", f["ckpt"], "--normalized"],
     ["plain.npy: frame 0 joint 0 (hip)", "look like pixels"]),
    (lambda f, o: ["lift", f["npy"], "-o", o, "--checkpoint", f["ckpt"], "--width", "1000", "--height", "1002",
                   "--score-threshold", "0.5"], ["--score-threshold 0.5", "no keypoint scores"]),
    (lambda f, o: ["lift", f["gap"], "-o", o, "--checkpoint", f["ckpt"]], ["gap.json", "[3, 4]", "--interpolate"]),
    (lambda f, o: ["lift", SAMPLE_NPZ, "-o", o, "--random-weights", "--arch", "tpc_mixste", "--frames", "27",
                   "--channel", "16", "--depth", "2", "--layer-index", "1"],
     ["token_num", "got 61", "token_num=61 is arch 'tpc_mixste''s default", "--token-num"]),
]
CLI_CASES += [  # several people (docs/lifting.md, "Several people")
    (lambda f, o: ["lift", f["people_gap"], "-o", o, "--random-weights", *TINY],
     ["people_gap.json track 0", "without a detection", "--interpolate"]),
    (lambda f, o: ["lift", f["people_some_ids"], "-o", o, "--random-weights", *TINY], ["track_id", "8 of 24"]),
    (lambda f, o: ["lift", f["people_no_scores"], "-o", o, "--random-weights", *TINY, "--score-threshold", "0.5"],
     ["--score-threshold 0.5", "no keypoint scores"]),
    (lambda f, o: ["lift", SAMPLE_NPZ, "-o", o, "--random-weights", "--multi-person"],
     ["--multi-person", "MMPose .json input only", "sample_walk.npz"]),
    (lambda f, o: ["lift", SAMPLE_JSON, "-o", o, "--random-weights", *TINY, "--max-gap", "3"],
     ["--max-gap", "one person per frame", "--multi-person"]),
    (lambda f, o: ["lift", f["people"], "-o", o, "--random-weights", *TINY, "--min-track-length", "13"],
     ["skipped track 0", "nothing to lift"]),
    (lambda f, o: ["lift", f["people"], "-o", o, "--random-weights", "--max-gap", "-1"], ["--max-gap", "-1"]),
    (lambda f, o: ["lift", f["people"], "-o", o, "--random-weights", "--min-oks", "2"], ["--min-oks", "'2'"]),
    (lambda f, o: ["lift", f["people_same_id"], "-o", o, "--random-weights", *TINY, "--min-oks", "0.5"],
     ["track_id 0 appears"]),
]
if not CUDA:
    CLI_CASES.append((lambda f, o: ["verify", "--device", "cuda"], ["--device cuda", "CUDA"]))
    CLI_CASES.append((lambda f, o: ["lift", SAMPLE_NPZ, "-o", o, "--random-weights", "--device", "cuda"],
                      ["--device cuda", "CUDA"]))


@pytest.mark.parametrize("make,words", CLI_CASES, ids=range(len(CLI_CASES)))
def test_cli_user_errors_exit_2_in_one_line(capsys, tmp_path, monkeypatch, cli_files, make, words):
    monkeypatch.chdir(tmp_path)
    args = make(cli_files, _out(tmp_path))
    before = sorted(os.listdir(tmp_path))
    code, out, err = run_cli(capsys, *args)
    assert code == 2, (args, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"pyengine {args[0]}: error: "), err
    for word in words:
        assert word in err, (word, err)
    assert sorted(os.listdir(tmp_path)) == before  # nothing written
    assert open(cli_files["taken"], "rb").read() == b"keep me"


def test_cli_in_a_real_process_and_version(tmp_path):
    import subprocess
    import sys
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    out = subprocess.run([sys.executable, "-m", "pyengine", "verify", "--checkpoint", str(empty)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "empty.pth" in out.stderr
    out = subprocess.run([sys.executable, "-m", "pyengine", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"pyengine {pyengine.__version__} (torch {torch.__version__})"


def test_cli_internal_errors_are_exit_3_with_the_traceback(capsys, monkeypatch):
    from pyengine import verify

    def bug(**kwargs):
        raise ZeroDivisionError("a bug")
    monkeypatch.setattr(verify, "run", bug)
    code, _, err = run_cli(capsys, "verify")
    assert code == 3 and "Traceback" in err and "internal error" in err  # never confused with exit 1 (deviation)


# ------------------------------------------------------------------------------------------------ round trips
def test_a_failed_run_touches_no_output(capsys, tmp_path, monkeypatch):
    out = tmp_path / "walk.npz"
    out.write_bytes(b"previous result")
    kp = WALK.copy()
    kp[3, 2] = np.nan
    np.save(tmp_path / "gappy.npy", kp)
    base = ["lift", str(tmp_path / "gappy.npy"), "-o", str(out), "--random-weights", *TINY, "--width", "1000",
            "--height", "1002", "--overwrite"]
    code, _, err = run_cli(capsys, *base)  # bad input, even with --overwrite: the old file stays
    assert code == 2 and "1 missing keypoints" in err
    assert out.read_bytes() == b"previous result"
    # A failure after lifting (here: in the picture) leaves neither a new .npz nor partial files behind.
    from pyengine import render as render_module
    from pyengine.render import RenderError

    def broken(*args, **kwargs):
        raise RenderError("render: the disk is full")
    monkeypatch.setattr(render_module, "render", broken)
    code, _, err = run_cli(capsys, *base, "--interpolate", "--render", str(tmp_path / "walk.gif"))
    assert code == 2 and "disk is full" in err
    assert out.read_bytes() == b"previous result"
    assert sorted(os.listdir(tmp_path)) == ["gappy.npy", "walk.npz"]
    # With everything right, --overwrite replaces the file, and the frame ids are stored.
    monkeypatch.undo()
    code, _, err = run_cli(capsys, *base, "--interpolate")
    assert code == 0, err
    with np.load(out) as d:
        np.testing.assert_array_equal(d["frame_ids"], np.arange(20))


def test_json_frame_ids_are_stored(capsys, tmp_path, files):
    out = tmp_path / "gap_3d.npz"
    code, _, err = run_cli(capsys, "lift", files["gap"], "-o", str(out), "--random-weights", *TINY, "--interpolate")
    assert code == 0, err
    with np.load(out) as d:
        assert d["positions_3d"].shape == (7, 17, 3)  # one output frame per video frame, gaps included
        np.testing.assert_array_equal(d["frame_ids"], np.arange(7))


# ------------------------------------------------------------------------------------------------ the property
coords = st.one_of(st.floats(-1.2, 1.2), st.floats(-3000, 3000), st.sampled_from([np.nan, np.inf, -np.inf, 1e300]))
sizes = st.one_of(st.none(), st.sampled_from([1000.0, 640.0, 1.0, 0.0, -5.0, np.nan]))


@pytest.fixture(scope="module")
def reference():
    """The eager reference of ``model`` in fp64."""
    return randomize_(MHFormer(frames=9, channel=16, d_hid=32), 0).double().eval()


@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(T=st.integers(1, 12), fill=coords, spot=coords, where=st.tuples(st.integers(0, 11), st.integers(0, 16)),
       scale=st.sampled_from([1.0, 0.01, 500.0]), size=sizes, data=st.data())
def test_lift_raises_keypoint_error_or_equals_the_reference(model, reference, T, fill, spot, where, scale, size, data):
    """Any input: a KeypointError exactly when it is invalid, otherwise finite output equal to the fp64 eager
    reference within 2x the fp32 eager error (and a 1e-4 floor)."""
    rng = np.random.default_rng(T)
    x = rng.uniform(-0.8, 0.8, size=(T, 17, 2)) * scale
    if fill is not None and data.draw(st.booleans()):
        x[:] = fill
    if data.draw(st.booleans()):
        x[min(where[0], T - 1), where[1], data.draw(st.integers(0, 1))] = spot
    kwargs = {} if size is None else {"width": size, "height": size}
    with np.errstate(all="ignore"):
        norm = x if size is None else x / size * 2 - np.array([1.0, 1.0])
        valid = (size is None or (np.isfinite(size) and size > 0)) and bool((np.abs(norm) <= COORD_LIMIT).all())
        assume(not np.isfinite(norm).all() or abs(np.abs(norm).max() - COORD_LIMIT) > 1e-6)  # no float-edge ties
    try:
        got = lift(model, x, **kwargs)
    except KeypointError:
        assert not valid, "a valid input was refused"
        event("refused")  # --hypothesis-show-statistics: both branches are exercised
        return
    event("lifted")
    assert valid, "an invalid input was lifted"
    assert got.shape == (T, 17, 3) and np.isfinite(got).all()
    want = naive_lift(reference, norm.astype(np.float32).astype(np.float64), flip=True)
    fp32 = naive_lift(randomize_(MHFormer(frames=9, channel=16, d_hid=32), 0).eval(), norm.astype(np.float32),
                      flip=True)
    assert rel_error(torch.from_numpy(got), torch.from_numpy(want)) <= max(
        1e-4, 2 * rel_error(torch.from_numpy(fp32), torch.from_numpy(want)))
