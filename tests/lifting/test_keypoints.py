"""Keypoint inputs (the pyengine/keypoints/ package, and pyengine/safe_pickle.py's keypoint-file policy): formats,
COCO -> H36M mapping, normalisation, missing keypoints and every documented error."""
import io
import json
import os
import pickle

import numpy as np
import pytest
import torch

from pyengine import keypoints as K
from pyengine import safe_pickle
from pyengine.data import synth

SAMPLE = os.path.join(os.path.dirname(synth.__file__), "sample_walk.npz")
MMPOSE_SAMPLE = os.path.join(os.path.dirname(synth.__file__), "sample_walk_mmpose.json")
W, H = 1000.0, 1002.0


@pytest.fixture(scope="module")
def walk():
    with np.load(SAMPLE) as d:
        return d["keypoints_2d"].astype(np.float64)


def spec_normalise(x):
    return x / W * 2 - np.array([1.0, H / W])


def test_coco_to_h36m_joint_by_joint():
    rng = np.random.default_rng(0)
    coco, scores = rng.normal(size=(3, 17, 2)), rng.uniform(size=(3, 17))
    h, s = K.coco_to_h36m(coco, scores)
    c = dict(zip(K.COCO_JOINT_NAMES, np.moveaxis(coco, 1, 0)))
    cs = dict(zip(K.COCO_JOINT_NAMES, scores.T))
    hip = (c["left_hip"] + c["right_hip"]) / 2
    thorax = (c["left_shoulder"] + c["right_shoulder"]) / 2
    expected = {
        "hip": hip, "r_hip": c["right_hip"], "r_knee": c["right_knee"], "r_ankle": c["right_ankle"],
        "l_hip": c["left_hip"], "l_knee": c["left_knee"], "l_ankle": c["left_ankle"], "spine": (hip + thorax) / 2,
        "thorax": thorax, "neck_nose": c["nose"], "head": (c["left_eye"] + c["right_eye"]) / 2,
        "l_shoulder": c["left_shoulder"], "l_elbow": c["left_elbow"], "l_wrist": c["left_wrist"],
        "r_shoulder": c["right_shoulder"], "r_elbow": c["right_elbow"], "r_wrist": c["right_wrist"]}
    assert list(expected) == list(K.JOINT_NAMES)
    for j, name in enumerate(K.JOINT_NAMES):
        np.testing.assert_allclose(h[:, j], expected[name], rtol=0, atol=1e-12, err_msg=name)
    # Derived joints take their weakest source's score.
    np.testing.assert_array_equal(s[:, 0], np.minimum(cs["left_hip"], cs["right_hip"]))
    np.testing.assert_array_equal(s[:, 7], np.minimum.reduce([cs[n] for n in ("left_hip", "right_hip",
                                                                              "left_shoulder", "right_shoulder")]))
    np.testing.assert_array_equal(s[:, 10], np.minimum(cs["left_eye"], cs["right_eye"]))
    np.testing.assert_array_equal(s[:, 16], cs["right_wrist"])


def test_normalisation_is_spec_formula(walk):
    out = K.prepare_keypoints(walk, width=W, height=H)
    assert out.dtype == np.float32 and out.shape == walk.shape
    np.testing.assert_allclose(out, spec_normalise(walk), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(K.prepare_keypoints(out, normalized=True), out)


def test_sample_npz_and_mmpose_json(walk):
    kp, raw = K.load_keypoints(SAMPLE)  # width / height come from the file
    assert raw.width == W and raw.height == H and raw.layout == "h36m"
    np.testing.assert_allclose(kp, spec_normalise(walk), atol=1e-6)
    kp_json, raw_json = K.load_keypoints(MMPOSE_SAMPLE)
    assert raw_json.layout == "coco" and raw_json.width == W and raw_json.scores.min() >= 0.8
    # Joints that both layouts have come back to 0.01 px (JSON rounding); hip / spine / thorax are derived
    # (midpoints), so only close.
    direct = [1, 2, 3, 4, 5, 6, 9, 10, 11, 12, 13, 14, 15, 16]
    np.testing.assert_allclose(raw_json.xy[:, direct], walk[:, direct], atol=0.006)
    assert np.abs(raw_json.xy - walk).max() < 25  # px: mid-shoulders vs thorax, mid(hip, thorax) vs spine
    assert kp_json.shape == (300, 17, 2)


def test_json_layouts_and_person_choice(tmp_path):
    coco = np.arange(34, dtype=float).reshape(17, 2) + 100
    good = {"keypoints": coco.tolist(), "keypoint_scores": [0.9] * 17}
    worse = {"keypoints": (coco + 50).tolist(), "keypoint_scores": [0.5] * 17}
    flat = {"keypoints": np.concatenate([coco, np.full((17, 1), 0.9)], 1).reshape(-1).tolist()}
    frames = [{"frame_id": 1, "instances": [flat]}, {"frame_id": 0, "instances": [worse, good]}]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(frames))  # the inferencer's plain list of frames, out of order
    raw = K.read_keypoints(path)
    expected, _ = K.coco_to_h36m(coco[None])
    np.testing.assert_allclose(raw.xy, np.concatenate([expected, expected]))  # highest mean score wins
    np.testing.assert_allclose(raw.scores, 0.9)


