"""Registered pyengine ops (``torch.library.custom_op("pyengine::...")``), one op per file, each with the
Python wrapper that validates arguments and picks the implementation for a backend."""
from .tpc_select import tpc_select

__all__ = ["tpc_select"]
