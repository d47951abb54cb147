"""pyengine: fast 3D human pose lifting with fused kernels, checked against eager PyTorch references."""
from .arch import MODELS as _MODELS
from .checkpoint import CheckpointError
from .backends import BackendUnavailableError
from .load import LoadInfo, load
from .models import dpc_knn_select
from .ops import tpc_select

__version__ = "0.1.0"
ARCHS = tuple(sorted(_MODELS))

__all__ = ["load", "ARCHS", "CheckpointError", "BackendUnavailableError", "LoadInfo", "dpc_knn_select",
           "tpc_select"]
