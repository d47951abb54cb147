"""Which pickled globals pyengine accepts: both allow-lists in one place. numpy only; imports nothing of pyengine.

Pickle can run arbitrary code, so pyengine only ever unpickles with a fixed set of globals, chosen per kind of file:

* Keypoint files (the pickled ``positions_2d`` / ``metadata`` of a VideoPose3D ``.npz``, read by
  ``pyengine.keypoints.readers``): ``NumpyUnpickler`` rebuilds plain containers (dict / list / tuple / str /
  numbers, which need no globals) and numpy arrays, dtypes and scalars. Any other global is refused with
  ``RefusedGlobal`` before the object is created.
* Checkpoints (``pyengine.checkpoint``): pickles are read with ``torch.load(weights_only=True)``; when that refuses
  a file whose non-tensor globals are exactly numpy's RandomState machinery (MixSTE's ``random_state``, MMPose's
  pickled arrays) or numpy scalars (MotionBERT's ``min_loss``), the load is retried with those few numpy globals
  allow-listed. ``RANDOM_STATE_NAMES`` / ``NUMPY_SCALAR_NAMES`` are the qualified names a file's unsafe globals must
  be among; ``random_state_globals()`` / ``numpy_scalar_globals()`` the objects for
  ``torch.serialization.safe_globals``.
"""
import pickle

import numpy as np

__all__ = ["NumpyUnpickler", "RefusedGlobal", "NUMPY_ARRAY_GLOBALS", "RANDOM_STATE_NAMES", "NUMPY_SCALAR_NAMES",
           "random_state_globals", "numpy_scalar_globals"]

# ---------------------------------------------------------------- keypoint files: numpy arrays and plain containers
# The only callables a pickled numpy array needs, taken from numpy itself (numpy 1.x pickles name the module
# numpy.core.multiarray, numpy 2.x numpy._core.multiarray; both map to the objects of the installed numpy).
NUMPY_ARRAY_GLOBALS = {"_reconstruct": np.zeros(1).__reduce__()[0], "scalar": np.float64(0).__reduce__()[0]}


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle names a global outside the allow-list (``module`` / ``name``); raised before it is looked up."""

    def __init__(self, module, name):
        super().__init__(f"refusing to unpickle {module}.{name}")
        self.module, self.name = module, name


class NumpyUnpickler(pickle.Unpickler):
    """Rebuilds only numpy arrays / dtypes / scalars; plain containers need no globals. Refuses everything else."""

    def find_class(self, module, name):
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in NUMPY_ARRAY_GLOBALS:
            return NUMPY_ARRAY_GLOBALS[name]
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        raise RefusedGlobal(module, name)


# ---------------------------------------------------------------- checkpoints: torch.load(weights_only=True) retries
def random_state_globals():
    """The numpy globals a pickled ``np.random.RandomState`` needs (and nothing else)."""
    from numpy.random import _mt19937, _pickle

    core = getattr(np, "_core", None) or np.core
    reconstruct = core.multiarray._reconstruct
    return [
        _pickle.__randomstate_ctor, _pickle.__bit_generator_ctor, _mt19937.MT19937, np.random.RandomState,
        np.ndarray, np.dtype,
        reconstruct, (reconstruct, "numpy.core.multiarray._reconstruct"),
        (reconstruct, "numpy._core.multiarray._reconstruct"),
        *(type(np.dtype(t)) for t in (np.uint32, np.int64, np.float64)),
    ]


RANDOM_STATE_NAMES = {
    "numpy.random._pickle.__randomstate_ctor", "numpy.random._pickle.__bit_generator_ctor",
    "numpy.random._mt19937.MT19937", "numpy.ndarray", "numpy.dtype", "numpy.core.multiarray._reconstruct",
    "numpy._core.multiarray._reconstruct", "numpy.dtypes.UInt32DType", "numpy.dtypes.Int64DType",
    "numpy.dtypes.Float64DType",
}

# MotionBERT's train.py stores ``min_loss`` as a numpy float64 scalar: numpy's scalar constructor and the dtype.
NUMPY_SCALAR_NAMES = {"numpy._core.multiarray.scalar", "numpy.core.multiarray.scalar", "numpy.dtype",
                      "numpy.dtypes.Float64DType", "numpy.dtypes.Float32DType"}


def numpy_scalar_globals():
    """The numpy globals a pickled numpy float64 / float32 scalar needs."""
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"), np.dtype,
            type(np.dtype(np.float64)), type(np.dtype(np.float32))]
