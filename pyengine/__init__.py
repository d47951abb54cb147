"""pyengine: fast 3D human pose lifting with fused kernels, checked against eager PyTorch references."""
import importlib.abc as _abc
import importlib.util as _util
import os as _os
import sys as _sys

# The Triton kernels live in kernels/ beside this package; setup.py installs them as pyengine.kernels (and
# pip's editable finder maps them). A plain source checkout built with `python setup.py build_ext --inplace`
# has no such mapping: this finder, consulted only after every other one, supplies it (lazily: triton is
# imported when a kernel module is, so TRITON_INTERPRET can still be set before that).
_KERNELS_DIR = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "kernels")


class _SourceTreeKernels(_abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "pyengine.kernels" or not _os.path.isfile(_os.path.join(_KERNELS_DIR, "__init__.py")):
            return None
        return _util.spec_from_file_location(name, _os.path.join(_KERNELS_DIR, "__init__.py"),
                                             submodule_search_locations=[_KERNELS_DIR])


if not any(isinstance(f, _SourceTreeKernels) for f in _sys.meta_path):
    _sys.meta_path.append(_SourceTreeKernels())
from .arch import MODELS as _MODELS
from .backends import BackendUnavailableError
from .checkpoint import CheckpointError
from .engine import ValidationError, report, revert, swap
from .keypoints import KeypointError, load_keypoints
from .lift import Lifter, lift, lift_tracks
from .load import LoadInfo, load
from .models import dpc_knn_select
from .onnx_export import ExportError, export
from .ops import tpc_select

__version__ = "0.1.0"
ARCHS = tuple(sorted(_MODELS))

__all__ = ["load", "export", "ExportError", "lift", "Lifter", "load_keypoints", "KeypointError", "swap", "revert", "report", "ARCHS", "CheckpointError", "BackendUnavailableError",
           "ValidationError", "LoadInfo", "dpc_knn_select", "tpc_select"]
