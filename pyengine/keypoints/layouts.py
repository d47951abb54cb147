"""The two joint layouts of keypoint files, and COCO-17 -> Human3.6M-17 conversion.

COCO-17 -> Human3.6M-17 (``coco_to_h36m``; the MMPose convention, ``convert_keypoint_definition``):

====  ============  ==============================================
H36M  joint         from COCO
====  ============  ==============================================
0     hip (root)    mid(left_hip 11, right_hip 12)
1     r_hip         right_hip 12
2     r_knee        right_knee 14
3     r_ankle       right_ankle 16
4     l_hip         left_hip 11
5     l_knee        left_knee 13
6     l_ankle       left_ankle 15
7     spine         mid(hip, thorax), i.e. halfway between the hip and shoulder midpoints
8     thorax        mid(left_shoulder 5, right_shoulder 6)
9     neck/nose     nose 0
10    head          mid(left_eye 1, right_eye 2)
11    l_shoulder    left_shoulder 5
12    l_elbow       left_elbow 7
13    l_wrist       left_wrist 9
14    r_shoulder    right_shoulder 6
15    r_elbow       right_elbow 8
16    r_wrist       right_wrist 10
====  ============  ==============================================

A derived joint's score is the minimum of its sources' scores (and it is missing if any source is).
"""
import numpy as np

from ..skeleton import JOINT_NAMES
from .common import _check_joint_shape

COCO_JOINT_NAMES = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
                    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
                    "right_knee", "left_ankle", "right_ankle")
# H36M joint -> the COCO joints it is the mean of (see the table in the module docstring). Spine (7) is derived
# from hip and thorax afterwards.
COCO_TO_H36M = {0: (11, 12), 1: (12,), 2: (14,), 3: (16,), 4: (11,), 5: (13,), 6: (15,), 8: (5, 6), 9: (0,),
                10: (1, 2), 11: (5,), 12: (7,), 13: (9,), 14: (6,), 15: (8,), 16: (10,)}
LAYOUTS = ("h36m", "coco")


def coco_to_h36m(xy, scores=None):
    """COCO-17 ``[T, 17, 2]`` (and scores ``[T, 17]``) -> Human3.6M-17, per the table in the module docstring.
    Returns ``(xy, scores)`` (scores None when not given). NaN sources give NaN derived joints."""
    xy = np.asarray(xy, dtype=np.float64)
    _check_joint_shape(xy, "xy", "COCO-17")
    out = np.empty_like(xy)
    for h, src in COCO_TO_H36M.items():
        out[:, h] = xy[:, list(src)].mean(axis=1)
    out[:, 7] = (out[:, 0] + out[:, 8]) / 2
    if scores is None:
        return out, None
    scores = np.asarray(scores, dtype=np.float64)
    s = np.empty_like(scores)
    for h, src in COCO_TO_H36M.items():
        s[:, h] = scores[:, list(src)].min(axis=1)
    s[:, 7] = np.minimum(s[:, 0], s[:, 8])
    return out, s


def _joint_label(j, layout="h36m"):
    return f"joint {j} ({(COCO_JOINT_NAMES if layout == 'coco' else JOINT_NAMES)[j]})"
