"""``pyengine verify``: run a model on the shipped 2D sample and compare it, module by module, with an fp64 eager
reference holding the same weights. The table lists each module that an accelerated backend replaces (MHG
encoders, SHR/CHI blocks, spatial/temporal blocks, TRA, SUSA units ...), the kernels it ran on (from
``model.report()``: what ran, e.g. ``cpp``, never the requested ``auto``) and its deviation.
Each module row runs that module alone on the fp64 reference's input to it (cast to the compute dtype), so a row
shows the module's own error; the last row is the whole model end to end.
"""
import inspect
import os
import re
from dataclasses import dataclass

import numpy as np
import torch

from . import arch as archs
from .load import load
from .testing import randomize_, rel_error

DATA = os.path.join(os.path.dirname(__file__), "data", "sample_walk.npz")
# Tolerance of a module's relative error against the fp64 reference: EAGER_FACTOR times the error of the eager
# reference run at the same precision (a kernel may be at most about twice as far off as eager PyTorch), but never
# below this floor per compute dtype.
from .twin import EAGER_FACTOR, TOLERANCE, eager_twin  # noqa: E402 (the shared contract)

def watched(arch):
    """(pattern on the module name, kind) of the modules the kernels replace (``pyengine.arch.SPECS``)."""
    return archs.SPECS[arch].watched



@dataclass
class Row:
    module: str
    kind: str
    backend: str  # the kernels that ran ("cpp", "cpp+torch", "reference" ...), not the requested backend
    rel: float
    tol: float

    @property
    def ok(self):
        return self.rel <= self.tol


def sample_windows(frames, n_joints, batch):
    """``batch`` windows of ``frames`` frames from the shipped walking sequence, screen-normalised and
    edge-padded at the sequence ends (SPEC.md §4)."""
    data = np.load(DATA)
    kp = data["keypoints_2d"].astype(np.float64)
    w, h = float(data["width"]), float(data["height"])
    kp = kp / w * 2 - np.array([1.0, h / w])
    if n_joints != kp.shape[1]:
        raise ValueError(f"verify: the shipped sample has {kp.shape[1]} joints, the model expects {n_joints}")
    T, pad = len(kp), frames // 2
    padded = np.concatenate([kp[:1].repeat(pad, 0), kp, kp[-1:].repeat(frames - 1 - pad, 0)])
    centres = np.linspace(0, T - 1, batch).round().astype(int)
    return torch.from_numpy(np.stack([padded[c:c + frames] for c in centres])).float()



def sample_input(arch, frames, n_joints, batch):
    """``sample_windows`` in the layout ``arch`` takes: MotionBERT also reads the detector's confidence as a third
    channel (1.0 here: the sample is clean)."""
    x = sample_windows(frames, n_joints, batch).float()
    if archs.SPECS[arch].input_channels == 3:
        x = torch.cat([x, torch.ones_like(x[..., :1])], dim=-1)
    return x

def capture(model, names):
    """Register hooks that store each named module's inputs and output; returns (store, handles)."""
    store, handles = {}, []
    modules = dict(model.named_modules())
    for name in names:
        def hook(_m, inp, out, name=name):
            store[name] = (tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in inp), flat(out))
        handles.append(modules[name].register_forward_hook(hook))
    return store, handles


def flat(out):
    outs = out if isinstance(out, tuple) else (out,)
    return torch.cat([o.detach().reshape(-1) for o in outs if isinstance(o, torch.Tensor)])


def forward(model, arch, x, names, index=None):
    """Run ``model`` on ``x`` capturing the named modules' inputs and outputs. Returns
    ``(captured, output, index)``; TPC/HoT models use ``index`` when given (so every run shares one token
    selection) and report theirs."""
    store, handles = capture(model, names)
    try:
        kwargs = {} if index is None else {"index": index}
        if archs.SPECS[arch].returns_index_on_request:
            kwargs["return_index"] = True
        out = model(x, **kwargs)
    finally:
        for h in handles:
            h.remove()
    if isinstance(out, tuple):
        out, index = out
    return store, out, index


def module_outputs(model, names, inputs, dtype):
    """Each named module of ``model`` run alone on the fp64 reference's inputs to that module, cast to ``dtype``:
    the module's own error, not the error it inherits from the modules before it."""
    out = {}
    for name in names:
        args = tuple(t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t
                     for t in inputs[name][0])
        out[name] = flat(model.get_submodule(name)(*args))
    return out


def kernels_that_ran(model):
    """``name -> kernels`` ("cpp", "cpp+torch", "reference" ...) per module of ``model.report()``, plus
    ``"(whole model output)"``: what actually runs, never the requested ``auto``."""
    from .engine import report
    per = {}
    for row in report(model):
        impls = {kv.split("=", 1)[1] for kv in re.split(r"[ ,]+", row.kernels) if "=" in kv} or {row.kernels}
        per.setdefault(row.module, set()).update(impls)
    every = set().union(*per.values()) if per else {"reference"}
    out = {name: "+".join(sorted(impls)) for name, impls in per.items()}
    out["(whole model output)"] = "+".join(sorted(every))
    return out


