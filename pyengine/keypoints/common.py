"""What every part of ``pyengine.keypoints`` shares: the error type and ``Keypoints2D``, the keypoints as read."""
from dataclasses import dataclass

import numpy as np


class KeypointError(ValueError):
    """A keypoint file or array is malformed, has the wrong joint count, or has missing keypoints."""


@dataclass
class Keypoints2D:
    """Keypoints as read from a file, Human3.6M-17 order (already converted when the file was COCO-17).

    xy [T, 17, 2] float64 (NaN where missing), scores [T, 17] or None, width / height in pixels or None,
    normalized (True when ``xy`` is already in the screen-normalised space), layout of the file, source path,
    fps of the video when the file says, frame_ids [T] (the video frame of each row; MMPose ``frame_id``) and
    absent_frames (frame ids inside the range that the file has no record of; their rows are NaN)."""

    xy: np.ndarray
    scores: object = None
    width: object = None
    height: object = None
    normalized: bool = False
    layout: str = "h36m"
    source: str = "<array>"
    fps: object = None
    frame_ids: object = None
    absent_frames: tuple = ()

    def __post_init__(self):
        if self.frame_ids is None:
            self.frame_ids = np.arange(len(self.xy), dtype=np.int64)


def _check_joint_shape(a, name, layout="Human3.6M-17"):
    if a.ndim != 3 or a.shape[1] != 17 or a.shape[2] != 2:
        raise KeypointError(f"{name}: expected {layout} keypoints of shape [T, 17, 2], got {list(a.shape)}")
    if a.shape[0] == 0:
        raise KeypointError(f"{name}: the sequence is empty (shape {list(a.shape)})")
