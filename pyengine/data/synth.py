"""Procedurally generated 2D keypoints of a walking person (Human3.6M 17-joint layout).

Pure numpy, no external data. ``make_walk_sequence`` animates a rigid adult skeleton with forward kinematics:

* first half: walking along a slow circle (hip / knee swing, arms swinging in counter-phase to the legs,
  pelvis / thorax counter-rotation, a small vertical bob that comes from keeping the lower ankle on the ground);
* second half: still walking, slower, while both arms are raised sideways overhead and lowered again.

The skeleton is seen by a Human3.6M-like pinhole camera (1000 x 1002 image, f ~ 1145 px, principal point
~ (512, 515), ~5 m from the centre of the walking circle at 1.5 m height). The returned 2D keypoints get a small
seeded Gaussian noise (``noise_px``, default 1 px std) so they look like detector output; the 3D motion itself does
not depend on the seed.

``python -m pyengine.data.synth`` (or ``python pyengine/data/synth.py``) rewrites ``sample_walk.npz`` next to this
file, and ``sample_walk_mmpose.json``: the same 2D keypoints converted to COCO-17 (``h36m_to_coco``) as an MMPose
prediction file with deterministic scores (``make_mmpose_predictions``); ``tests/data/test_synth.py`` checks that both
shipped files equal a fresh generation.

Coordinates: world is z-up, metres. Camera frame is x right, y down, z forward (OpenCV / Human3.6M convention),
``X_cam = R @ X_world + t``; pixels are ``u = fx * x / z + cx``, ``v = fy * y / z + cy``.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from ..skeleton import JOINT_NAMES, LEFT_JOINTS, PARENTS, RIGHT_JOINTS, image_coordinates, normalize_screen  # noqa: F401,E501

__all__ = [
    "JOINT_NAMES",
    "PARENTS",
    "LEFT_JOINTS",
    "RIGHT_JOINTS",
    "make_walk_sequence",
    "project",
    "normalize_screen",
    "image_coordinates",
    "save_sample",
    "SAMPLE_PATH",
    "MMPOSE_SAMPLE_PATH",
    "h36m_to_coco",
    "make_mmpose_predictions",
    "mmpose_json",
    "save_mmpose_sample",
    "main",
]


SAMPLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample_walk.npz")
MMPOSE_SAMPLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sample_walk_mmpose.json")

# Adult bone geometry in metres (body frame: x forward, y left, z up). Roughly a 1.75 m person.
HIP_HALF_WIDTH = 0.13
THIGH = 0.45
SHIN = 0.44
ANKLE_HEIGHT = 0.08  # ankle joint above the floor when the foot is planted
ROOT_TO_SPINE = np.array([0.0, 0.0, 0.23])
SPINE_TO_THORAX = np.array([0.0, 0.0, 0.25])
THORAX_TO_NOSE = np.array([0.05, 0.0, 0.11])
NOSE_TO_HEAD = np.array([-0.02, 0.0, 0.11])
SHOULDER_OFFSET = np.array([0.0, 0.15, -0.02])  # from thorax, y mirrored for the right side
UPPER_ARM = 0.28
FOREARM = 0.25

# Human3.6M-like camera (close to camera 54138969 of the dataset).
WIDTH, HEIGHT = 1000, 1002
FX, FY = 1145.05, 1143.78
CX, CY = 512.54, 515.45
CAMERA_DISTANCE = 5.0  # from the centre of the walking circle, horizontally
CAMERA_HEIGHT = 1.5
CAMERA_AZIMUTH = np.deg2rad(-100.0)  # where the camera stands around the circle centre
LOOK_AT = np.array([0.0, 0.0, 0.9])
CIRCLE_RADIUS = 1.2

_DOWN = np.array([0.0, 0.0, -1.0])


def _rot_x(a: np.ndarray) -> np.ndarray:
    """[T, 3, 3] rotations about the body's forward axis (positive moves -z towards +y, i.e. to the left)."""
    a = np.asarray(a, dtype=np.float64)
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def _flex(a: np.ndarray) -> np.ndarray:
    """[T, 3, 3] rotations about the lateral (y) axis; positive swings a downward vector forward (+x)."""
    a = np.asarray(a, dtype=np.float64)
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    # Rotation about y by -a: (0, 0, -1) -> (sin a, 0, -cos a).
    return np.stack([np.stack([c, z, -s], -1), np.stack([z, o, z], -1), np.stack([s, z, c], -1)], -2)


