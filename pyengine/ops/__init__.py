"""Registered pyengine ops (``torch.library.custom_op("pyengine::...")``), one op per file, each with the
Python wrapper that validates arguments and picks the implementation for a backend, and its eager reference."""
from .attention import attention
from .dwconv3x3 import dwconv3x3
from .gather_tokens import gather_tokens
from .layernorm import layernorm
from .ln_linear import ln_linear
from .onednn_linear import onednn_linear
from .susa import susa
from .tpc_select import tpc_select

__all__ = ["attention", "dwconv3x3", "gather_tokens", "layernorm", "ln_linear", "onednn_linear", "susa", "tpc_select"]
