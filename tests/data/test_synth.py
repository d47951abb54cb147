"""Tests of the procedural walking sample (pyengine/data/synth.py) and the shipped sample_walk.npz."""
import importlib.util
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/<folder>/ -> repo
SYNTH_PATH = os.path.join(ROOT, "pyengine", "data", "synth.py")
SAMPLE_PATH = os.path.join(ROOT, "pyengine", "data", "sample_walk.npz")


def _load_synth():
    # Prefer the package import; fall back to the file itself if ``import pyengine`` is broken or not on the path
    # (synth.py is pure numpy and does not depend on the rest of the package).
    try:
        from pyengine.data import synth

        return synth
    except Exception:
        spec = importlib.util.spec_from_file_location("pyengine_data_synth_by_path", SYNTH_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module


synth = _load_synth()
PARENTS = synth.PARENTS
T = 300
W, H = 1000, 1002
HEAD, L_WRIST, R_WRIST = 10, 13, 16
# (left bone child, right bone child) pairs; the bone is child -> PARENTS[child].
MIRRORED = [(4, 1), (5, 2), (6, 3), (11, 14), (12, 15), (13, 16)]


@pytest.fixture(scope="module")
def seq():
    return synth.make_walk_sequence()


@pytest.fixture(scope="module")
def clean():
    return synth.make_walk_sequence(noise_px=0)


def bone_lengths(pos):
    child = np.arange(1, 17)
    parent = np.array(PARENTS[1:])
    return np.linalg.norm(pos[:, child].astype(np.float64) - pos[:, parent].astype(np.float64), axis=-1)


def to_world(s):
    """Absolute camera-frame joints -> world frame (z up) with the returned extrinsics."""
    cam = s["positions_3d"].astype(np.float64) + s["root_3d"].astype(np.float64)[:, None, :]
    R, t = s["R"].astype(np.float64), s["t"].astype(np.float64)
    return (cam - t) @ R  # R^T (X_cam - t), row-vector form


def test_shapes_and_dtypes(seq):
    assert seq["keypoints_2d"].shape == (T, 17, 2) and seq["keypoints_2d"].dtype == np.float32
    assert seq["positions_3d"].shape == (T, 17, 3) and seq["positions_3d"].dtype == np.float32
    assert seq["root_3d"].shape == (T, 3) and seq["root_3d"].dtype == np.float32
    assert seq["width"] == W and seq["height"] == H
    assert seq["fps"] == 50.0
    assert seq["K"].shape == (3, 3) and seq["R"].shape == (3, 3) and seq["t"].shape == (3,)
    assert seq["intrinsics"].shape == (4,)
    assert len(seq["joint_names"]) == 17 and list(seq["parents"]) == list(PARENTS)
    for key in ("keypoints_2d", "positions_3d", "root_3d"):
        assert np.isfinite(seq[key]).all()
    # Root-relative: the root joint is exactly at the origin.
    assert np.all(seq["positions_3d"][:, 0] == 0)


def test_other_lengths_and_bad_arguments():
    s = synth.make_walk_sequence(frames=17, fps=25.0)
    assert s["keypoints_2d"].shape == (17, 17, 2) and s["fps"] == 25.0
    with pytest.raises(ValueError):
        synth.make_walk_sequence(frames=0)
    with pytest.raises(ValueError):
        synth.make_walk_sequence(fps=0.0)
    with pytest.raises(ValueError):
        synth.make_walk_sequence(noise_px=-1.0)


def test_camera_is_human36m_like(seq):
    K = seq["K"].astype(np.float64)
    assert K[0, 0] == pytest.approx(1145, abs=5) and K[1, 1] == pytest.approx(1145, abs=5)
    assert K[0, 2] == pytest.approx(512, abs=5) and K[1, 2] == pytest.approx(515, abs=5)
    np.testing.assert_allclose(seq["intrinsics"], [K[0, 0], K[1, 1], K[0, 2], K[1, 2]])
    R = seq["R"].astype(np.float64)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-6)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-6)
    centre = -R.T @ seq["t"].astype(np.float64)
    assert centre[2] == pytest.approx(1.5, abs=0.2)  # camera height
    # Subject is in front of the camera, roughly 5 m away.
    depth = seq["root_3d"][:, 2]
    assert depth.min() > 3.0 and depth.max() < 7.0 and 4.0 < depth.mean() < 6.0


def test_rigid_skeleton(clean):
    lengths = bone_lengths(clean["positions_3d"])  # [T, 16]
    np.testing.assert_allclose(lengths, np.broadcast_to(lengths[0], lengths.shape), rtol=1e-5)
    # Plausible adult proportions (metres).
    named = dict(zip(synth.JOINT_NAMES[1:], lengths[0]))
    assert 0.38 < named["r_knee"] < 0.52  # thigh
    assert 0.38 < named["r_ankle"] < 0.50  # shin
    assert 0.22 < named["r_elbow"] < 0.34  # upper arm
    assert 0.20 < named["r_wrist"] < 0.30  # forearm


