"""Backend names, the error for a backend that cannot run, what ``backend="auto"`` means for a single op wrapper,
access to the compiled extension, the device guard every kernel launch runs under, and when a forward may take
eager-inference shortcuts (in-place writes, measured choices)."""
import contextlib
import os
import threading

import torch

# The one definition of the backend names (pyengine.load, dispatch, the drop-in modules and the op wrappers read it).
BACKENDS = ("auto", "reference", "triton", "cuda", "cpp")

# The implementations each op wrapper in pyengine/ops/ runs (its ``backend=`` values besides "auto"), in the order
# ``backend="auto"`` tries them for a direct call of the wrapper: the first that runs on x's device. A whole model's
# kernels (including ATen's dense kernels, which the wrappers do not run) come from ``pyengine.dispatch.TABLE``.
OP_IMPLS = {
    "ln_linear": ("triton", "reference"),
    "layernorm": ("triton", "reference"),
    "attention": ("triton", "cpp", "reference"),  # triton first: under the interpreter (tests) it stays the default
    "gather_tokens": ("triton", "reference"),
    "tpc_select": ("cpp", "triton", "cuda", "reference"),
    "susa": ("cpp", "triton", "cuda", "reference"),
    "dwconv3x3": ("cpp", "reference"),
    "onednn_linear": ("onednn", "reference"),
}


def tracing() -> bool:
    """torch.compile or torch.export is tracing: nothing can be timed, and out= / in-place shortcuts are not taken."""
    return torch.compiler.is_compiling() or torch.compiler.is_exporting()


def eager_inference(*tensors) -> bool:
    """Nothing of ``tensors`` (None allowed) needs a gradient and nothing traces: a forward may write its results
    into buffers in place (out= ops have no derivative, and autograd would see the overwritten inputs)."""
    graded = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
    return not graded and not tracing()


def _runs_on(impl: str, device_type: str) -> bool:
    if impl in ("cpp", "onednn"):  # pyengine's C++ kernels, oneDNN's CPU inner product (ops/onednn_linear.py)
        return device_type == "cpu"
    if impl == "triton":
        return device_type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1"
    if impl == "cuda":
        return device_type == "cuda"
    return True  # reference: eager torch, any device


def op_backend(op: str, backend: str, x: torch.Tensor) -> str:
    """The implementation a direct call of op wrapper ``op`` runs for ``backend``: ``backend`` itself unless it is
    ``"auto"``, which picks the first of ``OP_IMPLS[op]`` that runs on x's device (pyengine's C++ kernel on CPU
    where the op has one, else Triton on CUDA -- or on CPU under ``TRITON_INTERPRET=1`` -- else the reference).
    On any other device (meta, ...) it names the op's first implementation, whose wrapper then says why it cannot
    run there (no silent fallback to the reference)."""
    if backend != "auto":
        return backend
    dev = x.device.type if isinstance(x, torch.Tensor) else "cpu"
    if dev not in ("cpu", "cuda"):
        return OP_IMPLS[op][0]
    return next(impl for impl in OP_IMPLS[op] if _runs_on(impl, dev))


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
