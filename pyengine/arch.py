"""Recognising an architecture from state_dict keys and inferring every hyperparameter the shapes determine.

Each architecture (SPEC.md §6 names) has: the model class, the keys that identify its family, a function that
reads hyperparameters from tensor shapes (with the evidence for each), and the hyperparameters that no shape
determines (``token_num`` / ``layer_index`` of TPC models, head counts, ``hw_shuffle`` ...), which come from the
user's config or the documented defaults (the published settings, i.e. the constructor defaults).
"""
import inspect
import re

from .checkpoint import CheckpointError
from .models import (HSUSA, HWSUSA, MHFormer, MixSTE, HoTMixSTE, PXShuffleUnit, SXShuffleUnit, TPCMHFormer,
                     TPCMixSTE, WSUSA)

MODELS = {
    "mhformer": MHFormer, "tpc_mhformer": TPCMHFormer, "mixste": MixSTE, "tpc_mixste": TPCMixSTE,
    "hot_mixste": HoTMixSTE, "hsusa": HSUSA, "wsusa": WSUSA, "hwsusa": HWSUSA,
    "sx_shuffle_unit": SXShuffleUnit, "px_shuffle_unit": PXShuffleUnit,
}
# Architectures whose keys are exactly their base model's: they differ only by config.
SAME_KEYS = {"tpc_mhformer": "mhformer", "tpc_mixste": "mixste"}
SEQ2FRAME_TPC = ("tpc_mhformer", "tpc_mixste")


def family(arch):
    return SAME_KEYS.get(arch, arch)


def constructor_args(arch):
    params = inspect.signature(MODELS[arch].__init__).parameters
    return {n: p.default for n, p in params.items() if n != "self" and not n.startswith("_")}


def _shape(sd, key, arch):
    if key not in sd:
        raise CheckpointError(f"arch {arch!r}: the checkpoint has no key {key!r}, which this architecture needs "
                              f"to infer its shape (keys present start with {sorted(sd)[:8]})")
    return tuple(sd[key].shape)


def _vote(sd, arch, name, sources):
    """A hyperparameter that several keys' shapes determine: ``sources`` = [(key, dim), ...], the first one
    required. All present keys must agree; a key that disagrees with the others is reported as the mis-shaped key
    it is (rather than as whatever the constructor says about the odd value). Returns the value."""
    first = sources[0][0]
    _shape(sd, first, arch)
    seen = [(key, dim, tuple(sd[key].shape)) for key, dim in sources if key in sd]
    values = [shape[dim] if len(shape) > dim else None for _, dim, shape in seen]
    counts = {v: values.count(v) for v in values if v is not None}
    if len(counts) == 1 and None not in values:
        return values[0]
    best = max(counts.values()) if counts else 0
    winners = [v for v, c in counts.items() if c == best]
    if len(winners) == 1 and best > 1:
        value = winners[0]
        odd = [(k, list(shape)) for (k, _, shape), v in zip(seen, values) if v != value]
        agree = [k for (k, _, _), v in zip(seen, values) if v == value]
        raise CheckpointError(
            f"arch {arch!r}: mis-shaped key(s) {', '.join(f'{k!r} of shape {sh}' for k, sh in odd)}: {best} other "
            f"keys ({', '.join(repr(k) for k in agree[:4])}{' ...' if len(agree) > 4 else ''}) give {name}={value}; "
            f"the checkpoint is damaged or edited")
    raise CheckpointError(f"arch {arch!r}: the keys disagree on {name}: "
                          + ", ".join(f"{k!r} has shape {list(shape)}" for k, _, shape in seen)
                          + "; a key is mis-shaped (damaged or edited checkpoint)")


def _count(sd, prefix):
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in sd if (m := pat.match(k))})


