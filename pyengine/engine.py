"""The engine surface: fused model classes per architecture, ``report()``, ``swap`` / ``revert`` of recognised
submodules inside any model, and first-call validation against the eager reference."""

import torch
from torch import nn

from . import arch as archs
from . import dispatch
from .cuda_graphs import GraphedForward, enable_cuda_graphs, graph_status  # noqa: F401 (latency mode lives there)
from .models import layers as ref_layers
from .models import mhformer as ref_mhformer
from .nn import layers as fused_layers
from .nn import mhformer as fused_mhformer
from .nn import mixste as fused_mixste
from .nn import motionbert as fused_motionbert
from .nn._common import Fused
from .nn.report import Report, ReportRow, _device_of, report  # noqa: F401 (pyengine.report lives beside the fused modules)

class _FusedTable(dict):
    """``FUSED[arch]``: the fused class of every registered architecture that has one (``pyengine.arch.SPECS``),
    read live so that an architecture registered later (a test's toy) is seen."""

    def _live(self):
        return {n: s.fused_class() for n, s in archs.SPECS.items() if s.fused is not None}

    def __getitem__(self, arch):
        return self._live()[arch]

    def __contains__(self, arch):
        return arch in archs.SPECS and archs.SPECS[arch].fused is not None

    def __iter__(self):
        return iter(self._live())

    def __len__(self):
        return len(self._live())

    def keys(self):
        return self._live().keys()

    def items(self):
        return self._live().items()

    def values(self):
        return self._live().values()


# Architectures with a fused implementation.
FUSED = _FusedTable()


def drop_ins():
    """reference class -> fused class, for the registered architectures whose fused class is built around a
    reference module by ``from_reference`` (sharing its parameters); read live from ``pyengine.arch.SPECS``."""
    out = {}
    for spec in archs.SPECS.values():
        cls = spec.fused_class()
        if cls is not None and hasattr(cls, "from_reference"):
            out[spec.reference] = cls
    return out


def set_backend(model, backend, allow_tf32=False):
    """Set the backend of every fused module in ``model``."""
    for m in model.modules():
        if isinstance(m, Fused):
            m.backend, m.allow_tf32 = backend, allow_tf32
            m.__dict__["_ops_cache"] = {}
    return model

# ---------------------------------------------------------------------------------------------------------------
# swap / revert: replace recognised submodules of any model (pyengine's references or a copy of the published
# code with other class names) by fused modules that share the very same Parameter objects.

def _share(new: nn.Module, orig: nn.Module):
    for mod_name, mod in new.named_modules():
        target = orig.get_submodule(mod_name)
        for pname in list(mod._parameters):
            mod._parameters[pname] = target._parameters[pname]
        for bname in list(mod._buffers):
            mod._buffers[bname] = target._buffers[bname]
    return new


def _heads(module, what):
    h = getattr(module, "num_heads", None)
    if not isinstance(h, int):
        raise ValueError(f"swap: {what} {type(module).__name__} has no integer attribute num_heads (the head count "
                         "cannot be read off the weights); give it one or load the weights with pyengine.load")
    return h


def _candidates(module):
    """Fused modules that ``module`` could be, from its parameter shapes (heads from ``num_heads``)."""
    sd = module.state_dict()
    keys = set(sd)
    if {"attn_1.qkv.weight", "norm2.weight", "mlp.fc1.weight"} <= keys:
        C = sd["attn_1.qkv.weight"].shape[1]
        yield lambda: fused_mhformer.SHRBlock(C, _heads(module.attn_1, "SHR block attention"),
                                             sd["mlp.fc1.weight"].shape[0])
    if {"attn_1.linear_q.weight", "norm3_11.weight", "mlp.fc1.weight"} <= keys:
        C = sd["attn_1.linear_q.weight"].shape[1]
        yield lambda: fused_mhformer.CHIBlock(C, _heads(module.attn_1, "CHI block attention"),
                                             sd["mlp.fc1.weight"].shape[0])
    if {"pos_embed", "blocks.0.attn.qkv.weight", "norm.weight"} <= keys:
        depth = len({k.split(".")[1] for k in keys if k.startswith("blocks.")})
        T, Fw = sd["pos_embed"].shape[1:]
        yield lambda: fused_mhformer.MHGEncoder(depth, Fw, sd["blocks.0.mlp.fc1.weight"].shape[0],
                                               _heads(module.blocks[0].attn, "MHG attention"), T)
    if {"norm1.weight", "attn.qkv.weight", "norm2.weight", "mlp.fc1.weight"} <= keys:
        C = sd["attn.qkv.weight"].shape[1]
        yield lambda: fused_layers.Block(C, _heads(module.attn, "block attention"), sd["mlp.fc1.weight"].shape[0],
                                         eps=module.norm1.eps)
    if {"linear_q.weight", "linear_k.weight", "linear_v.weight", "proj.weight"} <= keys and len(keys) <= 8:
        yield lambda: fused_layers.CrossAttention(sd["linear_q.weight"].shape[1], _heads(module, "cross attention"),
                                                  qkv_bias="linear_q.bias" in keys)