def test_npy_csv_and_layout(tmp_path, walk):
    np.save(tmp_path / "a.npy", walk.astype(np.float32))
    np.testing.assert_allclose(K.read_keypoints(tmp_path / "a.npy").xy, walk.astype(np.float32))
    rows = walk[:5].reshape(5, 34)
    (tmp_path / "a.csv").write_text("\n".join([",".join(f"c{i}" for i in range(34))]
                                              + [",".join(repr(float(v)) for v in r) for r in rows]))
    np.testing.assert_allclose(K.read_keypoints(tmp_path / "a.csv").xy, walk[:5])
    coco = np.random.default_rng(1).normal(size=(4, 17, 3))
    np.save(tmp_path / "c.npy", coco)
    raw = K.read_keypoints(tmp_path / "c.npy", layout="coco")
    xy, s = K.coco_to_h36m(coco[..., :2], coco[..., 2])
    np.testing.assert_allclose(raw.xy, xy)
    np.testing.assert_allclose(raw.scores, s)


def test_videopose3d_npz(tmp_path, walk):
    a = walk[:6].astype(np.float32)
    path = tmp_path / "data_2d_custom.npz"
    np.savez(path, positions_2d={"S1": {"Walk": [a, a + 1], "Sit": [a]}, "S2": {"Walk": [a]}},
             metadata={"layout_name": "h36m", "num_joints": 17, "keypoints_symmetry": [[4, 5], [1, 2]]})
    raw = K.read_keypoints(path, subject="S1", action="Walk", camera=1)
    np.testing.assert_array_equal(raw.xy, a + 1)
    with pytest.raises(K.KeypointError, match="holds 2 subjects"):
        K.read_keypoints(path)
    with pytest.raises(K.KeypointError, match="action 'Run' not found"):
        K.read_keypoints(path, subject="S1", action="Run")
    with pytest.raises(K.KeypointError, match="camera=3 out of range"):
        K.read_keypoints(path, subject="S1", action="Walk", camera=3)
    # VideoPose3D in-the-wild files: COCO layout and the video size in metadata.
    coco = np.random.default_rng(2).uniform(0, 500, size=(5, 17, 2)).astype(np.float32)
    np.savez(path, positions_2d={"clip.mp4": {"custom": [coco]}},
             metadata={"layout_name": "coco", "video_metadata": {"clip.mp4": {"w": 640, "h": 480}}})
    kp, raw = K.load_keypoints(path)
    assert raw.layout == "coco" and (raw.width, raw.height) == (640.0, 480.0)
    np.testing.assert_allclose(kp, K.normalize_screen(K.coco_to_h36m(coco)[0], 640, 480), atol=1e-6)


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo should-never-run",))


def test_videopose3d_refuses_arbitrary_pickles(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, positions_2d=np.array({"S1": {"Walk": [_Boom()]}}, dtype=object))
    with pytest.raises(K.KeypointError, match="refusing to unpickle posix.system|refusing to unpickle nt.system"):
        K.read_keypoints(path)
    np.savez(path, positions_2d=np.array([pickle.dumps(1)], dtype=object))
    with pytest.raises(K.KeypointError, match="must be a dict"):
        K.read_keypoints(path)


def test_safe_pickle_rebuilds_numpy_and_refuses_the_rest():
    """``safe_pickle.NumpyUnpickler``, the policy the VideoPose3D reader uses: plain containers and numpy arrays /
    scalars / dtypes come back; any other global is refused before it is created (the reader's message: above)."""
    obj = {"a": [np.arange(6, dtype=np.float32).reshape(2, 3), np.float64(1.5), np.dtype("int16")], "b": (1, "x")}
    back = safe_pickle.NumpyUnpickler(io.BytesIO(pickle.dumps(obj))).load()
    np.testing.assert_array_equal(back["a"][0], obj["a"][0])
    assert back["a"][0].dtype == np.float32 and back["a"][1:] == obj["a"][1:] and back["b"] == (1, "x")
    with pytest.raises(safe_pickle.RefusedGlobal, match=r"^refusing to unpickle (posix|nt)\.system$") as info:
        safe_pickle.NumpyUnpickler(io.BytesIO(pickle.dumps(_Boom()))).load()
    assert isinstance(info.value, pickle.UnpicklingError) and info.value.name == "system"