def detect(sd):
    """Return ``(arch, reason)`` from the keys alone (TPC variants are reported as their base model)."""
    if "Transformer_encoder_1.pos_embed" in sd or any(k.startswith("Transformer_hypothesis.") for k in sd):
        return "mhformer", "keys 'Transformer_encoder_k.*' and 'Transformer_hypothesis.*' (MHFormer family)"
    if any(k.startswith("STEblocks.") for k in sd):
        if "x_token" in sd or any(k.startswith("cross_attention.") for k in sd):
            return "hot_mixste", "keys 'STEblocks.*' plus 'x_token' / 'cross_attention.*' (HoT-MixSTE)"
        return "mixste", "keys 'STEblocks.*' / 'TTEblocks.*' without 'x_token' (MixSTE family)"
    if "branch2.0.hconv.group_weight" in sd:
        return "px_shuffle_unit", "keys 'branch2.0.hconv.*' (parallel X-shuffle unit: HW-SUSA in branch2)"
    if "branch2.0.group_weight" in sd:
        return "sx_shuffle_unit", "keys 'branch2.0.group_weight' (sequential X-shuffle unit)"
    if "hconv.group_weight" in sd:
        return "hwsusa", "keys 'hconv.*' and 'wconv.*' (HW-SUSA)"
    if "group_weight" in sd:
        gw = tuple(sd["group_weight"].shape)
        if len(gw) == 4 and gw[2] > 1:
            return "hsusa", f"'group_weight' of shape {list(gw)} (a per-row vector: H-wise SUSA)"
        return "wsusa", f"'group_weight' of shape {list(gw)} (a per-column vector: W-wise SUSA)"
    raise CheckpointError(
        "cannot recognise the architecture: no known key family (MHFormer 'Transformer_encoder_1.*', MixSTE "
        "'STEblocks.*', SUSA 'group_weight', X-shuffle 'branch2.*') in keys "
        f"{sorted(sd)[:12]}{' ...' if len(sd) > 12 else ''}; pass arch= one of {sorted(MODELS)}")


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
    modes = {mode: HWSUSA.split(h + w, mode) for mode in (None, "hw", "wh")}
    found = [m for m, split in modes.items() if split == (h, w)]
    if not found:
        raise CheckpointError(f"arch {arch!r}: hconv has {h} and wconv {w} channels, which no HW-SUSA mode "
                              f"(None: halves, 'hw': 3/4 + 1/4, 'wh': 1/4 + 3/4) produces")
    return {
        "channels": (h + w, f"hconv ({h}) + wconv ({w}) channels"),
        "mode": (found[0], f"channel split {h}:{w}"),
        "ln_enable": (prefix + "hconv.ln.weight" in sd, f"'{prefix}hconv.ln.*' present or not"),
    }


def infer(arch, sd):
    """Hyperparameters determined by the shapes of ``sd`` for ``arch``: ``{name: (value, evidence)}``."""
    fam = family(arch)
    if fam == "mhformer":
        return _infer_mhformer(sd, arch)
    if fam in ("mixste", "hot_mixste"):
        return _infer_mixste(sd, arch)
    if fam in ("hsusa", "wsusa"):
        return {"channels": (_susa_channels(sd, "", arch), "conv.conv.weight rows"),
                "ln_enable": ("ln.weight" in sd, "'ln.*' present or not")}
    if fam == "hwsusa":
        return _infer_hwsusa(sd, arch)
    if fam == "sx_shuffle_unit":
        bf = _susa_channels(sd, "branch2.0.", arch)
    else:
        bf = _infer_hwsusa(sd, arch, "branch2.0.")["channels"][0]
    return {"in_channels": (2 * bf, f"branch2 works on half the channels ({bf})"),
            "out_channels": (2 * bf, f"branch2 works on half the channels ({bf})")}


def resolve(sd, arch=None, config=None):
    """Choose the architecture and its full constructor config. Returns ``(arch, kwargs, reason)``."""
    config = dict(config or {})
    detected, why = detect(sd)
    if arch is None:
        arch, reason = detected, f"inferred from {why}"
        tpc_keys = sorted(k for k in ("token_num", "layer_index") if k in config)
        if arch in ("mhformer", "mixste") and tpc_keys:
            arch = "tpc_" + arch
            reason += f"; TPC variant because the config sets {tpc_keys} (its keys equal the base model's)"
    else:
        if arch not in MODELS:
            raise ValueError(f"arch: expected one of {sorted(MODELS)}, got {arch!r}")
        if family(arch) != detected:
            raise CheckpointError(f"arch={arch!r} was given, but the checkpoint's keys belong to {detected!r}: {why}")
        reason = "given by arch="
    allowed = constructor_args(arch)
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        raise ValueError(f"config: unknown keys {unknown} for arch {arch!r}; accepted: {sorted(allowed)}")
    kwargs = dict(allowed)
    for name, (value, evidence) in infer(arch, sd).items():
        if name in config and config[name] != value:
            raise CheckpointError(f"config: {name}={config[name]!r} contradicts the checkpoint: {evidence}, so "
                                  f"{name}={value!r} (arch {arch!r}, {reason})")
        kwargs[name] = value
    for name, value in config.items():
        kwargs[name] = value
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