def _rot_z(a: np.ndarray) -> np.ndarray:
    """[T, 3, 3] rotations about the vertical axis (counter-clockwise seen from above)."""
    a = np.asarray(a, dtype=np.float64)
    c, s = np.cos(a), np.sin(a)
    o, z = np.ones_like(a), np.zeros_like(a)
    return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def _apply(rot: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors: rot [T, 3, 3], v [3] or [T, 3] -> [T, 3]."""
    v = np.broadcast_to(v, rot.shape[:-1])
    return np.einsum("tij,tj->ti", rot, v)


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _camera() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """K [3, 3], R [3, 3] (world -> camera) and t [3] of the fixed camera."""
    centre = np.array([CAMERA_DISTANCE * np.cos(CAMERA_AZIMUTH), CAMERA_DISTANCE * np.sin(CAMERA_AZIMUTH),
                       CAMERA_HEIGHT])
    fwd = LOOK_AT - centre
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, np.array([0.0, 0.0, 1.0]))
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    rot = np.stack([right, down, fwd])  # rows: camera x (right), y (down), z (viewing direction)
    t = -rot @ centre
    k = np.array([[FX, 0.0, CX], [0.0, FY, CY], [0.0, 0.0, 1.0]])
    return k, rot, t


def project(points_cam: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pinhole projection of camera-frame points [..., 3] (metres) to pixels [..., 2]."""
    p = np.asarray(points_cam, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    xy = p[..., :2] / p[..., 2:3]
    return np.stack([K[0, 0] * xy[..., 0] + K[0, 2], K[1, 1] * xy[..., 1] + K[1, 2]], axis=-1)


# Sagittal gait curves over one gait cycle (fraction 0 .. 1, right heel strike at 0), in degrees, sampled every
# 10% and interpolated with a periodic Catmull-Rom spline. Thigh angle is measured from the vertical (positive =
# forward), knee flexion is the bend between thigh and shank; both follow the shape of clinical gait data, with the
# knee almost straight at heel strike, a loading-response bend, heel rise before toe-off and a ~60 degree peak in
# swing.
_THIGH_DEG = (22.0, 18.0, 10.0, 1.0, -7.0, -13.0, -12.0, 2.0, 17.0, 24.0)
_KNEE_DEG = (4.0, 16.0, 14.0, 7.0, 6.0, 14.0, 38.0, 60.0, 44.0, 14.0)


def _periodic_spline(keys, cycle: np.ndarray) -> np.ndarray:
    """Periodic Catmull-Rom interpolation of equally spaced ``keys`` at cycle fractions ``cycle``."""
    k = np.asarray(keys, dtype=np.float64)
    n = k.size
    x = np.mod(cycle, 1.0) * n
    i = np.floor(x).astype(np.int64) % n
    s = x - np.floor(x)
    p0, p1, p2, p3 = k[(i - 1) % n], k[i], k[(i + 1) % n], k[(i + 2) % n]
    return 0.5 * (2.0 * p1 + (p2 - p0) * s + (2.0 * p0 - 5.0 * p1 + 4.0 * p2 - p3) * s ** 2
                  + (3.0 * p1 - p0 - 3.0 * p2 + p3) * s ** 3)


def _gaussian_smooth(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing of a 1D signal with edge-reflecting padding (identity for tiny sigma)."""
    if x.size < 2 or sigma < 0.5:
        return x
    radius = int(np.ceil(3.0 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    padded = np.pad(x, radius, mode="reflect" if x.size > radius else "edge")
    return np.convolve(padded, taps, mode="valid")


def _animate_world(frames: int, fps: float) -> np.ndarray:
    """World-frame joint positions [T, 17, 3] (float64) of the walking / arm-raising person."""
    T = int(frames)
    time = np.arange(T, dtype=np.float64) / fps
    duration = T / fps

    # Second half: a smooth slow-down and the arm raise (up over 30%, hold 20%, down over 30% of the half).
    half = 0.5 * duration
    u = (time - half) / max(half, 1e-9)  # 0 .. 1 over the second half, negative before
    slow = _smoothstep(u / 0.25)
    raise_ = _smoothstep((u - 0.1) / 0.3) * (1.0 - _smoothstep((u - 0.6) / 0.3))

    amp = 1.0 - 0.4 * slow  # gait amplitude: shorter steps when slower
    cadence = 0.95 - 0.2 * slow  # gait cycles per second (one cycle = two steps)
    cycle = np.concatenate([[0.0], np.cumsum(cadence[:-1] / fps)]) + 0.15
    # Right thigh swing normalised to about [-1, 1] (+1: right leg forward, left leg back).
    swing = (_periodic_spline(_THIGH_DEG, cycle) - 5.0) / 18.0

    # Everything below is in the body frame (x forward, y left, z up, origin at the root) until the end.
    pelvis = _rot_z(0.09 * amp * swing)  # the pelvis turns with the swinging leg
    trunk_lean = 0.07 + 0.02 * amp
    thorax = _rot_z(-0.07 * amp * swing * (1.0 - raise_)) @ _flex(trunk_lean - 0.05 * raise_)

    def leg(side: float, c: np.ndarray):
        thigh = amp * np.deg2rad(_periodic_spline(_THIGH_DEG, c)) + (1.0 - amp) * np.deg2rad(4.0)
        knee = amp * np.deg2rad(_periodic_spline(_KNEE_DEG, c)) + (1.0 - amp) * np.deg2rad(4.0)
        abduct = side * (0.03 + 0.015 * np.cos(2.0 * np.pi * c))  # feet slightly apart
        thigh_rot = pelvis @ _flex(thigh) @ _rot_x(abduct)
        shin_rot = thigh_rot @ _flex(-knee)  # the knee bends backwards
        hip = _apply(pelvis, np.array([0.0, side * HIP_HALF_WIDTH, 0.0]))
        knee_pos = hip + THIGH * _apply(thigh_rot, _DOWN)
        ankle = knee_pos + SHIN * _apply(shin_rot, _DOWN)
        return hip, knee_pos, ankle

    # side = +1 is the body's left (+y); the left leg runs half a cycle behind the right one.
    r_hip, r_knee, r_ankle = leg(-1.0, cycle)
    l_hip, l_knee, l_ankle = leg(+1.0, cycle + 0.5)

    spine = _apply(pelvis @ _flex(-0.5 * trunk_lean), ROOT_TO_SPINE)
    thor = spine + _apply(thorax, SPINE_TO_THORAX)
    nose = thor + _apply(thorax, THORAX_TO_NOSE)
    head = nose + _apply(thorax, NOSE_TO_HEAD)

    def arm(side: float, swing: np.ndarray):
        shoulder = thor + _apply(thorax, SHOULDER_OFFSET * np.array([1.0, side, 1.0]))
        flex = swing * (1.0 - raise_) + 0.12 * raise_
        abduct = side * (0.12 + 2.75 * raise_)  # ~165 degrees: overhead, slightly outwards
        elbow_flex = (0.35 + 0.25 * np.clip(swing, 0.0, None)) * (1.0 - raise_) + 0.15 * raise_
        upper_rot = thorax @ _flex(-trunk_lean) @ _flex(flex) @ _rot_x(abduct)
        fore_rot = upper_rot @ _flex(elbow_flex)
        elbow = shoulder + UPPER_ARM * _apply(upper_rot, _DOWN)
        wrist = elbow + FOREARM * _apply(fore_rot, _DOWN)
        return shoulder, elbow, wrist

    # Arms swing in counter-phase to the leg of the same side (right arm forward with the left leg).
    arm_swing = 0.32 * amp * swing
    l_sh, l_el, l_wr = arm(+1.0, arm_swing)
    r_sh, r_el, r_wr = arm(-1.0, -arm_swing)

    local = np.stack([np.zeros((T, 3)), r_hip, r_knee, r_ankle, l_hip, l_knee, l_ankle, spine, thor, nose, head,
                      l_sh, l_el, l_wr, r_sh, r_el, r_wr], axis=1)

    # Foot-locked progression: the root advances by however much the lower (stance) ankle moves backwards, so the
    # planted foot does not slide; the lower ankle rests on the floor, which gives the vertical bob.
    ankles = local[:, [3, 6]]
    stance = np.argmin(ankles[:, :, 2], axis=1)
    back = ankles[:-1, :, 0][np.arange(T - 1), stance[:-1]] - ankles[1:, :, 0][np.arange(T - 1), stance[:-1]]
    step = _gaussian_smooth(np.clip(back, 0.0, None), sigma=0.06 * fps)  # evens out the speed a little
    dist = np.concatenate([[0.0], np.cumsum(step)])

    # Root path: counter-clockwise circle around the origin, the body facing along the tangent.
    gamma = np.deg2rad(-150.0) + dist / CIRCLE_RADIUS
    heading = _rot_z(gamma + np.pi / 2.0)
    root = np.zeros((T, 3))
    root[:, 0] = CIRCLE_RADIUS * np.cos(gamma)
    root[:, 1] = CIRCLE_RADIUS * np.sin(gamma)
    root[:, 2] = ANKLE_HEIGHT - np.min(ankles[:, :, 2], axis=1)
    return np.einsum("tij,tkj->tki", heading, local) + root[:, None, :]


def make_walk_sequence(frames: int = 300, fps: float = 50.0, seed: int = 0, noise_px: float = 1.0) -> dict:
    """Synthesise a walking / arm-raising sequence seen by a Human3.6M-like camera.

    Returns a dict with
      ``keypoints_2d`` float32 [T, 17, 2]  pixels, with ``noise_px`` std Gaussian noise (seeded by ``seed``),
      ``positions_3d`` float32 [T, 17, 3]  root-relative joint positions in the camera frame (metres),
      ``root_3d``      float32 [T, 3]      root (pelvis) trajectory in the camera frame (metres),
      ``width`` 1000, ``height`` 1002, ``fps``,
      ``K`` float32 [3, 3], ``intrinsics`` float32 [4] (fx, fy, cx, cy) in pixels,
      ``R`` float32 [3, 3], ``t`` float32 [3] world -> camera (``X_cam = R @ X_world + t``),
      ``parents`` int64 [17] and ``joint_names`` [17] (Human3.6M 17-joint order).
    The 3D motion does not depend on ``seed``; only the 2D noise does.
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    if fps <= 0:
        raise ValueError(f"fps must be > 0, got {fps}")
    if noise_px < 0:
        raise ValueError(f"noise_px must be >= 0, got {noise_px}")

    world = _animate_world(frames, fps)
    K, R, t = _camera()
    cam = world @ R.T + t  # [T, 17, 3]
    if np.any(cam[..., 2] <= 0.1):
        raise RuntimeError("synthetic subject got behind the camera")
    kp = project(cam, K)
    if noise_px > 0:
        rng = np.random.default_rng(seed)
        kp = kp + rng.normal(0.0, noise_px, size=kp.shape)

    root = cam[:, 0, :]
    return {
        "keypoints_2d": kp.astype(np.float32),
        "positions_3d": (cam - root[:, None, :]).astype(np.float32),
        "root_3d": root.astype(np.float32),
        "width": WIDTH,
        "height": HEIGHT,
        "fps": float(fps),
        "K": K.astype(np.float32),
        "intrinsics": np.array([K[0, 0], K[1, 1], K[0, 2], K[1, 2]], dtype=np.float32),
        "R": R.astype(np.float32),
        "t": t.astype(np.float32),
        "parents": np.array(PARENTS, dtype=np.int64),
        "joint_names": np.array(JOINT_NAMES),
    }


def save_sample(path: str = SAMPLE_PATH, frames: int = 300, fps: float = 50.0, seed: int = 0) -> str:
    """Write ``make_walk_sequence(frames, fps, seed)`` to ``path`` with ``np.savez_compressed``."""
    seq = make_walk_sequence(frames=frames, fps=fps, seed=seed)
    np.savez_compressed(path, **{k: np.asarray(v) for k, v in seq.items()})
    return path


COCO_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
              "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
              "right_knee", "left_ankle", "right_ankle")
# COCO joint <- Human3.6M joint, for the joints both layouts have (the inverse of pyengine.keypoints' mapping).
_COCO_FROM_H36M = {0: 9, 5: 11, 6: 14, 7: 12, 8: 15, 9: 13, 10: 16, 11: 4, 12: 1, 13: 5, 14: 2, 15: 6, 16: 3}


def h36m_to_coco(kp: np.ndarray) -> np.ndarray:
    """Human3.6M-17 ``[T, 17, 2]`` -> COCO-17 ``[T, 17, 2]`` for the synthetic sample.

    Limbs, hips, shoulders copy their joint; nose = H36M neck/nose; the eyes and ears, which H36M does not have,
    sit on the head joint offset along the shoulder line (eyes +-0.1, ears +-0.2 of the shoulder vector, towards
    the subject's own side), so that ``pyengine.keypoints.coco_to_h36m`` (head = mid-eyes) recovers the head."""
    kp = np.asarray(kp, dtype=np.float64)
    out = np.empty_like(kp)
    for coco, h36m in _COCO_FROM_H36M.items():
        out[:, coco] = kp[:, h36m]
    side = kp[:, 11] - kp[:, 14]  # right shoulder -> left shoulder
    head = kp[:, 10]
    out[:, 1], out[:, 2] = head + 0.1 * side, head - 0.1 * side
    out[:, 3], out[:, 4] = head + 0.2 * side, head - 0.2 * side
    return out


def make_mmpose_predictions(seq: dict, seed: int = 0) -> dict:
    """The 2D keypoints of ``seq`` (``make_walk_sequence``) as an MMPose top-down prediction document: COCO-17
    keypoints in pixels (2 decimals) with seeded scores in [0.80, 0.99] (3 decimals), one instance per frame."""
    coco = np.round(h36m_to_coco(seq["keypoints_2d"]), 2)
    rng = np.random.default_rng(seed + 1000)  # its own stream: the npz sample does not change
    scores = np.round(0.80 + 0.19 * rng.random(coco.shape[:2]), 3)
    frames = []
    for t in range(len(coco)):
        lo, hi = coco[t].min(axis=0), coco[t].max(axis=0)
        frames.append({"frame_id": t, "instances": [{
            "keypoints": coco[t].tolist(), "keypoint_scores": scores[t].tolist(),
            "bbox": [[round(float(lo[0]) - 20, 2), round(float(lo[1]) - 20, 2), round(float(hi[0]) + 20, 2),
                      round(float(hi[1]) + 20, 2)]], "bbox_score": 1.0}]})
    meta = {"dataset_name": "coco", "num_keypoints": 17, "keypoint_id2name": dict(enumerate(COCO_NAMES)),
            "image_width": int(seq["width"]), "image_height": int(seq["height"]), "fps": float(seq["fps"]),
            "generator": "pyengine.data.synth (synthetic walking sample, not a real detector)"}
    return {"meta_info": meta, "instance_info": frames}


def mmpose_json(doc: dict) -> str:
    """Deterministic JSON text of a prediction document (one frame per line)."""
    frames = ",\n".join(json.dumps(fr, separators=(",", ":")) for fr in doc["instance_info"])
    return ('{"meta_info":' + json.dumps(doc["meta_info"], separators=(",", ":")) + ',\n"instance_info":[\n'
            + frames + "\n]}\n")


def save_mmpose_sample(path: str = MMPOSE_SAMPLE_PATH, frames: int = 300, fps: float = 50.0, seed: int = 0) -> str:
    """Write the MMPose JSON version of ``make_walk_sequence(frames, fps, seed)`` to ``path``."""
    text = mmpose_json(make_mmpose_predictions(make_walk_sequence(frames=frames, fps=fps, seed=seed), seed=seed))
    with open(path, "w", newline="\n") as f:
        f.write(text)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write the synthetic walking sample (sample_walk.npz and "
                                                 "sample_walk_mmpose.json).")
    parser.add_argument("--out", default=SAMPLE_PATH, help="output .npz path (default: the shipped sample)")
    parser.add_argument("--mmpose-out", default=MMPOSE_SAMPLE_PATH,
                        help="output MMPose .json path (default: the shipped sample)")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--fps", type=float, default=50.0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in (save_sample(args.out, frames=args.frames, fps=args.fps, seed=args.seed),
                 save_mmpose_sample(args.mmpose_out, frames=args.frames, fps=args.fps, seed=args.seed)):
        print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
