"""Recognising an architecture from state_dict keys and inferring every hyperparameter the shapes determine.

Each architecture (SPEC.md §6 names) has: the model class, the keys that identify its family, a function that
reads hyperparameters from tensor shapes (with the evidence for each), and the hyperparameters that no shape
determines (``token_num`` / ``layer_index`` of TPC models, head counts, ``hw_shuffle`` ...), which come from the
user's config or the documented defaults (the published settings, i.e. the constructor defaults).
"""
import dataclasses
import importlib
import inspect
import re
from typing import Callable, Optional, Tuple

from . import models as M
from . import motionbert_ckpt
from .checkpoint import CheckpointError
from .shapes import block_count as _count, key_shape as _shape, vote as _vote


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """Every fact about one architecture, in one place (``SPECS`` below; adding an architecture = one spec + its
    classes). Everything else (loading, the engine, verify, lift, the CLI, the benchmarks) reads these."""

    name: str  # SPEC.md §6 name, the ``arch=`` value
    reference: type  # the eager reference class (pyengine.models)
    fused: Optional[str]  # "module:Class" of the fused drop-in (imported when asked for), or None
    infer: Callable  # (state_dict, arch) -> {hyperparameter: (value, evidence)} for what the shapes determine
    signature: Optional[Callable] = None  # state_dict -> reason if its keys are this family's (None: see base)
    base: Optional[str] = None  # an architecture with exactly the same keys (TPC variants: only config differs)
    io: str = "seq2seq"  # "seq2frame" (one output frame per window), "seq2seq", or "feature_map" (SUSA modules)
    tpc: bool = False  # DPC-kNN token pruning inside (returns / accepts a selection ``index``)
    tpc_center: bool = False  # the selection always keeps the centre frame (seq2frame TPC)
    input_channels: int = 2  # pose input [B, F, J, input_channels] (2: x, y; 3: x, y, confidence)
    watched: Tuple = ()  # (regex on module names, kind) of the modules ``pyengine verify`` reports
    # Keys of the published args namespace the model reads but that must equal another hyperparameter (accepted
    # when equal, an error otherwise), e.g. MixSTE's out_joints == n_joints.
    tied_config: dict = dataclasses.field(default_factory=dict)
    bench_cases: Tuple = ()  # pyengine.bench.CASES names
    # Submodules a fused bf16 / fp16 model loaded by pyengine.load keeps in float32 (its precision policy), and why.
    fp32_modules: Tuple = ()
    fp32_why: str = ""
    # ...and whether, in a bf16 model on CPU, those modules still run their GEMMs in bf16 (weights cast once;
    # LayerNorm, residual stream and the rest float32): the fp32 weights' memory traffic, not their arithmetic, was
    # the cost.
    fp32_modules_bf16_gemms: bool = False

    @property
    def family(self):
        return self.base or self.name

    @property
    def returns_index_on_request(self):
        """HoT's published call returns the output only: ``forward(x, index=None, return_index=False)``; the
        seq2frame TPC models always return ``(out, index)``."""
        return self.tpc and not self.tpc_center

    @property
    def lifter(self):
        return self.io in ("seq2frame", "seq2seq")

    def fused_class(self):
        if self.fused is None:
            return None
        module, cls = self.fused.split(":")
        return getattr(importlib.import_module(module), cls)


SPECS = {}


def register(spec: ArchSpec) -> ArchSpec:
    """Add an architecture (tests add toy ones); ``MODELS`` and everything derived see it at once."""
    if spec.name in SPECS:
        raise ValueError(f"arch: {spec.name!r} is registered already")
    if spec.base is not None and spec.base not in SPECS:
        raise ValueError(f"arch {spec.name!r}: base {spec.base!r} is not registered")
    SPECS[spec.name] = spec
    MODELS[spec.name] = spec.reference
    if spec.base is not None:
        SAME_KEYS[spec.name] = spec.base
    return spec


def unregister(name: str) -> None:
    spec = SPECS.pop(name)
    MODELS.pop(name)
    SAME_KEYS.pop(name, None)
    assert spec is not None


def lifters():
    """The 2D-to-3D lifting architectures (for lift / the CLI), in registry order."""
    return tuple(n for n, s in SPECS.items() if s.lifter)


MODELS = {}  # arch -> reference class (derived from SPECS by register)
SAME_KEYS = {}  # arch -> base arch with exactly the same keys


def family(arch):
    return SAME_KEYS.get(arch, arch)


def constructor_args(arch):
    params = inspect.signature(MODELS[arch].__init__).parameters
    return {n: p.default for n, p in params.items() if n != "self" and not n.startswith("_")}