def test_feet_on_the_floor_and_plausible_stature(clean):
    world = to_world(clean)
    ankles_z = world[:, [3, 6], 2]
    # The lower ankle rests at ankle height every frame; the other one never goes through the floor.
    np.testing.assert_allclose(ankles_z.min(axis=1), synth.ANKLE_HEIGHT, atol=1e-4)
    head_z = world[:, HEAD, 2]
    assert 1.5 < head_z.min() and head_z.max() < 1.9
    bob = world[: T // 2, 0, 2]
    assert 0.02 < bob.max() - bob.min() < 0.08  # vertical bob of the pelvis while walking
    # The person walks: several metres along the path, at a walking pace.
    step = np.linalg.norm(np.diff(world[:, 0, :2], axis=0), axis=1)
    assert 3.0 < step.sum() < 9.0
    assert 0.8 < step[: T // 2].sum() / (T // 2 / 50.0) < 1.6


def test_projection_consistency(clean, seq):
    cam = clean["positions_3d"].astype(np.float64) + clean["root_3d"].astype(np.float64)[:, None, :]
    K = clean["K"].astype(np.float64)
    reproj = np.stack([K[0, 0] * cam[..., 0] / cam[..., 2] + K[0, 2], K[1, 1] * cam[..., 1] / cam[..., 2] + K[1, 2]],
                      axis=-1)
    np.testing.assert_allclose(clean["keypoints_2d"], reproj, atol=1e-2)
    np.testing.assert_allclose(synth.project(cam, K), reproj, atol=1e-9)
    # The default output is the same projection plus ~1 px detector-like noise.
    resid = seq["keypoints_2d"].astype(np.float64) - reproj
    assert abs(resid.mean()) < 0.05
    assert 0.9 < resid.std() < 1.1
    assert np.abs(resid).max() < 6.0
    np.testing.assert_array_equal(seq["positions_3d"], clean["positions_3d"])


def test_points_inside_image(seq, clean):
    for s in (seq, clean):
        kp = s["keypoints_2d"]
        assert kp[..., 0].min() > 10 and kp[..., 0].max() < W - 10
        assert kp[..., 1].min() > 10 and kp[..., 1].max() < H - 10
    assert np.all(clean["positions_3d"][..., 2] + clean["root_3d"][:, None, 2] > 1.0)


def test_left_right_symmetry(clean):
    lengths = bone_lengths(clean["positions_3d"])[0]
    for left, right in MIRRORED:
        assert lengths[left - 1] == pytest.approx(lengths[right - 1], rel=1e-5)
    world = to_world(clean)
    walk = slice(0, T // 2)
    root = world[:, 0, :2]
    fwd = np.gradient(root, axis=0)
    fwd /= np.linalg.norm(fwd, axis=1, keepdims=True)
    left_dir = np.stack([-fwd[:, 1], fwd[:, 0]], axis=1)

    def forward(j):
        return ((world[:, j, :2] - root) * fwd).sum(axis=1)[walk]

    # The left joints are on the body's left.
    assert np.all(((world[:, 4, :2] - world[:, 1, :2]) * left_dir).sum(axis=1) > 0.15)
    assert np.all(((world[:, 11, :2] - world[:, 14, :2]) * left_dir).sum(axis=1) > 0.2)
    # Both legs swing through the same range, half a cycle apart.
    l_ank, r_ank = forward(6), forward(3)
    assert np.ptp(l_ank) == pytest.approx(np.ptp(r_ank), rel=0.15)
    assert np.ptp(l_ank) > 0.4
    assert np.corrcoef(l_ank, r_ank)[0, 1] < -0.5
    # Arms swing in counter-phase to the leg of the same side.
    l_wr, r_wr = forward(L_WRIST), forward(R_WRIST)
    assert np.ptp(l_wr) == pytest.approx(np.ptp(r_wr), rel=0.15)
    assert np.corrcoef(l_wr, l_ank)[0, 1] < -0.5
    assert np.corrcoef(r_wr, r_ank)[0, 1] < -0.5
    # The arm raise is symmetric.
    z = world[:, :, 2]
    assert z[T // 2:, L_WRIST].max() == pytest.approx(z[T // 2:, R_WRIST].max(), abs=0.02)


def test_arms_above_head_only_in_second_half(seq):
    y = seq["keypoints_2d"][..., 1]  # image y grows downwards
    above = (y[:, L_WRIST] < y[:, HEAD]) & (y[:, R_WRIST] < y[:, HEAD])
    assert not above[: T // 2].any()
    assert above[T // 2:].any()
    # Clearly above (more than 20 px) for a while, not just a noise flicker.
    clear = (y[:, L_WRIST] < y[:, HEAD] - 20) & (y[:, R_WRIST] < y[:, HEAD] - 20)
    assert clear[T // 2:].sum() >= 25
    # ... and lowered again by the end.
    assert not above[-5:].any()


def test_deterministic_and_seeded(seq):
    again = synth.make_walk_sequence()
    for key in ("keypoints_2d", "positions_3d", "root_3d"):
        np.testing.assert_array_equal(seq[key], again[key])
    other = synth.make_walk_sequence(seed=1)
    np.testing.assert_array_equal(seq["positions_3d"], other["positions_3d"])
    diff = np.abs(seq["keypoints_2d"] - other["keypoints_2d"])
    assert diff.mean() > 0.5


def test_shipped_sample_matches_generator(seq):
    assert os.path.exists(SAMPLE_PATH), "run `python pyengine/data/synth.py` to write sample_walk.npz"
    assert os.path.getsize(SAMPLE_PATH) < 200 * 1024
    with np.load(SAMPLE_PATH) as data:  # no allow_pickle: the file must not need it
        assert set(data.files) == set(seq)
        for key, value in seq.items():
            stored = data[key]
            expected = np.asarray(value)
            assert stored.shape == expected.shape, key
            assert stored.dtype == expected.dtype, key
            if np.issubdtype(expected.dtype, np.floating):
                # Tolerance only for last-bit differences of sin/cos across platforms; real drift is far larger.
                np.testing.assert_allclose(stored, expected, rtol=0, atol=1e-3 if key == "keypoints_2d" else 1e-5,
                                           err_msg=key)
            else:
                np.testing.assert_array_equal(stored, expected, err_msg=key)


def test_normalize_screen():
    X = np.array([[0.0, 0.0], [W, H], [W / 2, H / 2], [250.0, 100.0]], dtype=np.float32)
    out = synth.normalize_screen(X, W, H)
    assert out.dtype == np.float32 and out.shape == X.shape
    expected = X.astype(np.float64) / W * 2 - np.array([1.0, H / W])
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out[0], [-1.0, -H / W], atol=1e-6)
    np.testing.assert_allclose(out[1], [1.0, H / W], atol=1e-6)
    np.testing.assert_allclose(out[2], [0.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(synth.image_coordinates(out, W, H), X, atol=1e-3)
    # Integer input is promoted, batched input keeps its leading dimensions.
    assert synth.normalize_screen(np.array([[W, 0]]), W, H).dtype == np.float64
    batch = np.zeros((3, 5, 17, 2), dtype=np.float32)
    assert synth.normalize_screen(batch, W, H).shape == batch.shape
    with pytest.raises(ValueError):
        synth.normalize_screen(np.zeros((4, 3)), W, H)


def test_normalized_sample_range(seq):
    out = synth.normalize_screen(seq["keypoints_2d"], seq["width"], seq["height"])
    assert out.dtype == np.float32
    assert np.abs(out[..., 0]).max() < 1.0
    assert np.abs(out[..., 1]).max() < H / W


def test_shipped_mmpose_json_matches_generator(seq):
    path = os.path.join(ROOT, "pyengine", "data", "sample_walk_mmpose.json")
    assert os.path.exists(path), "run `python pyengine/data/synth.py` to write sample_walk_mmpose.json"
    with open(path) as f:
        text = f.read()
    assert text == synth.mmpose_json(synth.make_mmpose_predictions(seq))
    doc = json.loads(text)
    assert doc["meta_info"]["image_width"] == W and doc["meta_info"]["image_height"] == H
    frames = doc["instance_info"]
    assert [fr["frame_id"] for fr in frames] == list(range(T))
    inst = frames[7]["instances"][0]
    assert len(inst["keypoints"]) == 17 and all(0.8 <= s <= 0.99 for s in inst["keypoint_scores"])
    coco = np.array(inst["keypoints"])
    h36m = seq["keypoints_2d"][7].astype(np.float64)
    # COCO nose <- H36M neck/nose, left_wrist <- l_wrist, right_ankle <- r_ankle (2-decimal pixels).
    for coco_j, h36m_j in ((0, 9), (9, 13), (16, 3)):
        np.testing.assert_allclose(coco[coco_j], h36m[h36m_j], atol=0.006)
    # Mid-eyes is the head joint (the MMPose COCO -> H36M rule for the head).
    np.testing.assert_allclose((coco[1] + coco[2]) / 2, h36m[10], atol=0.01)
