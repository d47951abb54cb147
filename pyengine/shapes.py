"""Reading hyperparameters off a state_dict's tensor shapes, with clear errors (shared by ``pyengine.arch`` and
the MotionBERT checkpoint pieces): a required key's shape, a value several keys must agree on, a block count."""
import re

from .errors import CheckpointError


def key_shape(sd, key, arch):
    if key not in sd:
        raise CheckpointError(f"arch {arch!r}: the checkpoint has no key {key!r}, which this architecture needs "
                              f"to infer its shape (keys present start with {sorted(sd)[:8]})")
    return tuple(sd[key].shape)


def vote(sd, arch, name, sources):
    """A hyperparameter that several keys' shapes determine: ``sources`` = [(key, dim), ...], the first one
    required. All present keys must agree; a key that disagrees with the others is reported as the mis-shaped key
    it is (rather than as whatever the constructor says about the odd value). Returns the value."""
    first = sources[0][0]
    key_shape(sd, first, arch)
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


def block_indices(sd, prefix):
    """The block numbers ``i`` of the keys ``prefix + "i." ...`` (e.g. ``blocks_st.``)."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return {int(m.group(1)) for k in sd if (m := pat.match(k))}


def block_count(sd, prefix):
    return len(block_indices(sd, prefix))