def detect(sd):
    """Return ``(arch, reason)`` from the keys alone (TPC variants are reported as their base model): the first
    registered family whose ``signature`` recognises the keys."""
    for spec in SPECS.values():
        if spec.signature is not None:
            reason = spec.signature(sd)
            if reason:
                return spec.name, reason
    families = ", ".join(s.name for s in SPECS.values() if s.signature is not None)
    raise CheckpointError(
        f"cannot recognise the architecture: no known key family ({families}) in keys "
        f"{sorted(sd)[:12]}{' ...' if len(sd) > 12 else ''}; pass arch= one of {sorted(MODELS)}")


def _sig_mhformer(sd):
    if "Transformer_encoder_1.pos_embed" in sd or any(k.startswith("Transformer_hypothesis.") for k in sd):
        return "keys 'Transformer_encoder_k.*' and 'Transformer_hypothesis.*' (MHFormer family)"


def _sig_hot_mixste(sd):
    if any(k.startswith("STEblocks.") for k in sd) and (
            "x_token" in sd or any(k.startswith("cross_attention.") for k in sd)):
        return "keys 'STEblocks.*' plus 'x_token' / 'cross_attention.*' (HoT-MixSTE)"


def _sig_mixste(sd):
    if any(k.startswith("STEblocks.") for k in sd):
        return "keys 'STEblocks.*' / 'TTEblocks.*' without 'x_token' (MixSTE family)"


def _sig_px(sd):
    if "branch2.0.hconv.group_weight" in sd:
        return "keys 'branch2.0.hconv.*' (parallel X-shuffle unit: HW-SUSA in branch2)"


def _sig_sx(sd):
    if "branch2.0.group_weight" in sd:
        return "keys 'branch2.0.group_weight' (sequential X-shuffle unit)"


def _sig_hwsusa(sd):
    if "hconv.group_weight" in sd:
        return "keys 'hconv.*' and 'wconv.*' (HW-SUSA)"


def _group_weight(sd):
    gw = tuple(sd["group_weight"].shape) if "group_weight" in sd else None
    return gw, gw is not None and len(gw) == 4 and gw[2] > 1


def _sig_hsusa(sd):
    gw, h_wise = _group_weight(sd)
    if h_wise:
        return f"'group_weight' of shape {list(gw)} (a per-row vector: H-wise SUSA)"


def _sig_wsusa(sd):
    gw, h_wise = _group_weight(sd)
    if gw is not None and not h_wise:
        return f"'group_weight' of shape {list(gw)} (a per-column vector: W-wise SUSA)"


