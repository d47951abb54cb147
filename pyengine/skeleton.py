"""The Human3.6M 17-joint skeleton (VideoPose3D ordering) and SPEC.md §4's screen normalisation: the facts the
keypoint readers, lifting, rendering, the CLI and the synthetic sample all use (one copy, depending on nothing)."""
import numpy as np

JOINT_NAMES = (
    "hip", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "spine", "thorax",
    "neck_nose", "head", "l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow", "r_wrist",
)
# Human3.6M 17-joint kinematic tree (VideoPose3D ordering).
PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15)
LEFT_JOINTS = (4, 5, 6, 11, 12, 13)
RIGHT_JOINTS = (1, 2, 3, 14, 15, 16)


def normalize_screen(X: np.ndarray, w: float, h: float) -> np.ndarray:
    """Pixels -> [-1, 1] along x, keeping the aspect ratio: ``X / w * 2 - [1, h / w]`` (VideoPose3D)."""
    X = np.asarray(X)
    if X.shape[-1] != 2:
        raise ValueError(f"expected [..., 2] pixel coordinates, got shape {X.shape}")
    dtype = X.dtype if np.issubdtype(X.dtype, np.floating) else np.dtype(np.float64)
    X = X.astype(dtype, copy=False)
    return X / dtype.type(w) * dtype.type(2) - np.array([1.0, h / w], dtype=dtype)


def image_coordinates(X: np.ndarray, w: float, h: float) -> np.ndarray:
    """Inverse of :func:`normalize_screen`: ``(X + [1, h / w]) * w / 2``."""
    X = np.asarray(X)
    if X.shape[-1] != 2:
        raise ValueError(f"expected [..., 2] normalised coordinates, got shape {X.shape}")
    dtype = X.dtype if np.issubdtype(X.dtype, np.floating) else np.dtype(np.float64)
    X = X.astype(dtype, copy=False)
    return (X + np.array([1.0, h / w], dtype=dtype)) * dtype.type(w) / dtype.type(2)
