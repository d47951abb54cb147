"""Checkpoint pieces for MotionBERT / HoT-MotionBERT (SPEC.md §7), for ``pyengine.load`` to call.

* :func:`is_mmpose` / :func:`from_mmpose`: MMPose's ``DSTFormer`` backbone + ``MotionRegressionHead`` names
  (``backbone.*`` / ``head.*``) -> the published DSTformer names; :func:`to_mmpose` is the inverse.
* :func:`detect`: whether a state_dict with the published names is MotionBERT or HoT-MotionBERT (or neither).
* :func:`infer` ``(sd, arch)``: every hyperparameter the shapes determine, as ``{name: (value, evidence)}`` (the
  ``ArchSpec.infer`` of ``pyengine.arch``), at any width; keys that disagree are reported as the mis-shaped keys
  they are. :func:`signature_motionbert` / :func:`signature_hot_motionbert` are the ``ArchSpec.signature``s.

``num_heads`` cannot be read from shapes (config, default 8), nor can HoT's ``layer_index`` / ``tie_break``.
Missing / unexpected / mis-shaped keys beyond the ones read here are the strict key check's job
(``pyengine.load.check_keys`` against the model built from the inferred config).
"""
import math
import re

from .errors import CheckpointError
from .shapes import block_indices as _indices, key_shape as _shape, vote as _vote

ARCHS = ("motionbert", "hot_motionbert")
HOT_KEYS = ("pos_embed_token", "x_token")  # plus cross_attention.*

# MMPose name -> published name, for the keys that are not just "backbone." + the published name.
_MMPOSE_MLP = re.compile(r"^(blocks_(?:st|ts)\.\d+\.mlp_[st])\.([02])\.(weight|bias)$")
_PUBLISHED_MLP = re.compile(r"^(blocks_(?:st|ts)\.\d+\.mlp_[st])\.(fc1|fc2)\.(weight|bias)$")
_MMPOSE_HEAD = {"pre_logits.fc.weight": "pre_logits.fc.weight", "pre_logits.fc.bias": "pre_logits.fc.bias",
                "fc.weight": "head.weight", "fc.bias": "head.bias"}


def is_mmpose(sd) -> bool:
    """True for an MMPose MotionBERT state_dict (``backbone.blocks_st.*`` / ``backbone.joints_embed.*``)."""
    return any(k.startswith(("backbone.blocks_st.", "backbone.joints_embed.")) for k in sd)


def _published_name(key):
    """The published name of one MMPose key, or raise naming it."""
    if key.startswith("head."):
        rest = key[len("head."):]
        if rest not in _MMPOSE_HEAD:
            raise CheckpointError(f"MMPose MotionBERT checkpoint: unexpected head key {key!r} (MotionRegressionHead "
                                  f"has {sorted('head.' + k for k in _MMPOSE_HEAD)})")
        return _MMPOSE_HEAD[rest]
    if not key.startswith("backbone."):
        raise CheckpointError(f"MMPose MotionBERT checkpoint: unexpected key {key!r} (expected 'backbone.*' "
                              f"(DSTFormer) and 'head.*' (MotionRegressionHead) keys only)")
    rest = key[len("backbone."):]
    # Published-only spellings under backbone. are not MMPose's: refuse them rather than guess.
    if rest == "pos_embed" or rest.startswith("ts_attn.") or _PUBLISHED_MLP.match(rest):
        raise CheckpointError(f"MMPose MotionBERT checkpoint: key {key!r} mixes the published DSTformer name "
                              f"{rest!r} into MMPose's names (MMPose: spat_embed, attn_regress.i, mlp_s.0 / .2)")
    if rest == "spat_embed":
        return "pos_embed"
    if rest.startswith("attn_regress."):
        return "ts_attn." + rest[len("attn_regress."):]
    m = _MMPOSE_MLP.match(rest)
    if m:
        return f"{m.group(1)}.{'fc1' if m.group(2) == '0' else 'fc2'}.{m.group(3)}"
    return rest


def from_mmpose(sd):
    """``(state_dict with the published names, note)`` from an MMPose MotionBERT ``state_dict`` (SPEC.md §7):
    ``backbone.spat_embed`` -> ``pos_embed``, ``backbone.attn_regress.i`` -> ``ts_attn.i``, ``mlp_{s,t}.0`` /
    ``.2`` -> ``fc1`` / ``fc2``, ``head.pre_logits.fc`` -> ``pre_logits.fc``, ``head.fc`` -> ``head``, every other
    ``backbone.X`` -> ``X``. A key outside that scheme, or two keys landing on one name, is an error naming it."""
    out, origin = {}, {}
    for key, value in sd.items():
        new = _published_name(key)
        if new in out:
            raise CheckpointError(f"MMPose MotionBERT checkpoint: keys {origin[new]!r} and {key!r} both map to "
                                  f"{new!r}")
        out[new], origin[new] = value, key
    return out, "renamed MMPose's DSTFormer / MotionRegressionHead keys (backbone.*, head.*) to the published names"


def to_mmpose(sd):
    """The inverse of :func:`from_mmpose`: published DSTformer names -> MMPose's."""
    out = {}
    for key, value in sd.items():
        m = _PUBLISHED_MLP.match(key)
        if key == "pos_embed":
            new = "backbone.spat_embed"
        elif key.startswith("ts_attn."):
            new = "backbone.attn_regress." + key[len("ts_attn."):]
        elif m:
            new = f"backbone.{m.group(1)}.{'0' if m.group(2) == 'fc1' else '2'}.{m.group(3)}"
        elif key.startswith("pre_logits.fc."):
            new = "head." + key
        elif key.startswith("head."):
            new = "head.fc." + key[len("head."):]
        else:
            new = "backbone." + key
        out[new] = value
    return out


