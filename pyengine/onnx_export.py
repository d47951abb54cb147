"""``pyengine.export(model, path)`` (this module: pyengine.onnx_export): a verified ONNX file of a lifter, for deployment elsewhere (ONNX Runtime,
ONNX Runtime Web, TensorRT).

What is exported is the model's **eager reference** with the model's weights: pyengine's fused kernels are
registered ``pyengine::*`` ops that ONNX has no kernels for, and ONNX Runtime fuses the reference's standard ops
itself. The file is written by ``torch.onnx.export(..., dynamo=True)`` to a temporary name, then **checked**: ONNX
Runtime runs it on the example input and, when the batch is dynamic, on a second batch size, and its output is
compared with an fp64 eager reference by ``pyengine verify``'s rule (tolerance = max(2 x eager fp32's own
deviation, 1e-4)). Only a file that passes is moved to ``path``; on any failure nothing is left at ``path`` and
:class:`ExportError` says why (the op that cannot be exported, or the deviation).

TPC / HoT models export with their DPC-kNN selection inside the graph (the selection is the reference's
deterministic rule, so ONNX Runtime picks the same frames); the output is the published call's: ``(out, index)``
for TPC-MHFormer / TPC-MixSTE, ``out`` for HoT-MixSTE.
"""
import copy
import dataclasses
import os
import tempfile
import warnings

import torch

from . import arch as archs
from .twin import eager_twin


class ExportError(RuntimeError):
    """The model cannot be exported, or the exported file does not reproduce the eager reference."""


@dataclasses.dataclass
class ExportReport:
    path: str
    arch: str
    inputs: list
    outputs: list
    deviation: float
    tolerance: float
    batches_checked: list
    opset: int

    def __str__(self):
        return (f"wrote {self.path}: {self.arch}, inputs {self.inputs}, outputs {self.outputs}, opset {self.opset}; "
                f"ONNX Runtime vs fp64 eager: deviation {self.deviation:.2e} <= tolerance {self.tolerance:.1e} "
                f"(batches {self.batches_checked})")


def reference_of(model):
    """``(arch, eager fp32 CPU reference with model's weights)`` for a pyengine model or a reference module."""
    info = getattr(model, "pyengine", None)
    if info is not None:
        return info.arch, eager_twin(model, torch.float32, "cpu")
    arch = getattr(type(model), "arch", None)
    if arch not in archs.MODELS or type(model) is not archs.MODELS[arch]:
        raise ExportError(f"model: expected a model returned by pyengine.load or one of pyengine.models' "
                          f"reference classes, got {type(model).__name__} (load it with pyengine.load first)")
    return arch, copy.deepcopy(model).float().cpu().eval()


def example_input(ref, arch, batch=2):
    """The shipped walking sample's windows for pose lifters; a random NCHW feature map for the SUSA modules."""
    if hasattr(ref, "frames"):
        from .verify import sample_input
        return sample_input(arch, ref.frames, getattr(ref, "n_joints", 17), batch)
    channels = getattr(ref, "channels", None) or getattr(ref, "in_channels", None)
    return torch.randn(batch, channels, 64, 48, generator=torch.Generator().manual_seed(0))


def _require_onnx():
    missing = []
    for name in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"exporting to ONNX needs the packages {missing}: pip install {' '.join(missing)}")


def _summary(exc):
    text = str(exc)
    i = text.find("Exception summary")
    text = text[i + len("Exception summary"):] if i >= 0 else text
    lines = [line.strip() for line in text.splitlines() if line.strip() and "Refer to the full" not in line]
    return " ".join(lines)[:600]


def _flat(out):
    return list(out) if isinstance(out, (tuple, list)) else [out]


def export(model, path, *, example=None, batch=2, dynamic_batch=True, opset=18, overwrite=False) -> ExportReport:
    """Write ``model`` (see the module docstring) to the ONNX file ``path`` and verify it; returns an
    :class:`ExportReport`. ``example``: an input tensor (default: the shipped sample, ``batch`` windows).
    ``dynamic_batch``: the batch axis stays symbolic (checked at two batch sizes). ``overwrite``: replace an
    existing ``path`` (otherwise that is an error)."""
    _require_onnx()
    import numpy as np
    import onnxruntime as ort

    path = os.fspath(path)
    if not path.endswith(".onnx"):
        raise ExportError(f"path: expected a file name ending in .onnx, got {path!r}")
    if os.path.isdir(path):
        raise ExportError(f"path: {path!r} is a directory")
    if os.path.exists(path) and not overwrite:
        raise ExportError(f"path: {path!r} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ExportError(f"path: the folder {folder!r} does not exist")
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ExportError(f"batch: expected an integer >= 1, got {batch!r}")

    arch, ref = reference_of(model)
    x = example_input(ref, arch, batch) if example is None else example.detach().float().cpu()
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=4096)}} if dynamic_batch else None
    with torch.no_grad():
        n_out = len(_flat(ref(x)))
    output_names = ["out", "index"][:n_out] if n_out <= 2 else None
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=folder, prefix=".pyengine-export-")
    os.close(fd)
    try:
        import logging
        quiet = logging.getLogger("torch.onnx._internal.exporter._registration")  # "torchvision is not installed"
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(ref, (x,), tmp, input_names=["x"], output_names=output_names,
                                  dynamic_shapes=dynamic, opset_version=opset,
                                  dynamo=True, verbose=False, external_data=False)
            except Exception as exc:  # noqa: BLE001 - the exporter's own error, summarised
                raise ExportError(f"{arch}: torch.onnx.export failed: {_summary(exc)}") from None
            finally:
                quiet.setLevel(level)
        sess = ort.InferenceSession(tmp, providers=["CPUExecutionProvider"])
        inputs = [f"{i.name}{i.shape}" for i in sess.get_inputs()]
        outputs = [f"{o.name}{o.shape}" for o in sess.get_outputs()]
        xs = [x] + ([torch.cat([x, x[:1]])] if dynamic_batch else [])  # a second batch size
        worst, tol_used = 0.0, 0.0
        from .testing import rel_error
        from .twin import EAGER_FACTOR, TOLERANCE
        ref64 = copy.deepcopy(ref).double()
        for xi in xs:
            got = sess.run(None, {sess.get_inputs()[0].name: xi.numpy()})
            with torch.no_grad():
                want, base = _flat(ref64(xi.double())), _flat(ref(xi))
            if len(got) != len(want):
                raise ExportError(f"{arch}: the ONNX graph has {len(got)} outputs, the model {len(want)}")
            for g, w, b in zip(got, want, base):
                g = torch.from_numpy(np.asarray(g))
                if not w.is_floating_point():  # TPC indices: the same frames
                    if not torch.equal(g.long(), w.long()):
                        raise ExportError(f"{arch}: ONNX Runtime selected other frames than the eager reference")
                    continue
                tol = max(TOLERANCE[torch.float32], EAGER_FACTOR * rel_error(b, w))
                err = rel_error(g, w)
                if not err <= tol:
                    raise ExportError(f"{arch}: ONNX Runtime deviates from the fp64 eager reference by {err:.3e} "
                                      f"(relative), over the tolerance {tol:.1e}; the file was not written")
                worst, tol_used = max(worst, err), max(tol_used, tol)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return ExportReport(path, arch, inputs, outputs, worst, tol_used, [int(t.shape[0]) for t in xs], opset)