def _recognise(module):
    """A fused module with exactly ``module``'s parameter names and shapes, or None."""
    if isinstance(module, Fused):
        return None
    fused_cls = drop_ins().get(type(module))
    if fused_cls is not None:  # a registered reference class (the SUSA family): the drop-in shares its parameters
        return fused_cls.from_reference(module)
    sd = module.state_dict()
    for build in _candidates(module):
        new = build()
        nsd = new.state_dict()
        if set(nsd) == set(sd) and all(nsd[k].shape == sd[k].shape for k in sd):
            return _share(new, module).to(next(iter(sd.values())).device)
    return None


def swap(module: nn.Module, backend: str = "auto", allow_tf32: bool = False) -> list:
    """Replace, in place, every recognised submodule of ``module`` (SHR / CHI blocks, MHG encoders, attention
    blocks, cross-attentions — pyengine's reference classes or any class with the published structure) by its
    fused drop-in, sharing the same Parameter objects. Returns the swapped names; ``revert`` undoes it."""
    device = _device_of(module)
    dispatch.check_backend(backend, device)
    swapped = []

    def visit(parent, prefix):
        for name, child in list(parent.named_children()):
            new = _recognise(child)
            if new is None:
                visit(child, f"{prefix}{name}.")
                continue
            set_backend(new, backend, allow_tf32)
            new.train(child.training)
            parent.__dict__.setdefault("_pyengine_swapped", {})[name] = child
            parent._modules[name] = new
            swapped.append(prefix + name)

    visit(module, "")
    return swapped


def revert(module: nn.Module) -> list:
    """Put back every submodule ``swap`` replaced (the original objects, untouched). Returns their names."""
    restored = []
    for name, parent in list(module.named_modules()):
        saved = parent.__dict__.pop("_pyengine_swapped", {})
        for child_name, orig in saved.items():
            parent._modules[child_name] = orig
            restored.append(f"{name}.{child_name}" if name else child_name)
    return restored


# ---------------------------------------------------------------------------------------------------------------
# validate=True: the eager reference runs beside the engine on the first call.

class ValidationError(RuntimeError):
    """The engine's output deviates from the eager reference by more than the dtype's tolerance."""


def _run(model, arch, x, index):
    kw = {}
    if index is not None:
        kw["index"] = index
    if archs.SPECS[arch].returns_index_on_request:
        kw["return_index"] = True
    out = model(x, **kw)
    return out if isinstance(out, tuple) else (out, None)


def validate_once(model, arch, config):
    """Register a hook that, on the first call, compares ``model`` with an fp64 eager reference and with the
    eager reference at the model's precision; raises ``ValidationError`` over tolerance (see ``verify``)."""
    from .testing import rel_error
    from .twin import EAGER_FACTOR, TOLERANCE, eager_twin

    def hook(mod, args, kwargs, output):
        handle.remove()
        x = args[0] if args else kwargs["x"]
        out, index = output if isinstance(output, tuple) else (output, None)
        dtype = next(mod.parameters()).dtype

        with torch.no_grad():
            want, _ = _run(eager_twin(mod, torch.float64, x.device), arch, x.double(), index)
            base, _ = _run(eager_twin(mod, dtype, x.device), arch, x, index)
        tol = max(TOLERANCE[dtype], EAGER_FACTOR * rel_error(base, want))
        err = rel_error(out, want)
        mod.pyengine.validation = {"deviation": err, "tolerance": tol}
        if not err <= tol:
            raise ValidationError(
                f"validate=True: {arch} on backend {mod.pyengine.backend!r} deviates from the fp64 eager reference "
                f"by {err:.3e} (relative), over the {str(dtype).replace('torch.', '')} tolerance {tol:.1e} "
                f"(= max({EAGER_FACTOR:g} x eager's own {str(dtype).replace('torch.', '')} deviation, floor)); "
                f"run `pyengine verify` for the per-module deviations")

    handle = model.register_forward_hook(hook, with_kwargs=True)
    return model

