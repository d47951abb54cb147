"""2D keypoints in: reading them from files, COCO-17 -> Human3.6M-17 conversion, missing-keypoint handling and the
screen normalisation of SPEC.md §4. Everything here is numpy; ``pyengine.lift`` takes the result.

One concern per module (each imports only the ones above it):

* ``common``: ``KeypointError`` and ``Keypoints2D`` (the keypoints as read).
* ``layouts``: the COCO-17 and Human3.6M-17 joint layouts, ``coco_to_h36m`` (its table).
* ``readers``: the file formats (its docstring lists them), ``read_keypoints``, ``read_detections`` /
  ``Detections``; VideoPose3D's pickles go through ``pyengine.safe_pickle``'s restricted unpickler.
* ``prepare``: missing keypoints, value checks (``check_values``, ``check_confidence``) and normalisation:
  ``prepare_keypoints``, ``load_keypoints`` (read, then prepare).

The public names are re-exported here: ``from pyengine.keypoints import X`` for any of them.
"""
from ..skeleton import JOINT_NAMES, LEFT_JOINTS, RIGHT_JOINTS, image_coordinates, normalize_screen
from .common import KeypointError, Keypoints2D
from .layouts import COCO_JOINT_NAMES, COCO_TO_H36M, LAYOUTS, coco_to_h36m  # noqa: F401 (as before the split)
from .prepare import (COORD_LIMIT, DEFAULT_SCORE_THRESHOLD, check_confidence, check_values,  # noqa: F401
                      interpolate_missing, load_keypoints, positive_size, prepare_keypoints)
from .readers import FORMATS, MAX_FRAMES, Detections, read_detections, read_keypoints  # noqa: F401

__all__ = ["KeypointError", "Keypoints2D", "Detections", "read_keypoints", "read_detections", "prepare_keypoints",
           "load_keypoints",
           "coco_to_h36m", "interpolate_missing", "check_confidence", "normalize_screen", "image_coordinates",
           "JOINT_NAMES",
           "COCO_JOINT_NAMES", "LEFT_JOINTS", "RIGHT_JOINTS", "FORMATS", "DEFAULT_SCORE_THRESHOLD", "check_values",
           "COORD_LIMIT"]