def test_missing_keypoints_interpolate(walk):
    x = walk[:10].copy()
    x[3:6, 13] = np.nan  # l_wrist, frames 3..5
    x[0, 2] = np.nan  # r_knee at the first frame: edge hold
    with pytest.raises(K.KeypointError, match=r"4 missing keypoints .* \(3, 'l_wrist'\).*interpolate=True"):
        K.prepare_keypoints(x, width=W, height=H)
    out = K.prepare_keypoints(x, width=W, height=H, interpolate=True)
    filled = walk[:10].copy()
    for t in (3, 4, 5):
        filled[t, 13] = walk[2, 13] + (walk[6, 13] - walk[2, 13]) * (t - 2) / 4
    filled[0, 2] = walk[1, 2]
    np.testing.assert_allclose(out, spec_normalise(filled), atol=1e-6)
    # Low scores count as missing too.
    scores = np.ones((10, 17))
    scores[7, 0] = 0.1
    with pytest.raises(K.KeypointError, match=r"score below score_threshold=0.3.*\(7, 'hip'\)"):
        K.prepare_keypoints(walk[:10], width=W, height=H, scores=scores)
    out = K.prepare_keypoints(walk[:10], width=W, height=H, scores=scores, interpolate=True)
    np.testing.assert_allclose(out[7, 0], spec_normalise((walk[6, 0] + walk[8, 0]) / 2), atol=1e-6)
    x = walk[:10].copy()
    x[:, 10] = np.nan
    with pytest.raises(K.KeypointError, match="joint 10 \\(head\\) is missing in every frame"):
        K.prepare_keypoints(x, width=W, height=H, interpolate=True)


@pytest.mark.parametrize("make,match", [
    (lambda: np.zeros((5, 16, 2)), r"shape \[T, 17, 2\].*got \[5, 16, 2\]"),
    (lambda: np.zeros((5, 17, 3)), r"got \[5, 17, 3\]"),
    (lambda: np.zeros((0, 17, 2)), "empty"),
    (lambda: np.full((2, 17, 2), np.inf), "infinite"),
    (lambda: np.array([["a"] * 2] * 17)[None], "numeric"),
])
def test_bad_arrays(make, match):
    with pytest.raises(K.KeypointError, match=match):
        K.prepare_keypoints(make(), width=W, height=H)


def test_bad_size_arguments(walk):
    with pytest.raises(K.KeypointError, match="need the image size"):
        K.prepare_keypoints(walk)
    with pytest.raises(K.KeypointError, match="width: expected the image width in pixels, a positive number, "
                                              "got 0"):
        K.prepare_keypoints(walk, width=0, height=H)
    assert K.prepare_keypoints(torch.from_numpy(walk), width=W, height=H).shape == walk.shape


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        K.read_keypoints(tmp_path / "missing.npz")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(K.KeypointError, match="unknown keypoint format 'txt'"):
        K.read_keypoints(tmp_path / "a.txt")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(K.KeypointError, match="not valid JSON"):
        K.read_keypoints(tmp_path / "bad.json")
    (tmp_path / "bad2.json").write_text(json.dumps({"instance_info": []}))
    with pytest.raises(K.KeypointError, match="expected MMPose predictions"):
        K.read_keypoints(tmp_path / "bad2.json")
    (tmp_path / "bad3.json").write_text(json.dumps([{"instances": [{"keypoints": [[0, 0]] * 16}]}]))
    with pytest.raises(K.KeypointError, match=r"frame 0 instance 0: keypoints: expected 17 COCO keypoints"):
        K.read_keypoints(tmp_path / "bad3.json")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(K.KeypointError, match="not a readable .npz"):
        K.read_keypoints(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", foo=np.zeros(3))
    with pytest.raises(K.KeypointError, match="expected a key 'keypoints_2d'"):
        K.read_keypoints(tmp_path / "other.npz")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(K.KeypointError, match="not a plain numeric .npy"):
        K.read_keypoints(tmp_path / "obj.npy")
    (tmp_path / "bad.csv").write_text("1,2,3\n")
    with pytest.raises(K.KeypointError, match="34 .* or 51"):
        K.read_keypoints(tmp_path / "bad.csv")
    # A frame without any detection has all keypoints missing.
    (tmp_path / "gap.json").write_text(json.dumps([{"instances": [{"keypoints": [[1, 1]] * 17}]},
                                                   {"instances": []}]))
    with pytest.raises(K.KeypointError, match="17 missing keypoints"):
        K.load_keypoints(tmp_path / "gap.json", width=10, height=10)
    kp, _ = K.load_keypoints(tmp_path / "gap.json", width=10, height=10, interpolate=True)
    np.testing.assert_allclose(kp[1], kp[0])


def test_object_arrays_are_refused_outside_videopose3d(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, keypoints_2d=np.array([{"a": 1}], dtype=object))
    with pytest.raises(K.KeypointError, match="cannot read without pickle"):
        K.read_keypoints(path)
    (tmp_path / "str.json").write_text(json.dumps([{"instances": [{"keypoints": [["a", 1]] * 17}]}]))
    with pytest.raises(K.KeypointError, match="not numeric"):
        K.read_keypoints(tmp_path / "str.json")
    (tmp_path / "null.json").write_text(json.dumps([{"instances": [{"keypoints": [[None, 1]] + [[1, 1]] * 16}]}]))
    with pytest.raises(K.KeypointError, match="1 missing keypoints"):  # null is a missing keypoint
        K.load_keypoints(tmp_path / "null.json", width=10, height=10)