def detect(sd):
    """``(arch, reason)`` for a state_dict with the published names, or None if it is not MotionBERT's."""
    if not any(k.startswith(("blocks_st.", "blocks_ts.")) for k in sd):
        return None
    hot = sorted({k.split(".")[0] for k in sd if k in HOT_KEYS or k.startswith("cross_attention.")})
    if hot:
        return "hot_motionbert", f"keys 'blocks_st.*' / 'blocks_ts.*' plus {hot} (HoT-MotionBERT)"
    return "motionbert", "keys 'blocks_st.*' / 'blocks_ts.*' without 'x_token' / 'cross_attention.*' (DSTformer)"


def signature_hot_motionbert(sd):
    """``ArchSpec.signature``: the reason when ``sd``'s keys are HoT-MotionBERT's, else None."""
    found = detect(sd)
    return found[1] if found and found[0] == "hot_motionbert" else None


def signature_motionbert(sd):
    """``ArchSpec.signature``: the reason when ``sd``'s keys are DSTformer's (and not HoT's), else None."""
    found = detect(sd)
    return found[1] if found and found[0] == "motionbert" else None


def mlp_ratio_for(dim_feat: int, hidden: int):
    """An ``mlp_ratio`` with ``int(dim_feat * mlp_ratio) == hidden`` (the published rule): the integer quotient when
    it divides, else the float quotient nudged up until the product no longer rounds below ``hidden``."""
    if hidden % dim_feat == 0:
        return hidden // dim_feat
    ratio = hidden / dim_feat
    while int(dim_feat * ratio) < hidden:
        ratio = math.nextafter(ratio, math.inf)
    if int(dim_feat * ratio) != hidden:  # not reachable for positive ints; kept as a guard, not a fallback
        raise CheckpointError(f"mlp_ratio: no float ratio gives int({dim_feat} * ratio) == {hidden}")
    return ratio


def infer(sd, arch):
    """``ArchSpec.infer`` of both architectures: hyperparameters determined by the shapes of ``sd`` (published
    names) for ``arch``:
    ``{name: (value, evidence)}`` with DSTformer's argument names (``dim_in``, ``dim_out``, ``dim_feat``,
    ``dim_rep``, ``depth``, ``mlp_ratio``, ``num_joints``, ``maxlen``; HoT adds ``token_num``)."""
    if arch not in ARCHS:
        raise ValueError(f"arch: expected one of {ARCHS}, got {arch!r}")
    emb = _shape(sd, "joints_embed.weight", arch)
    dim_feat = _vote(sd, arch, "dim_feat", [("joints_embed.weight", 0), ("pos_embed", 2), ("temp_embed", 3),
                                            ("norm.weight", 0), ("pre_logits.fc.weight", 1),
                                            ("blocks_st.0.norm1_s.weight", 0)])
    counts = {p: len(_indices(sd, p)) for p in ("blocks_st.", "blocks_ts.", "ts_attn.")}
    depth = max(counts.values())
    if depth == 0:
        raise CheckpointError(f"arch {arch!r}: the checkpoint has no 'blocks_st.i.*' / 'blocks_ts.i.*' / "
                              f"'ts_attn.i.*' keys, so the depth is unknown")
    hidden = _vote(sd, arch, "the MLP width", [("blocks_st.0.mlp_s.fc1.weight", 0), ("blocks_st.0.mlp_s.fc2.weight", 1),
                                               ("blocks_st.0.mlp_t.fc1.weight", 0), ("blocks_ts.0.mlp_s.fc1.weight", 0),
                                               ("blocks_ts.0.mlp_t.fc1.weight", 0)])
    ratio = mlp_ratio_for(dim_feat, hidden)
    maxlen_sources = [("temp_embed", 1)] + ([("x_token", 1)] if arch == "hot_motionbert" else [])
    out = {
        "dim_in": (emb[1], f"joints_embed.weight has shape {list(emb)}"),
        "dim_feat": (dim_feat, f"joints_embed.weight has shape {list(emb)}"),
        "dim_rep": (_vote(sd, arch, "dim_rep", [("pre_logits.fc.weight", 0), ("head.weight", 1)]),
                    "pre_logits.fc.weight rows"),
        "dim_out": (_shape(sd, "head.weight", arch)[0], "head.weight rows"),
        "depth": (depth, "number of layers: " + ", ".join(f"{p}i: {n}" for p, n in counts.items())),
        "mlp_ratio": (ratio, f"blocks_st.0.mlp_s.fc1.weight has {hidden} rows = int(dim_feat={dim_feat} * "
                             f"mlp_ratio)"),
        "num_joints": (_shape(sd, "pos_embed", arch)[1], "pos_embed length"),
        "maxlen": (_vote(sd, arch, "maxlen", maxlen_sources), "temp_embed length"),
    }
    if arch == "hot_motionbert":
        out["token_num"] = (_shape(sd, "pos_embed_token", arch)[1], "pos_embed_token length")
    return out


__all__ = ["ARCHS", "is_mmpose", "from_mmpose", "to_mmpose", "detect", "signature_motionbert",
           "signature_hot_motionbert", "infer", "mlp_ratio_for"]
