"""Reading checkpoints safely and normalising them to a bare state_dict with the published key names.

Formats (SPEC.md §6): a bare state_dict (MHFormer, HoT); ``{'model_pos': state_dict, ...}`` with the DataParallel
``module.`` prefix (MixSTE, MotionBERT); mmcv ``{'meta', 'state_dict', 'optimizer'}`` with ``backbone.`` prefixes
(X-HRNet); MHFormer's legacy (pre-May 2022) key names; safetensors files.

Pickles are only ever read with ``torch.load(weights_only=True)``. Real MixSTE checkpoints also hold a pickled
numpy ``RandomState`` (``random_state``) which that refuses; for that case, and only when the file's non-tensor
globals are exactly numpy's RandomState machinery, the load is retried with those few numpy globals allow-listed
(no other pickled code can run), and the fact is recorded in ``notes``. The allow-lists live in
``pyengine.safe_pickle``, beside the one for keypoint files.
"""
import os
import pickle
import re
from dataclasses import dataclass, field

import torch

from . import motionbert_ckpt
from .errors import CheckpointError  # noqa: F401 (pyengine.checkpoint.CheckpointError, as always)
from .safe_pickle import NUMPY_SCALAR_NAMES, RANDOM_STATE_NAMES, numpy_scalar_globals, random_state_globals


SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")
# Errors of torch.load / zipfile / pickle on an empty, truncated or foreign file (an empty .pth is a bare EOFError).
_READ_ERRORS = (EOFError, pickle.UnpicklingError, RuntimeError, ValueError, OSError, KeyError, IndexError,
                TypeError, AttributeError, UnicodeDecodeError)


@dataclass
class Checkpoint:
    state_dict: dict
    format: str
    source: str
    notes: list = field(default_factory=list)


def read_file(path):
    """Read a checkpoint file into a Python object without executing pickled code. Returns ``(obj, notes)``.

    A missing file is ``FileNotFoundError``; a directory, an empty, truncated, unreadable or non-checkpoint file is
    ``CheckpointError`` naming the file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r}: is a directory, expected a checkpoint file "
                              f"({', '.join(SUFFIXES)})")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint: no such file: {path}")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUFFIXES:
        raise CheckpointError(f"checkpoint: expected a file ending in one of {SUFFIXES}, got {path!r}")
    try:
        size = os.path.getsize(path)
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path!r}: cannot be opened ({exc.strerror or exc})") from None
    if size == 0:
        raise CheckpointError(f"checkpoint {path!r}: the file is empty (0 bytes); an interrupted download or save?")
    try:
        return _read_file(path, suffix)
    except CheckpointError:
        raise
    except _READ_ERRORS as exc:  # what torch.load / safetensors raise on a truncated or foreign file
        raise CheckpointError(f"checkpoint {path!r} ({size} bytes): cannot be read as a {suffix} checkpoint, "
                              f"truncated or not a checkpoint ({type(exc).__name__}: {exc})") from exc


def _read_file(path, suffix):
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(path, device="cpu"), []
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"checkpoint: {path} is not a valid safetensors file: {exc}") from exc
    try:
        return torch.load(path, map_location="cpu", weights_only=True), []
    except pickle.UnpicklingError as exc:
        try:
            unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except _READ_ERRORS:
            unsafe = set()
        if not unsafe:  # not even its globals can be listed: not a (complete) PyTorch file
            raise CheckpointError(f"checkpoint {path!r}: not a readable PyTorch file, truncated or of another "
                                  f"format ({exc})") from exc
        if unsafe <= NUMPY_SCALAR_NAMES:
            with torch.serialization.safe_globals(numpy_scalar_globals()):
                obj = torch.load(path, map_location="cpu", weights_only=True)
            return obj, ["the file holds pickled numpy scalars (MotionBERT's 'min_loss'); it was read with only "
                         "numpy's scalar constructor and dtypes allow-listed"]
        if not unsafe <= RANDOM_STATE_NAMES:
            raise CheckpointError(
                f"checkpoint: refused {path}: it is not a plain tensor dict; torch.load(weights_only=True) "
                f"rejects the pickled objects {sorted(unsafe)}. pyengine never executes "
                f"pickled code; re-save the weights as a state_dict or a .safetensors file.") from exc
        with torch.serialization.safe_globals(random_state_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
        what = ("a pickled numpy RandomState (MixSTE's 'random_state')" if any("randomstate" in n.lower()
                for n in unsafe) else "pickled numpy arrays (e.g. MMPose's 'meta')")
        return obj, [f"the file holds {what}; it was read with only numpy's array / RandomState globals "
                     "allow-listed (no pickled code runs) and is not used"]
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path!r}: cannot be read as a PyTorch file, truncated or of another "
                              f"format ({exc})") from exc


def _is_tensor_dict(obj):
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip_prefix(sd, prefix):
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}, True
    return sd, False


# MHFormer before May 2022 (SPEC.md §6): old name -> published name, applied to dotted key paths.
_LEGACY_MHFORMER = [
    (re.compile(r"^trans_auto_(\d)\.Temporal_pos_embed$"), r"Transformer_encoder_\1.pos_embed"),
    (re.compile(r"^trans_auto_(\d)\.Temporal_norm\."), r"Transformer_encoder_\1.norm."),
    (re.compile(r"^trans_auto_(\d)\."), r"Transformer_encoder_\1."),
    (re.compile(r"^Transformer\.Temporal_pos_embed_(\d)$"), r"Transformer_hypothesis.pos_embed_\1"),
    (re.compile(r"^Transformer\.Temporal_norm\."), "Transformer_hypothesis.norm."),
    (re.compile(r"^Transformer\.blocks\."), "Transformer_hypothesis.SHR_blocks."),
    (re.compile(r"^Transformer\.part_blocks\."), "Transformer_hypothesis.CHI_blocks."),
    (re.compile(r"^Transformer\."), "Transformer_hypothesis."),
    (re.compile(r"^fcn\."), "regression."),
]


_NEW_MHFORMER = re.compile(r"^(Transformer_encoder_\d|Transformer_hypothesis|embedding_\d|regression)\.")


def _rename_legacy_mhformer(sd, source="<object>"):
    """SPEC.md §6's whole old -> new mapping; a checkpoint that mixes old and new names is an error."""
    new_names = sorted(k for k in sd if _NEW_MHFORMER.match(k))
    if new_names:
        old = sorted(k for k in sd if k.startswith(("trans_auto_", "Transformer.", "fcn.")) or
                     re.match(r"^encoder_\d\.", k))
        raise CheckpointError(f"checkpoint {source}: mixes MHFormer's legacy (pre-May 2022) key names (e.g. "
                              f"{old[:3]}) with the current ones (e.g. {new_names[:3]}); a checkpoint holds one "
                              f"or the other")
    # encoder_k was nn.Sequential(Conv1d) (so encoder_k.0 = embedding_k) or, at F <= 27, the
    # Conv1d -> BatchNorm -> ... sequence whose indices match embedding_k's.
    bn_embedding = any(re.match(r"^encoder_\d\.1\.", k) for k in sd)
    out = {}
    for key, value in sd.items():
        new = key
        if bn_embedding:
            new = re.sub(r"^encoder_(\d)\.", r"embedding_\1.", new)
        else:
            new = re.sub(r"^encoder_(\d)\.0\.", r"embedding_\1.", new)
        for pattern, repl in _LEGACY_MHFORMER:
            new, n = pattern.subn(repl, new)
            if n:
                break
        out[new] = value
    return out


