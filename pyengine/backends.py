"""Backend names, the error for a backend that cannot run, and access to the compiled extension."""
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
