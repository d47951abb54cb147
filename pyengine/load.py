"""``pyengine.load``: a path, state_dict, checkpoint dict or nn.Module in; an eval-mode model out."""
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from . import arch as archs
from .backends import BACKENDS, BackendUnavailableError
from .checkpoint import Checkpoint, CheckpointError, normalize, read

# Backends that run whole models today. The kernel issues wire triton / cuda / cpp into the models; until then
# "auto" means "reference".
AVAILABLE_BACKENDS = ("reference",)


@dataclass
class LoadInfo:
    """What ``pyengine.load`` decided, attached to the returned model as ``model.pyengine``."""

    arch: str
    config: dict
    reason: str
    backend: str
    format: str
    source: str
    notes: list = field(default_factory=list)

    def __str__(self):
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        lines = [f"arch {self.arch} ({self.reason})", f"config: {cfg}", f"backend: {self.backend}",
                 f"source: {self.source} (format {self.format})"]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def check_keys(model, sd, arch, reason, config):
    """Compare ``sd`` with ``model``'s own keys and shapes; raise one error that names every problem."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    misshaped = sorted((k, list(expected[k].shape), list(sd[k].shape)) for k in set(expected) & set(sd)
                       if expected[k].shape != sd[k].shape)
    if not (missing or unexpected or misshaped):
        return
    parts = [f"checkpoint does not match arch {arch!r} ({reason}) with config "
             + ", ".join(f"{k}={v!r}" for k, v in config.items()) + ":"]
    if missing:
        parts.append(f"  missing keys ({len(missing)}): {missing}")
    if unexpected:
        parts.append(f"  unexpected keys ({len(unexpected)}): {unexpected}")
    for key, want, got in misshaped:
        parts.append(f"  mis-shaped key {key!r}: expected {want}, got {got}")
    raise CheckpointError("\n".join(parts))


def resolve_backend(backend):
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return AVAILABLE_BACKENDS[0]
    if backend not in AVAILABLE_BACKENDS:
        raise BackendUnavailableError(
            f"backend={backend!r} is not available in this version of pyengine: its kernels have not landed yet "
            f"(available: {AVAILABLE_BACKENDS}). Use backend='reference' or 'auto'.")
    return backend


def _checkpoint_of(obj):
    """Return ``(Checkpoint, arch of a pyengine instance or None, its config)``."""
    if isinstance(obj, (str, os.PathLike)):
        return read(obj), None, {}
    if isinstance(obj, nn.Module):
        own = getattr(type(obj), "arch", None)
        if own in archs.MODELS and isinstance(obj, archs.MODELS[own]):
            return Checkpoint(dict(obj.state_dict()), "module", type(obj).__name__), own, archs.config_of(obj)
        return normalize(dict(obj.state_dict()), source=type(obj).__name__), None, {}
    if isinstance(obj, dict):
        return normalize(obj, source="<dict>"), None, {}
    raise TypeError(f"obj: expected a checkpoint path, a state_dict, a checkpoint dict or an nn.Module, "
                    f"got {type(obj).__name__}")


def load(obj, *, arch=None, device=None, dtype=torch.float32, backend="auto", **config):
    """Build an eval-mode pyengine model from ``obj`` and load its weights strictly.

    obj:     a path (``.pth``, ``.pt``, ``.bin``, ``.safetensors``), a state_dict, a checkpoint dict
             (``model_pos`` / mmcv ``state_dict``), or an ``nn.Module`` (pyengine's own or any module whose
             state_dict has the published key names).
    arch:    one of ``pyengine.ARCHS``; inferred from the keys when None. TPC variants have their base model's
             keys: pass ``arch='tpc_mhformer'`` / ``'tpc_mixste'`` (or set ``token_num`` / ``layer_index``).
    device:  where the model lives; None means CUDA when available, else CPU. Inputs must be on that device.
    dtype:   the parameter dtype (default float32). Inputs of any float dtype are cast to it, and outputs are
             returned in the input's dtype.
    backend: "auto" | "reference" | "triton" | "cuda" | "cpp". Only "reference" exists today ("auto" picks it);
             asking for another raises ``BackendUnavailableError``.
    config:  hyperparameters by their published names (``frames``, ``channel``, ``token_num``, ``layer_index``,
             ``tie_break`` ...). Shape-determined ones are inferred and may be given only if they agree.

    Returns the model; ``model.pyengine`` (a ``LoadInfo``) says which architecture was assumed and why.
    """
    chosen_backend = resolve_backend(backend)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype: expected a floating torch.dtype (float32, bfloat16, float16), got {dtype!r}")
    ckpt, own_arch, own_config = _checkpoint_of(obj)
    if own_arch is not None:
        if arch is not None and arch != own_arch:
            raise ValueError(f"arch={arch!r} contradicts the module given, a pyengine {own_arch!r} model")
        arch, config = own_arch, {**own_config, **config}
    arch, kwargs, reason = archs.resolve(ckpt.state_dict, arch, config)
    model = archs.MODELS[arch](**kwargs)
    check_keys(model, ckpt.state_dict, arch, reason, kwargs)
    model.load_state_dict(ckpt.state_dict, strict=True)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model.to(device=device, dtype=dtype).eval()
    model.pyengine = LoadInfo(arch, kwargs, reason, chosen_backend, ckpt.format, ckpt.source, ckpt.notes)
    return model
