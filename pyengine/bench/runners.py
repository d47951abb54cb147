"""Rows: the callables to time, one per ``(impl, variant, dtype)``. A row that cannot run here raises ``Skip``
with the reason, never a stand-in."""
import copy
import os

import torch

from . import anchors
from .cases import ANCHOR_IMPLS, ANCHOR_ROWS, COMPILE_MODES, PYENGINE_BACKENDS, SHORT
from .skip import Skip


def row_ids(dtype, device):
    """Every row for one case as ``(impl, variant, dtype)``, in table order."""
    rows = [("eager", "fp32", torch.float32)]
    if dtype != torch.float32:
        rows.append(("eager", SHORT[dtype], dtype))
    rows += [("compile", mode, dtype) for mode in COMPILE_MODES]
    # pyengine at the chosen precision and, below it, in fp32 too (the fp32 kernels are checked and timed as well)
    rows += [("pyengine", b, d) for d in dict.fromkeys((dtype, torch.float32)) for b in PYENGINE_BACKENDS]
    if not str(device).startswith("cuda"):
        rows += list(ANCHOR_ROWS)  # OpenVINO / ONNX Runtime: what a CPU deployment would use instead
    return rows


def row_name(impl, variant, dtype):
    # eager's and the anchors' variant already is the precision (openvino-bf16, not openvino-bf16-bf16)
    plain = impl == "eager" or impl in ANCHOR_IMPLS
    return f"{impl}-{variant}" if plain else f"{impl}-{variant}-{SHORT[dtype]}"


_COMPILED = {}


def make_runner(model, impl, variant, dtype, device):
    """A callable ``f(x)`` for the row, on ``device`` at ``dtype``; raises ``Skip`` with the reason if the row
    cannot run here. ``model`` is the eager fp32 CPU model (left untouched). The anchor rows (OpenVINO, ONNX
    Runtime: bench/anchors.py) compute at their variant's precision and return fp32 outputs."""
    cuda = str(device).startswith("cuda")
    if impl == "eager":
        return copy.deepcopy(model).to(device=device, dtype=dtype)
    if impl == "compile":
        if not cuda and os.environ.get("PYENGINE_BENCH_COMPILE") != "1":
            raise Skip("torch.compile rows run on CUDA only by default (inductor's CPU build of these models "
                       "takes minutes on a 2-core box); set PYENGINE_BENCH_COMPILE=1 to run them")
        if variant == "reduce-overhead" and not cuda:
            raise Skip("torch.compile mode 'reduce-overhead' uses CUDA graphs: CUDA only")
        # One compiled module per (model, mode, dtype), reused across batches; dynamic=False specialises each
        # batch size (what a deployment with a fixed batch would do).
        key = (id(model), variant, dtype, str(device))
        if key not in _COMPILED:
            eager = copy.deepcopy(model).to(device=device, dtype=dtype)
            _COMPILED[key] = torch.compile(eager, mode=None if variant == "default" else variant, dynamic=False)
        return _COMPILED[key]
    if impl == "pyengine":
        from ..backends import BackendUnavailableError
        from ..load import load

        if variant in ("triton", "cuda") and not cuda:
            raise Skip(f"pyengine backend {variant!r} runs on CUDA only (Triton's CPU interpreter is not a "
                       f"benchmark)")
        if variant == "cpp" and cuda:
            raise Skip("pyengine backend 'cpp' is the CPU backend; this run is on CUDA")
        try:
            return load(model, backend=variant, dtype=dtype, device=device)
        except BackendUnavailableError as exc:
            raise Skip(f"pyengine backend {variant!r} unavailable: {exc}") from exc
    if impl in ANCHOR_IMPLS:
        return anchors.make_anchor(model, impl, variant, device)
    raise ValueError(f"impl: expected eager, compile, pyengine or one of {list(ANCHOR_IMPLS)}, got {impl!r}")


def warmup_calls(impl, variant):
    """Calls before timing: compile rows compile on the first call and CUDA graphs record on the third."""
    return 5 if impl == "compile" else 2
