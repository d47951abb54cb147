"""pyengine: fast 3D human pose lifting with fused kernels, checked against eager PyTorch references."""
from .arch import MODELS as _MODELS
from .backends import BackendUnavailableError
from .checkpoint import CheckpointError
from .engine import ValidationError, report, revert, swap
from .keypoints import KeypointError, load_keypoints
from .lift import Lifter, lift
from .load import LoadInfo, load
from .models import dpc_knn_select
from .ops import tpc_select

__version__ = "0.1.0"
ARCHS = tuple(sorted(_MODELS))

__all__ = ["load", "lift", "Lifter", "load_keypoints", "KeypointError", "swap", "revert", "report", "ARCHS", "CheckpointError", "BackendUnavailableError",
           "ValidationError", "LoadInfo", "dpc_knn_select", "tpc_select"]