def run(arch="mhformer", checkpoint=None, backend="auto", dtype=torch.float32, device="cpu", batch=2, seed=0,
        **config):
    """Return ``(rows, info)``: one Row per watched module plus the whole model's output."""
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch: expected an integer >= 1 (windows), got {batch!r}")
    if checkpoint is not None:
        model = load(checkpoint, arch=arch, backend=backend, dtype=dtype, device=device, **config)
        source = checkpoint
    else:
        if arch not in archs.MODELS:
            raise ValueError(f"arch: expected one of {sorted(archs.MODELS)}, got {arch!r}")
        kwargs = {**archs.constructor_args(arch), **config}
        missing = sorted(k for k, v in kwargs.items() if v is inspect.Parameter.empty)
        if missing:
            raise ValueError(f"verify: arch {arch!r} with random weights needs {missing} (e.g. --channels 40)")
        model = load(randomize_(archs.construct(arch, kwargs, given=set(config)), seed), backend=backend,
                     dtype=dtype, device=device)
        source = f"random weights (seed {seed})"
    info = model.pyengine

    reference, same_precision = eager_twin(model, torch.float64, device), eager_twin(model, dtype, device)

    if archs.SPECS[info.arch].io == "feature_map":
        channels = info.config.get("channels", info.config.get("in_channels"))
        x = torch.randn(batch, channels, 16, 12, generator=torch.Generator().manual_seed(seed))
        inputs = "random feature maps [%d, %d, 16, 12]" % (batch, channels)
    else:
        frames, n_joints = model.frames, model.n_joints  # (MotionBERT names them maxlen / num_joints)
        x = sample_input(info.arch, frames, n_joints, batch)
        inputs = f"{os.path.basename(DATA)}, {batch} windows of {frames} frames"
    x = x.to(device)

    from .nn._common import Fused
    fused = any(isinstance(m, Fused) for m in model.modules())
    # Per-module rows: the modules a fused model runs as fused modules (with the reference backend: all watched).
    names = [n for n, m in model.named_modules() if n and any(re.fullmatch(p, n) for p, _ in watched(info.arch))
             and (isinstance(m, Fused) or not fused or archs.SPECS[info.arch].io == "feature_map")]
    kinds = {n: next(k for p, k in watched(info.arch) if re.fullmatch(p, n)) for n in names}
    with torch.no_grad():
        _, out, index = forward(model, info.arch, x, [])
        want, ref_out, _ = forward(reference, info.arch, x.double(), names, index)  # same token selection
        _, base_out, _ = forward(same_precision, info.arch, x, [], index)
        got = module_outputs(model, names, want, dtype)
        base = module_outputs(same_precision, names, want, dtype)
    floor = TOLERANCE[dtype]
    ran = kernels_that_ran(model)
    # A module without its own report row runs inside its parent's kernels (or is the reference model).
    whole = ran["(whole model output)"]
    rows = []
    for name, kind, a, b, e in [*((n, kinds[n], got[n], want[n][1], base[n]) for n in names),
                                ("(whole model output)", "model", out, ref_out, base_out)]:
        tol = max(floor, EAGER_FACTOR * rel_error(e, b))
        rows.append(Row(name, kind, ran.get(name, whole), rel_error(a, b), tol))
    return rows, {"arch": info.arch, "config": info.config, "reason": info.reason, "source": source,
                  "inputs": inputs, "dtype": str(dtype).replace("torch.", ""), "device": str(device)}


def format_table(rows, meta):
    cfg = ", ".join(f"{k}={v}" for k, v in meta["config"].items())
    lines = [f"pyengine verify: {meta['arch']} ({cfg})",
             f"weights: {meta['source']}; input: {meta['inputs']}; dtype {meta['dtype']} on {meta['device']}",
             "deviation = max|engine - fp64 eager reference| / max|reference|; tolerance = "
             f"max({EAGER_FACTOR:g} x the same-precision eager deviation, a per-dtype floor)", ""]
    head = f"{'module':<40} {'kind':<15} {'kernels':<16} {'deviation':>10} {'tolerance':>10}  status"
    lines += [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r.module:<40} {r.kind:<15} {r.backend:<16} {r.rel:>10.2e} {r.tol:>10.1e}  "
                     f"{'ok' if r.ok else 'FAIL'}")
    bad = [r.module for r in rows if not r.ok]
    lines += ["", f"FAILED: {len(bad)} module(s) over tolerance: {bad}" if bad else
              f"OK: {len(rows)} checks within tolerance"]
    return "\n".join(lines)
