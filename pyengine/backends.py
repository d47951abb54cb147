"""Backend names, the error for a backend that cannot run, access to the compiled extension, and the device
guard every kernel launch runs under."""
import contextlib
import threading

import torch

BACKENDS = ("auto", "reference", "triton", "cuda", "cpp")


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run this op or model here."""


def cpp_extension():
    """The compiled ``pyengine._C`` module, or a clear error saying how to build it."""
    try:
        from . import _C
    except ImportError as exc:
        raise BackendUnavailableError(
            "backend 'cpp' needs the compiled extension pyengine._C, which is not importable "
            f"({exc}); build it with `pip install --no-build-isolation -e .` (./setup.sh does)") from exc
    return _C


_guard = threading.local()


@contextlib.contextmanager
def device_guard(t: torch.Tensor):
    """Run a kernel launch with ``t``'s CUDA device current. Triton launches and ``pyengine._C``'s CUDA glue use
    the *current* device and its current stream, so without this a model on ``cuda:1`` would launch on
    ``cuda:0`` unless the caller had called ``torch.cuda.set_device``. On CPU it only records the device
    (``guarded_device``: how tests check that every launch is guarded)."""
    stack = _guard.__dict__.setdefault("stack", [])
    stack.append(t.device)
    try:
        if t.device.type == "cuda":
            with torch.cuda.device(t.device):
                yield
        else:
            yield
    finally:
        stack.pop()


def guarded_device():
    """The device of the innermost active ``device_guard`` on this thread, or None outside any."""
    stack = _guard.__dict__.get("stack")
    return stack[-1] if stack else None


def check_compiled_dtype(t: torch.Tensor, op: str, dtypes) -> None:
    """Refuse, on a GPU, a dtype for which no kernel variant is compile-checked for sm_90 (float64 mostly: the
    interpreter runs it on CPU for tests, but no fp64 variant of these kernels was ever compiled or checked)."""
    if t.device.type != "cpu" and t.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise BackendUnavailableError(f"{op}: the Triton kernel on {t.device.type} takes {names}, got {t.dtype}; "
                                      "use backend='reference' (or 'cpp' on CPU) for it")