def normalize(obj, source="<object>"):
    """Turn a loaded checkpoint object into a bare state_dict with the published key names."""
    notes = []
    if isinstance(obj, dict) and "model_pos" in obj and isinstance(obj["model_pos"], dict):
        sd, fmt = obj["model_pos"], "model_pos"
        others = sorted(k for k in obj if k != "model_pos")
        if others:
            notes.append(f"ignored the training entries {others} beside 'model_pos'")
    elif isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        sd, fmt = obj["state_dict"], "mmcv"
    elif isinstance(obj, dict) and obj and all(isinstance(k, str) for k in obj):
        sd, fmt = obj, "state_dict"
    else:
        kind = type(obj).__name__
        raise CheckpointError(f"checkpoint {source}: expected a state_dict (a dict of tensors) or a dict holding "
                              f"one under 'model_pos' or 'state_dict', got {kind}"
                              + (f" with keys {sorted(map(str, obj))[:10]}" if isinstance(obj, dict) else ""))
    bad = sorted(k for k, v in sd.items() if not isinstance(v, torch.Tensor))
    if bad or not sd:
        raise CheckpointError(f"checkpoint {source}: the state_dict must map names to tensors; "
                              + (f"non-tensor entries: {bad[:10]}" if bad else "it is empty"))
    sd, stripped = _strip_prefix(dict(sd), "module.")
    if stripped:
        notes.append("stripped the DataParallel 'module.' prefix")
    if motionbert_ckpt.is_mmpose(sd):  # MMPose's DSTFormer backbone + MotionRegressionHead (SPEC.md §7)
        sd, note = motionbert_ckpt.from_mmpose(sd)
        fmt = "mmpose-motionbert"
        notes.append(note + "; only 'state_dict' is used (the file's 'meta' is not)")
    elif fmt == "mmcv":
        heads = sorted({k.split(".")[0] for k in sd if not k.startswith("backbone.")})
        if heads and any(k.startswith("backbone.") for k in sd):
            raise CheckpointError(
                f"checkpoint {source}: an mmcv checkpoint of a whole network (backbone plus {heads}); pyengine "
                f"loads SUSA modules and X-shuffle units, not whole X-HRNet models. Extract the module's own "
                f"keys (e.g. 'backbone.stage1.0.layers.0.') into a state_dict and load that.")
        sd, stripped = _strip_prefix(sd, "backbone.")
        if stripped:
            notes.append("stripped the mmcv 'backbone.' prefix")
    if any(k.startswith(("trans_auto_", "Transformer.", "fcn.")) or re.match(r"^encoder_\d\.", k) for k in sd):
        sd = _rename_legacy_mhformer(sd, source)
        fmt += "+legacy-mhformer"
        notes.append("renamed MHFormer's legacy (pre-May 2022) keys to the published names")
    return Checkpoint(sd, fmt, source, notes)


def read(path):
    obj, notes = read_file(path)
    ckpt = normalize(obj, source=os.fspath(path))
    ckpt.notes[:0] = notes
    return ckpt
