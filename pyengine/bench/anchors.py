"""The CPU anchor rows (issue 19): OpenVINO (fp32 and bf16 inference precision) and ONNX Runtime (fp32), what a
CPU deployment would run instead of pyengine, timed beside eager / compile / pyengine (docs/benchmarks.md).

Both are optional (``pip install openvino onnxruntime``); a row whose package is missing, or whose conversion
fails, is skipped with the reason. Each anchor is a callable ``f(x: torch.Tensor)`` that feeds ``x`` as fp32
numpy and returns torch tensors (fp32 poses; TPC models also their int64 index, as the eager model does), so the
rows compare with eager fp32 whatever their compute precision. The converted models have a dynamic batch axis,
so one conversion per model serves every batch and both OpenVINO precisions.
"""
import importlib
import os
import tempfile
import warnings

import torch

from .cases import make_inputs
from .skip import Skip

_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}  # row variant -> OpenVINO's INFERENCE_PRECISION_HINT
_NAMES = {"openvino": "OpenVINO", "onnxruntime": "ONNX Runtime"}
# Caches keyed by id(model); the value keeps the model alive so its id is not reused by another model.
_OV_MODELS = {}  # id -> (model, openvino.Model)
_OV_COMPILED = {}  # (id, variant) -> (model, openvino.CompiledModel)
_ORT_SESSIONS = {}  # id -> (model, onnxruntime.InferenceSession)


class AnchorRunner:
    """``f(x: torch.Tensor)`` over an engine that maps a list of fp32 numpy inputs to a list of numpy outputs:
    returns one torch tensor, or a tuple when the model has several outputs (TPC: output and index)."""

    def __init__(self, run, name):
        self._run, self.name = run, name

    def __call__(self, x):
        outs = [torch.from_numpy(o) for o in self._run(x.detach().to(device="cpu", dtype=torch.float32).numpy())]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def __repr__(self):
        return f"AnchorRunner({self.name})"


def _first_line(exc):
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _require(package):
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise Skip(f"{package} is not installed: pip install {package}") from exc


def _example(model):
    # Batch 2, not 1: torch.export (behind the ONNX export) specialises a batch of 1 to a constant, and the
    # exported file then refuses every other batch.
    return make_inputs(model, 2, torch.float32, "cpu", copies=1)[0]


def _openvino(model, variant):
    ov = _require("openvino")
    if variant not in _OV_PRECISION:
        raise ValueError(f"variant: expected one of {sorted(_OV_PRECISION)} for openvino, got {variant!r}")
    core = ov.Core()
    if variant == "bf16":
        caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if "BF16" not in caps:
            raise Skip(f"this CPU has no bf16 support (OpenVINO's OPTIMIZATION_CAPABILITIES: {list(caps)})")
    key = id(model)
    if key not in _OV_MODELS:
        try:
            with warnings.catch_warnings():
                # TracerWarnings from the models' input checks: constant for the traced shapes, not an error
                warnings.simplefilter("ignore")
                _OV_MODELS[key] = (model, ov.convert_model(model, example_input=_example(model)))
        except Exception as exc:  # noqa: BLE001 - the converter raises many kinds; the row records why
            raise Skip(f"openvino.convert_model failed: {_first_line(exc)}") from exc
    if (key, variant) not in _OV_COMPILED:
        # The same thread count as the torch rows, so the comparison is of the engines, not of the core counts.
        config = {"INFERENCE_PRECISION_HINT": _OV_PRECISION[variant],
                  "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        try:
            compiled = core.compile_model(_OV_MODELS[key][1], "CPU", config)
        except Exception as exc:  # noqa: BLE001 - as above
            raise Skip(f"openvino compile_model ({variant}) failed: {_first_line(exc)}") from exc
        _OV_COMPILED[key, variant] = (model, compiled)
    compiled = _OV_COMPILED[key, variant][1]
    return AnchorRunner(lambda a: list(compiled(a).to_tuple()), f"openvino-{variant}")


def _onnxruntime(model, variant):
    ort = _require("onnxruntime")
    if variant != "fp32":
        raise ValueError(f"variant: expected 'fp32' for onnxruntime, got {variant!r}")
    from ..onnx_export import export

    key = id(model)
    if key not in _ORT_SESSIONS:
        with tempfile.TemporaryDirectory(prefix="pyengine-bench-") as folder:
            path = os.path.join(folder, "model.onnx")
            try:
                # pyengine's checked export (what `pyengine export` writes): dynamic batch, verified with ONNX
                # Runtime against fp64 eager before it is used here.
                export(model, path, example=_example(model), batch=2)
            except Exception as exc:  # noqa: BLE001 - ExportError or the exporter's own; the row records why
                raise Skip(f"pyengine.export to ONNX failed: {_first_line(exc)}") from exc
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()  # as the torch rows (see _openvino)
            # No busy-waiting after a run: ORT's idle workers would spin on the cores the next (interleaved) row
            # needs, and bill their wait to it.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            # the session holds the whole model in memory (no external data), so the folder may go
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        _ORT_SESSIONS[key] = (model, session)
    session = _ORT_SESSIONS[key][1]
    name = session.get_inputs()[0].name
    return AnchorRunner(lambda a: session.run(None, {name: a}), "onnxruntime-fp32")


def make_anchor(model, impl, variant, device):
    """The anchor row ``impl`` (``openvino`` / ``onnxruntime``) at ``variant`` (its compute precision) for the
    eager fp32 CPU ``model``; raises ``Skip`` on CUDA, without the package, or when conversion fails."""
    if impl not in _NAMES:
        raise ValueError(f"impl: expected one of {sorted(_NAMES)}, got {impl!r}")
    if str(device).startswith("cuda"):
        raise Skip(f"{_NAMES[impl]} rows are CPU anchors: this run is on CUDA")
    return _openvino(model, variant) if impl == "openvino" else _onnxruntime(model, variant)
