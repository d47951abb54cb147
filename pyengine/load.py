"""``pyengine.load``: a path, state_dict, checkpoint dict or nn.Module in; an eval-mode model out."""
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from . import arch as archs
from .backends import BACKENDS, BackendUnavailableError
from .checkpoint import Checkpoint, CheckpointError, normalize, read

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
    backend_reason: str = ""
    fp32_modules: tuple = ()  # submodules kept float32 in a bf16 / fp16 model (the arch's precision policy)
    fp32_why: str = ""
    fp32_bf16_gemms: bool = False  # ...whose GEMMs run in bf16 on CPU (weights cast once)

    def __str__(self):
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        lines = [f"arch {self.arch} ({self.reason})", f"config: {cfg}", f"backend: {self.backend}",
                 f"source: {self.source} (format {self.format})"]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])


def _kind(dtype):
    return "bool" if dtype == torch.bool else "complex" if dtype.is_complex else \
        "floating" if dtype.is_floating_point else "integer"


def check_keys(model, sd, arch, reason, config):
    """Compare ``sd`` with ``model``'s own keys, shapes and dtype kinds; raise one error that names every problem.

    ``load_state_dict`` would cast an integer or bool tensor into a floating parameter (and back) without a word;
    a floating parameter stored as integers is a broken checkpoint, so the kind (floating / integer / bool /
    complex) must match. Floating precisions may differ (fp16 weights load into an fp32 model)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    misshaped = sorted((k, list(expected[k].shape), list(sd[k].shape)) for k in set(expected) & set(sd)
                       if expected[k].shape != sd[k].shape)
    mistyped = sorted((k, _kind(expected[k].dtype), sd[k].dtype) for k in set(expected) & set(sd)
                      if _kind(expected[k].dtype) != _kind(sd[k].dtype))
    if not (missing or unexpected or misshaped or mistyped):
        return
    parts = [f"checkpoint does not match arch {arch!r} ({reason}) with config "
             + ", ".join(f"{k}={v!r}" for k, v in config.items()) + ":"]
    if missing:
        parts.append(f"  missing keys ({len(missing)}): {missing}")
    if unexpected:
        parts.append(f"  unexpected keys ({len(unexpected)}): {unexpected}")
    for key, want, got in misshaped:
        parts.append(f"  mis-shaped key {key!r}: expected {want}, got {got}")
    for key, want, got in mistyped:
        parts.append(f"  key {key!r}: expected a {want} tensor, got dtype {str(got).replace('torch.', '')} (it "
                     f"would be cast silently)")
    raise CheckpointError("\n".join(parts))


# Head counts cannot be read off the weights; a module that holds them (published code keeps ``num_heads`` on
# its attention modules) tells them. (config key, submodules that carry it)
HEAD_HINTS = (("heads", ("Transformer_hypothesis.SHR_blocks.0.attn_1", "Transformer_hypothesis.CHI_blocks.0.attn_1",
                         "STEblocks.0.attn")),
              ("mhg_heads", ("Transformer_encoder_1.blocks.0.attn",)))


def module_hints(module):
    """Hyperparameters that a module instance knows but its state_dict does not (the head counts)."""
    mods = dict(module.named_modules())
    hints = {}
    for key, names in HEAD_HINTS:
        for name in names:
            h = getattr(mods.get(name), "num_heads", None)
            if isinstance(h, int):
                hints[key] = h
                break
    return hints


def _checkpoint_of(obj):
    """Return ``(Checkpoint, arch of a pyengine instance or None, its config)``."""
    if isinstance(obj, (str, os.PathLike)):
        return read(obj), None, {}
    if isinstance(obj, nn.Module):
        own = getattr(type(obj), "arch", None)
        if own in archs.MODELS and isinstance(obj, archs.MODELS[own]):
            return Checkpoint(dict(obj.state_dict()), "module", type(obj).__name__), own, archs.config_of(obj)
        return normalize(dict(obj.state_dict()), source=type(obj).__name__), None, module_hints(obj)
    if isinstance(obj, dict):
        return normalize(obj, source="<dict>"), None, {}
    raise TypeError(f"obj: expected a checkpoint path, a state_dict, a checkpoint dict or an nn.Module, "
                    f"got {type(obj).__name__}")


def check_device(device, name="device"):
    """``torch.device(device)``, or a ValueError / BackendUnavailableError saying why it cannot be used here (an
    unknown device string, CUDA on a CPU-only torch or without a visible GPU, an index past the last GPU)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"{name}: expected a torch device such as 'cpu', 'cuda' or 'cuda:1', got {device!r}") from None
    given = f"{name} {device}" if name.startswith("--") else f"{name}={device!r}"  # CLI option or argument
    cpu = f"{name} cpu" if name.startswith("--") else f"{name}='cpu'"
    if dev.type == "cuda":
        if not torch.backends.cuda.is_built():
            raise BackendUnavailableError(f"{given}: this torch ({torch.__version__}) is built without CUDA; use "
                                          f"{cpu} or install a CUDA build of torch")
        count = torch.cuda.device_count()
        if count == 0:
            raise BackendUnavailableError(f"{given}: no CUDA device is visible (CUDA_VISIBLE_DEVICES="
                                          f"{os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')!r}); use {cpu}")
        if dev.index is not None and dev.index >= count:
            raise BackendUnavailableError(f"{given}: there are only {count} CUDA device(s) (cuda:0 .. "
                                          f"cuda:{count - 1})")
    elif dev.type != "cpu":
        raise ValueError(f"{name}: expected 'cpu' or a CUDA device ('cuda', 'cuda:N'), got {device!r}")
    return dev