def _infer_mhformer(sd, arch):
    f = _vote(sd, arch, "frames", [("norm_1.weight", 0), ("norm_2.weight", 0), ("norm_3.weight", 0),
                                           ("Transformer_encoder_1.norm.weight", 0),
                                           ("Transformer_hypothesis.pos_embed_1", 1),
                                           ("Transformer_hypothesis.pos_embed_2", 1),
                                           ("Transformer_hypothesis.pos_embed_3", 1)])
    with_bn = "embedding_1.0.weight" in sd
    emb_key = "embedding_1.0.weight" if with_bn else "embedding_1.weight"
    _vote(sd, arch, "channel", [(emb_key, 0), ("Transformer_hypothesis.pos_embed_1", 2),
                                ("Transformer_hypothesis.SHR_blocks.0.norm1_1.weight", 0)])
    emb = _shape(sd, emb_key, arch)
    if with_bn != (f <= 27):
        raise CheckpointError(
            f"arch {arch!r}: the checkpoint has {'a BatchNorm' if with_bn else 'a plain Conv1d'} embedding "
            f"('embedding_1.{'0.' if with_bn else ''}weight') but frames={f} (from norm_1.weight); the published "
            f"MHFormer uses the BatchNorm embedding exactly when frames <= 27")
    shr = _count(sd, "Transformer_hypothesis.SHR_blocks.")
    return {
        "frames": (f, f"norm_1.weight has length {f}"),
        "channel": (emb[0], f"embedding_1 weight has shape {list(emb)}"),
        "n_joints": (emb[1] // 2, f"embedding_1 takes {emb[1]} = 2 * n_joints inputs"),
        "out_joints": (_shape(sd, "regression.1.weight", arch)[0] // 3, "regression.1.weight rows = 3 * out_joints"),
        "d_hid": (_shape(sd, "Transformer_hypothesis.CHI_blocks.0.mlp.fc1.weight", arch)[0],
                  "Transformer_hypothesis.CHI_blocks.0.mlp.fc1.weight rows"),
        "layers": (shr + 1, f"{shr} SHR blocks + 1 CHI block"),
        "mhg_depth": (_count(sd, "Transformer_encoder_1.blocks."), "blocks in Transformer_encoder_1"),
    }


def _infer_mixste(sd, arch):
    emb = _shape(sd, "Spatial_patch_to_embedding.weight", arch)
    out = {
        "channel": (_vote(sd, arch, "channel", [("Spatial_patch_to_embedding.weight", 0), ("Spatial_pos_embed", 2),
                                                ("Temporal_pos_embed", 2), ("Spatial_norm.weight", 0),
                                                ("Temporal_norm.weight", 0)]),
                    f"Spatial_patch_to_embedding.weight has shape {list(emb)}"),
        "n_joints": (_shape(sd, "Spatial_pos_embed", arch)[1], "Spatial_pos_embed length"),
        "frames": (_vote(sd, arch, "frames", [("Temporal_pos_embed", 1), ("x_token", 1)]), "Temporal_pos_embed length"),
        "depth": (_count(sd, "STEblocks."), "number of STEblocks"),
        "d_hid": (_shape(sd, "STEblocks.0.mlp.fc1.weight", arch)[0], "STEblocks.0.mlp.fc1.weight rows"),
    }
    if arch == "hot_mixste":
        out["token_num"] = (_shape(sd, "pos_embed_token", arch)[1], "pos_embed_token length")
    return out


def _susa_channels(sd, prefix, arch):
    return _shape(sd, prefix + "conv.conv.weight", arch)[0]


def _infer_hwsusa(sd, arch, prefix=""):
    h = _susa_channels(sd, prefix + "hconv.", arch)
    w = _susa_channels(sd, prefix + "wconv.", arch)
    modes = {mode: M.HWSUSA.split(h + w, mode) for mode in (None, "hw", "wh")}
    found = [m for m, split in modes.items() if split == (h, w)]
    if not found:
        raise CheckpointError(f"arch {arch!r}: hconv has {h} and wconv {w} channels, which no HW-SUSA mode "
                              f"(None: halves, 'hw': 3/4 + 1/4, 'wh': 1/4 + 3/4) produces")
    return {
        "channels": (h + w, f"hconv ({h}) + wconv ({w}) channels"),
        "mode": (found[0], f"channel split {h}:{w}"),
        "ln_enable": (prefix + "hconv.ln.weight" in sd, f"'{prefix}hconv.ln.*' present or not"),
    }


def _infer_susa(sd, arch):
    return {"channels": (_susa_channels(sd, "", arch), "conv.conv.weight rows"),
            "ln_enable": ("ln.weight" in sd, "'ln.*' present or not")}


def _infer_unit(sd, arch):
    if arch == "sx_shuffle_unit":
        bf = _susa_channels(sd, "branch2.0.", arch)
    else:
        bf = _infer_hwsusa(sd, arch, "branch2.0.")["channels"][0]
    return {"in_channels": (2 * bf, f"branch2 works on half the channels ({bf})"),
            "out_channels": (2 * bf, f"branch2 works on half the channels ({bf})")}


def infer(arch, sd):
    """Hyperparameters determined by the shapes of ``sd`` for ``arch``: ``{name: (value, evidence)}``."""
    return SPECS[arch].infer(sd, arch)


def resolve(sd, arch=None, config=None):
    """Choose the architecture and its full constructor config. Returns ``(arch, kwargs, reason)``."""
    config = dict(config or {})
    detected, why = detect(sd)
    if arch is None:
        arch, reason = detected, f"inferred from {why}"
        tpc_keys = sorted(k for k in ("token_num", "layer_index") if k in config)
        variant = [n for n, spec in SPECS.items() if spec.base == arch and spec.tpc]
        if variant and tpc_keys:
            arch = variant[0]
            reason += f"; TPC variant because the config sets {tpc_keys} (its keys equal the base model's)"
    else:
        if arch not in MODELS:
            raise ValueError(f"arch: expected one of {sorted(MODELS)}, got {arch!r}")
        if family(arch) != detected:
            raise CheckpointError(f"arch={arch!r} was given, but the checkpoint's keys belong to {detected!r}: {why}")
        reason = "given by arch="
    allowed = constructor_args(arch)
    tied = SPECS[arch].tied_config  # keys of the published args namespace that must equal another hyperparameter
    unknown = sorted(set(config) - set(allowed) - set(tied))
    if unknown:
        raise ValueError(f"config: unknown keys {unknown} for arch {arch!r}; accepted: {sorted(set(allowed) | set(tied))}")
    kwargs = dict(allowed)
    for name, (value, evidence) in infer(arch, sd).items():
        if name in config and config[name] != value:
            raise CheckpointError(f"config: {name}={config[name]!r} contradicts the checkpoint: {evidence}, so "
                                  f"{name}={value!r} (arch {arch!r}, {reason})")
        kwargs[name] = value
    for name, value in config.items():
        if name not in tied:
            kwargs[name] = value
    for name, other in tied.items():
        if name in config and config[name] != kwargs[other]:
            raise ValueError(f"config: {name}={config[name]!r}: arch {arch!r} outputs every input joint, so {name} "
                             f"must equal {other}={kwargs[other]!r} (the published training script's namespace "
                             f"carries it; only an equal value is accepted)")
    return arch, kwargs, reason


def construct(arch, kwargs, given=(), evidence=None):
    """``MODELS[arch](**kwargs)``, where a constructor error about a value the user did not give says where the
    value came from: the checkpoint's shapes (``evidence``: name -> why) or the architecture's default (and which
    option sets it). ``given``: the names the user passed."""
    return build(MODELS[arch], arch, kwargs, given, evidence)


def build(cls, arch, kwargs, given=(), evidence=None):
    """``cls(**kwargs)`` with ``construct``'s error explanation (cls: the reference or a fused class)."""
    evidence = evidence or {}
    try:
        return cls(**kwargs)
    except (ValueError, TypeError, IndexError, ZeroDivisionError) as exc:
        msg = str(exc)
        defaults = constructor_args(arch)
        why = []
        subject = re.match(r"(\w+):", msg)  # "token_num: expected ...": explain that one only
        if subject and subject.group(1) in kwargs:
            named = [subject.group(1)]
        else:  # names the message mentions bare or with their own value ("heads=9" is not about heads=8)
            named = [n for n, v in kwargs.items()
                     if re.search(rf"\b{re.escape(n)}\b(?!=)|\b{re.escape(n)}={re.escape(str(v))}\b", msg)]
        for name in named:
            value = kwargs[name]
            if name in given:
                continue
            if name in evidence:
                why.append(f"{name}={value!r} was inferred from the checkpoint ({evidence[name]}); if that is wrong, "
                           f"the key is mis-shaped")
            elif value is defaults.get(name) or value == defaults.get(name):
                why.append(f"{name}={value!r} is arch {arch!r}'s default, not a value you gave; set it with {name}= "
                           f"(CLI --{name.replace('_', '-')})")
        if not why:
            if isinstance(exc, (IndexError, ZeroDivisionError)):  # a constructor crash on an impossible config
                raise ValueError(f"arch {arch!r} cannot be built with "
                                 f"{', '.join(f'{k}={v!r}' for k, v in kwargs.items())}: "
                                 f"{type(exc).__name__}: {msg}") from exc
            raise
        kind = type(exc) if type(exc) in (ValueError, TypeError) else ValueError
        raise kind(f"{msg} ({'; '.join(why)})") from exc


def config_of(module):
    """The non-shape hyperparameters of a pyengine model instance (attributes named like its arguments)."""
    return {n: getattr(module, n) for n in constructor_args(module.arch) if hasattr(module, n)}


# ---------------------------------------------------------------------------------------------------------------
# The table (gpt-fast's transformer_configs, for lifters): one spec per architecture, in detection order.
_MHF_WATCHED = ((r"Transformer_encoder_\d", "MHG encoder"), (r"embedding_\d", "embedding"),
                (r"Transformer_hypothesis\.SHR_blocks\.\d+", "SHR block"),
                (r"Transformer_hypothesis\.CHI_blocks\.0", "CHI block"), (r"regression", "regression"))
# MHFormer's MHG: its LayerNorms normalise each (joint, coordinate) row across time and its cascade residual
# (x + encoder(LN(x))) carries the poses themselves; in bf16 it is the model's largest error. So a bf16 MHFormer keeps
# the MHG's LayerNorms and residual stream in float32. Its GEMMs run in bf16 on CPU all the same: with fp32 weights
# (47 MB at F = 351) the model's weights no longer fitted the ~64 MB this VM's L3 holds, and every GEMM of the model
# waited on DRAM. Measured (random weights, AMX Xeon, benchmarks/results/2026-12-02-cpu-amx-mixed.md), relative
# error / time: MHFormer-351 b2 all-bf16 MHG 1.3e-2; fp32 MHG 6.7e-3 / 58 ms; fp32 MHG with bf16 GEMMs
# 8.4e-3-9.3e-3 / 50 ms (OpenVINO bf16: 1.0e-2-1.15e-2 / 49 ms).
_MHF_FP32 = dict(fp32_modules=("norm_1", "norm_2", "norm_3", "Transformer_encoder_1", "Transformer_encoder_2",
                               "Transformer_encoder_3"),
                 fp32_modules_bf16_gemms=True,
                 fp32_why="MHG encoders (LayerNorm across time, the cascade residual carrying the poses) in float32, "
                          "their GEMMs in bf16 on CPU: an all-bf16 MHG raises MHFormer-351's relative error from "
                          "8.4e-3-9.3e-3 to 1.3e-2 (random weights; benchmarks/results/2026-12-02-cpu-amx-mixed.md)")
_MIX_WATCHED = ((r"STEblocks\.\d+", "spatial block"), (r"TTEblocks\.\d+", "temporal block"),
                (r"cross_attention", "TRA"), (r"head", "head"))
_SUSA_WATCHED = ((r"(branch2\.[02]\.)?(hconv|wconv)", "SUSA"), (r"branch2\.[02]", "SUSA"),
                 (r"branch2\.1", "dw conv + BN"))

for _spec in (
    ArchSpec("mhformer", M.MHFormer, "pyengine.nn.mhformer:MHFormer", _infer_mhformer, _sig_mhformer,
             io="seq2frame", watched=_MHF_WATCHED,
             bench_cases=("mhformer-351", "mhformer-243", "mhformer-81", "mhformer-27"), **_MHF_FP32),
    ArchSpec("tpc_mhformer", M.TPCMHFormer, "pyengine.nn.mhformer:TPCMHFormer", _infer_mhformer, base="mhformer",
             io="seq2frame", tpc=True, tpc_center=True, watched=_MHF_WATCHED, bench_cases=("tpc_mhformer-351",),
             **_MHF_FP32),
    ArchSpec("hot_mixste", M.HoTMixSTE, "pyengine.nn.mixste:HoTMixSTE", _infer_mixste, _sig_hot_mixste,
             tpc=True, watched=_MIX_WATCHED, bench_cases=("hot_mixste-243",),
             tied_config={"out_joints": "n_joints"}),
    ArchSpec("mixste", M.MixSTE, "pyengine.nn.mixste:MixSTE", _infer_mixste, _sig_mixste, watched=_MIX_WATCHED,
             bench_cases=("mixste-243",),
             tied_config={"out_joints": "n_joints"}),
    ArchSpec("tpc_mixste", M.TPCMixSTE, "pyengine.nn.mixste:TPCMixSTE", _infer_mixste, base="mixste",
             io="seq2frame", tpc=True, tpc_center=True, watched=_MIX_WATCHED,
             tied_config={"out_joints": "n_joints"}),
    ArchSpec("hot_motionbert", M.HoTMotionBERT, "pyengine.nn.motionbert:HoTMotionBERT", motionbert_ckpt.infer,
             motionbert_ckpt.signature_hot_motionbert, tpc=True, input_channels=3,
             bench_cases=("hot_motionbert-243",)),
    ArchSpec("motionbert", M.MotionBERT, "pyengine.nn.motionbert:MotionBERT", motionbert_ckpt.infer,
             motionbert_ckpt.signature_motionbert, input_channels=3,
             bench_cases=("motionbert-243", "motionbert_lite-243")),
    ArchSpec("px_shuffle_unit", M.PXShuffleUnit, "pyengine.nn.susa:PXShuffleUnit", _infer_unit, _sig_px,
             io="feature_map", watched=_SUSA_WATCHED),
    ArchSpec("sx_shuffle_unit", M.SXShuffleUnit, "pyengine.nn.susa:SXShuffleUnit", _infer_unit, _sig_sx,
             io="feature_map", watched=_SUSA_WATCHED),
    ArchSpec("hwsusa", M.HWSUSA, "pyengine.nn.susa:HWSUSA", _infer_hwsusa, _sig_hwsusa, io="feature_map",
             watched=_SUSA_WATCHED),
    ArchSpec("hsusa", M.HSUSA, "pyengine.nn.susa:HSUSA", _infer_susa, _sig_hsusa, io="feature_map",
             watched=_SUSA_WATCHED),
    ArchSpec("wsusa", M.WSUSA, "pyengine.nn.susa:WSUSA", _infer_susa, _sig_wsusa, io="feature_map",
             watched=_SUSA_WATCHED),
):
    register(_spec)

# Derived views (read-only by convention), kept for the modules that name them.
SEQ2FRAME_TPC = tuple(n for n, spec in SPECS.items() if spec.tpc_center)
