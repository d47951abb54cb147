"""When a wrapper may call an op's implementation directly instead of going through the registered op.

A call through a ``torch.library.custom_op`` costs 30-100 us of Python dispatch (autograd wrapper, redispatch, and
for mutating ops argument re-binding and version bumps) -- as much as the whole kernel at the CPU sizes of the
SUSA ops. So in a *plain eager* call the wrappers of those ops run the same implementation directly; in every
other situation they call the registered op, which is what torch.compile / torch.export trace, ``opcheck``
checks, dispatch and torch-function modes see, and the profiler records. Both paths run the same code.
"""
import torch

# torch internals that tell a plain eager call apart; if this torch lacks one, every call goes through the op.
_PROBES = ("_is_tracing", "_len_torch_dispatch_stack", "_is_torch_function_mode_enabled",
           "_are_functorch_transforms_active")
_AVAILABLE = all(hasattr(torch._C, name) for name in _PROBES) and hasattr(torch.autograd, "_profiler_enabled")


def direct_call_ok(x: torch.Tensor) -> bool:
    """True for a plain eager call: x a plain CPU-or-CUDA ``torch.Tensor`` that needs no gradient, and no
    torch.compile / export / jit tracing, dispatch or torch-function mode, functorch transform or profiler."""
    return (_AVAILABLE and type(x) is torch.Tensor and not torch.compiler.is_compiling()
            and not (x.requires_grad and torch.is_grad_enabled()) and not torch._C._is_tracing()
            and torch._C._len_torch_dispatch_stack() == 0 and not torch._C._is_torch_function_mode_enabled()
            and not torch._C._are_functorch_transforms_active() and not torch.autograd._profiler_enabled())