def _finite_input_check(module, args, kwargs):
    """``check_finite=True``: refuse a non-finite model input before the forward (a host sync, so opt-in)."""
    x = args[0] if args else kwargs.get("x")
    if isinstance(x, torch.Tensor) and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).nonzero()
        first = tuple(int(i) for i in bad[0])
        value = float(x[first])
        where = (f"window {first[0]}, frame {first[1]}, joint {first[2]}" if x.dim() == 4 and x.shape[-1] == 2
                 else f"index {list(first)}")
        raise ValueError(f"x: expected finite values (pyengine.load(..., check_finite=True)), got {value} at "
                         f"{where} ({len(bad)} non-finite of {x.numel()} values, shape {list(x.shape)})")


def load(obj, *, arch=None, device=None, dtype=torch.float32, backend="auto", allow_tf32=False, validate=False,
         cuda_graphs=True, check_finite=False, **config):
    """Build an eval-mode pyengine model from ``obj`` and load its weights strictly.

    obj:     a path (``.pth``, ``.pt``, ``.bin``, ``.safetensors``), a state_dict, a checkpoint dict
             (``model_pos`` / mmcv ``state_dict``), or an ``nn.Module`` (pyengine's own or any module whose
             state_dict has the published key names).
    arch:    one of ``pyengine.ARCHS``; inferred from the keys when None. TPC variants have their base model's
             keys: pass ``arch='tpc_mhformer'`` / ``'tpc_mixste'`` (or set ``token_num`` / ``layer_index``).
    device:  where the model lives; None means CUDA when available, else CPU. Inputs must be on that device.
    dtype:   the parameter dtype (default float32). Inputs of any float dtype are cast to it, and outputs are
             returned in the input's dtype. A fused bf16 / fp16 model keeps the parts its architecture names in
             float32 (``arch.ArchSpec.fp32_modules``: MHFormer's MHG encoders; in bf16 on CPU their GEMMs still run
             in bf16, ``fp32_modules_bf16_gemms``), listed with why in ``report()``.
    backend: "auto" | "reference" | "triton" | "cuda" | "cpp" (see ``pyengine.dispatch``): the kernels every op
             runs on. An explicit backend that cannot run here raises ``BackendUnavailableError`` saying why;
             ``model.report()`` lists the kernel of every op and why it was chosen.
    allow_tf32: let fp32 GEMMs and attention use TF32 tensor cores (off by default: fp32 means fp32).
    validate: on the first call, run the eager reference beside the engine (fp64 and at ``dtype``) and raise
             ``pyengine.ValidationError`` if the deviation exceeds the dtype's tolerance (as ``pyengine verify``).
    cuda_graphs: on CUDA, inference calls (no grad) with a fixed input shape replay a CUDA graph captured after
             two warm-up runs (latency mode); ``False`` runs every call eagerly.
    check_finite: check every call's input ``x`` for NaN / inf before the forward and raise ``ValueError``
             naming the first bad value (window, frame, joint). Off by default: the check copies a flag to the
             host, i.e. waits for the GPU on every call, and cannot be captured in a CUDA graph (it runs outside
             the graph, as a forward pre-hook). The forward itself checks metadata only (shape, dtype, device);
             ``pyengine.lift`` / ``Lifter`` / the readers check values where data enters.
    config:  hyperparameters by their published names (``frames``, ``channel``, ``token_num``, ``layer_index``,
             ``tie_break`` ...). Shape-determined ones are inferred and may be given only if they agree.

    Returns the model; ``model.pyengine`` (a ``LoadInfo``) says which architecture was assumed and why.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype: expected a floating torch.dtype (float32, bfloat16, float16), got {dtype!r}")
    if not isinstance(check_finite, bool):
        raise TypeError(f"check_finite: expected True or False, got {check_finite!r}")
    if device is not None:
        check_device(device)
    ckpt, own_arch, own_config = _checkpoint_of(obj)
    if own_arch is not None:
        if arch is not None and arch != own_arch:
            raise ValueError(f"arch={arch!r} contradicts the module given, a pyengine {own_arch!r} model")
        arch, config = own_arch, {**own_config, **config}
    else:  # a foreign module's head counts (its num_heads attributes); a contradicting config is an error
        for key, value in own_config.items():
            if key in config and config[key] != value:
                raise ValueError(f"{key}={config[key]!r} contradicts the module given, whose attention modules "
                                 f"have num_heads={value}")
        config = {**own_config, **config}
    arch, kwargs, reason = archs.resolve(ckpt.state_dict, arch, config)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    from . import dispatch, engine
    if backend == "reference":
        cls, why = archs.MODELS[arch], "backend='reference' requested: the eager reference runs"
    elif arch in engine.FUSED:
        dispatch.check_backend(backend, device)  # an explicit backend that cannot run here raises now
        cls, why = engine.FUSED[arch], f"fused model, backend={backend!r}"
    elif backend == "auto":
        cls, why = archs.MODELS[arch], f"auto: arch {arch!r} has no fused kernels in this version; the eager reference runs"
    else:
        raise BackendUnavailableError(f"backend={backend!r}: arch {arch!r} has no fused implementation in this "
                                      f"version (fused: {sorted(engine.FUSED)}); use backend='reference' or 'auto'")
    given = set(config)
    evidence = {k: why for k, (_, why) in archs.infer(arch, ckpt.state_dict).items()}
    model = archs.build(cls, arch, kwargs, given, evidence)
    check_keys(model, ckpt.state_dict, arch, reason, kwargs)
    model.load_state_dict(ckpt.state_dict, strict=True)
    spec = archs.SPECS[arch]
    fused = cls is not archs.MODELS[arch]
    # A fused half-precision model keeps its arch's fp32 parts in float32, cast from the loaded (fp32) values, never
    # via the half dtype (the fused model casts at the boundaries of these parts).
    kept = spec.fp32_modules if fused and dtype in (torch.bfloat16, torch.float16) else ()
    model = model.to(device=device, dtype=dtype if not kept else None).eval()
    if kept:
        fp32 = set()
        for name in kept:
            part = model.get_submodule(name)
            fp32.update(id(t) for t in (*part.parameters(), *part.buffers()))
        for t in (*model.parameters(), *model.buffers()):
            if t.is_floating_point():
                t.data = t.data.to(torch.float32 if id(t) in fp32 else dtype)
        if spec.fp32_modules_bf16_gemms and dtype == torch.bfloat16:
            model.fp32_gemm_dtype = torch.bfloat16  # the fused model applies it while it is in bf16, on CPU
    if fused:
        engine.set_backend(model, backend, allow_tf32)
    model.pyengine = LoadInfo(arch, kwargs, reason, backend, ckpt.format, ckpt.source, ckpt.notes, why, kept,
                              spec.fp32_why if kept else "",
                              bool(kept) and spec.fp32_modules_bf16_gemms and dtype == torch.bfloat16)
    if not hasattr(model, "report"):
        model.report = lambda: engine.report(model)
    if cuda_graphs and torch.device(device).type == "cuda" and fused:
        engine.enable_cuda_graphs(model)
    if check_finite:
        model.register_forward_pre_hook(_finite_input_check, with_kwargs=True)
    if validate:
        engine.validate_once(model, arch, kwargs)
    return model
