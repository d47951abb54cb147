"""Preparing keypoints for the lifters: missing-keypoint handling, value checks and the screen normalisation of
SPEC.md §4 (``prepare_keypoints``; ``load_keypoints`` = ``read_keypoints`` then ``prepare_keypoints``).

Missing keypoints: a NaN coordinate, or a score below ``score_threshold``. ``prepare_keypoints`` raises
``KeypointError`` naming them unless ``interpolate=True``, which fills each missing (joint, coordinate) linearly in
time between the nearest present frames and holds the first / last present value at the ends; a joint missing in
every frame is still an error.

Value checks (``check_values``, shared by the readers, ``prepare_keypoints``, ``pyengine.lift``, ``Lifter.push`` and
the CLI): an infinite coordinate is an error where it is read; after normalisation every coordinate must be finite
and within ``[-COORD_LIMIT, COORD_LIMIT]`` (the image spans [-1, 1] in x). The error names the file (when there is
one), the frame, the joint, the value as given and, for pixel input, the normalised value and the image size used.
"""
import numpy as np

from ..skeleton import JOINT_NAMES, normalize_screen
from .common import KeypointError, Keypoints2D, _check_joint_shape
from .layouts import _joint_label
from .readers import read_keypoints

DEFAULT_SCORE_THRESHOLD = 0.3
# Normalised keypoints of a person in the picture lie within about [-1, 1] in x and [-h/w, h/w] in y; a value
# beyond 4 (1.5 image widths outside the picture) is a unit or image-size mistake, never a detection.
COORD_LIMIT = 4.0


def interpolate_missing(xy, missing):
    """Fill ``xy [T, J, 2]`` where ``missing [T, J]``: linear in time per joint and coordinate, holding the first
    / last present value at the ends. Raises ``KeypointError`` if a joint is missing in every frame."""
    xy = np.array(xy, dtype=np.float64)
    t = np.arange(xy.shape[0])
    for j in range(xy.shape[1]):
        ok = ~missing[:, j]
        if not ok.any():
            raise KeypointError(f"joint {j} ({JOINT_NAMES[j]}) is missing in every frame; it cannot be interpolated")
        if not ok.all():
            for c in range(2):
                xy[~ok, j, c] = np.interp(t[~ok], t[ok], xy[ok, j, c])  # np.interp holds the end values
    return xy


def positive_size(value, name, source):
    """A user-given width / height: a positive finite number."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = None
    if isinstance(value, (bool, np.bool_)) or v is None or not (np.isfinite(v) and v > 0):
        raise KeypointError(f"{name}: expected the image {name} in pixels, a positive number, got {value!r}"
                            + ("" if source in ("keypoints", "keypoints_2d") else f" (for {source})"))
    return v


def _given_or_file(name, given, in_file, source):
    """The user's value, the file's, or an error when both are there and differ (nothing silently overridden)."""
    if given is None:
        return in_file
    if in_file is not None and float(given) != float(in_file):
        shown = f"{given:g}" if isinstance(given, (int, float, np.number)) else repr(given)
        raise KeypointError(f"{name}={shown} contradicts {source}, which says {name} {in_file:g}; drop {name}= "
                            f"(CLI --{name}) or fix the file")
    return given


def check_values(x, source="keypoints", *, pixels=None, width=None, height=None, first_frame=0, frame_ids=None):
    """Raise ``KeypointError`` unless every coordinate of the normalised ``x [T, 17, 2]`` is finite and within
    ``[-COORD_LIMIT, COORD_LIMIT]``. The message names ``source`` (the file, or the argument), the frame (``frame_ids``
    [T] or ``first_frame`` + row), the joint, the value as given (``pixels`` when ``x`` came from pixels with
    ``width`` / ``height``) and what to do about it. No host sync: ``x`` is numpy."""
    with np.errstate(invalid="ignore"):
        bad = ~(np.abs(x) <= COORD_LIMIT).all(-1)  # NaN and inf compare False
    if not bad.any():
        return
    t, j = map(int, np.argwhere(bad)[0])
    frame = int(frame_ids[t]) if frame_ids is not None else first_frame + t
    count = f"{int(bad.sum())} such keypoint(s) in {int(bad.any(1).sum())} frame(s)"
    where = f"{source}: frame {frame} {_joint_label(j)}"
    value = tuple(float(v) for v in x[t, j])
    if not np.isfinite(x[t, j]).all() and (pixels is None or not np.isfinite(pixels[t, j]).all()):
        raise KeypointError(f"{where}: coordinate {value} is not finite ({count}); expected finite values (fill "
                            f"missing keypoints first: interpolate=True, CLI --interpolate)")
    limit = f"[-{COORD_LIMIT:g}, {COORD_LIMIT:g}]"
    if pixels is not None:
        px = tuple(float(v) for v in pixels[t, j])
        raise KeypointError(f"{where}: ({px[0]:.6g}, {px[1]:.6g}) px is ({value[0]:.3g}, {value[1]:.3g}) after "
                            f"normalisation with width={width:g}, height={height:g}, outside {limit} (the image "
                            f"spans [-1, 1] in x) ({count}); check the image size (width=, height=; CLI --width "
                            f"--height) and that the keypoints are in pixels")
    raise KeypointError(f"{where}: ({value[0]:.6g}, {value[1]:.6g}) is outside {limit}, the range of screen-"
                        f"normalised keypoints (the image spans [-1, 1] in x) ({count}); values like these look "
                        f"like pixels: give the image size (width= and height=; CLI --width --height) instead of "
                        f"treating them as normalised")


def check_confidence(confidence, source="confidence", *, frame_ids=None):
    """The confidence channel of a 3-channel lifter (MotionBERT, SPEC.md §7: the detector's confidence in
    [0, 1]) -> float32 ``[T, 17]``; a value outside [0, 1] (or NaN) is a ``KeypointError`` naming the frame and
    joint. Not applied to 2-channel lifters, which only compare scores with ``score_threshold``."""
    c = np.asarray(confidence, dtype=np.float64)
    bad = ~((c >= 0) & (c <= 1))
    if bad.any():
        t, j = map(int, np.argwhere(bad)[0])
        frame = int(frame_ids[t]) if frame_ids is not None else t
        raise KeypointError(f"{source}: frame {frame} {_joint_label(j)}: score {c[t, j]:g}; a confidence lifter "
                            f"(MotionBERT) takes scores in [0, 1] ({int(bad.sum())} outside)")
    return c.astype(np.float32)


def prepare_keypoints(kp, *, width=None, height=None, normalized=None, scores=None,
                      score_threshold=DEFAULT_SCORE_THRESHOLD, interpolate=False, source=None,
                      return_confidence=False):
    """Validate, fill and normalise keypoints for the lifters: -> float32 ``[T, 17, 2]`` in the screen space of
    SPEC.md §4 (``X / w * 2 - [1, h / w]``).

    kp: a ``Keypoints2D`` (its scores / width / height / normalized are used; a width= or height= that contradicts
        the file's is an error) or an array ``[T, 17, 2]`` (Human3.6M order) in pixels.
    width, height: image size in pixels (both, positive); not needed (and refused) when the keypoints are
        normalised.
    normalized: the keypoints are already normalised (no width / height); default: the Keypoints2D's flag, else
        False.
    score_threshold: in [0, 1]; keypoints scoring below it count as missing (ignored when there are no scores).
    interpolate: fill missing keypoints (NaN or low score) and absent frames linearly in time; otherwise they raise
        KeypointError.
    source: what to call the keypoints in messages (default: the file, or "keypoints").
    return_confidence: also return the confidence channel of 3-channel lifters (MotionBERT): ``(keypoints,
        confidence)``, confidence float32 ``[T, 17]`` = the scores, 0.0 where a keypoint was filled (its position is
        not a detection), or None when there are no scores (range: ``check_confidence``).
    Every normalised coordinate must be finite and within ``[-COORD_LIMIT, COORD_LIMIT]`` (``check_values``).
    """
    if isinstance(score_threshold, (bool, np.bool_)) or not isinstance(score_threshold, (int, float, np.number)) \
            or not 0 <= score_threshold <= 1:
        raise KeypointError(f"score_threshold: expected a number in [0, 1], got {score_threshold!r}")
    if normalized and (width is not None or height is not None):
        raise KeypointError(f"normalized=True with width={width!r}, height={height!r}: normalised keypoints have no "
                            f"image size; give either normalized=True or width= and height=")
    frame_ids, absent = None, ()
    if isinstance(kp, Keypoints2D):
        xy, source = kp.xy, source or kp.source
        scores = kp.scores if scores is None else scores
        frame_ids, absent = kp.frame_ids, kp.absent_frames
        if normalized is None and kp.normalized and (width is not None or height is not None):
            raise KeypointError(f"width={width!r}, height={height!r}: {source} holds normalised keypoints, which "
                                f"have no image size")
        normalized = kp.normalized if normalized is None else normalized
        if not normalized:
            width = _given_or_file("width", width, kp.width, source)
            height = _given_or_file("height", height, kp.height, source)
    else:
        xy, source = kp, source or "keypoints"
        if hasattr(xy, "detach"):  # a torch tensor
            xy = xy.detach().cpu().numpy()
        xy = np.asarray(xy)
        if not np.issubdtype(xy.dtype, np.number) or np.issubdtype(xy.dtype, np.complexfloating):
            raise KeypointError(f"{source}: expected a real numeric array, got dtype {xy.dtype}")
        xy = xy.astype(np.float64)
        _check_joint_shape(xy, source)
    normalized = bool(normalized)
    if not normalized:
        if width is None or height is None:
            given = f"width={width!r}, height={height!r}"
            raise KeypointError(f"{source}: pixel keypoints need the image size, got {given}: pass both width= and "
                                f"height= (CLI: --width --height), or normalized=True if they are already "
                                f"screen-normalised")
        width, height = positive_size(width, "width", source), positive_size(height, "height", source)
    if np.isinf(xy).any():
        t, j = map(int, np.argwhere(np.isinf(xy).any(-1))[0])
        frame = int(frame_ids[t]) if frame_ids is not None else t
        raise KeypointError(f"{source}: frame {frame} {_joint_label(j)}: infinite coordinate {tuple(xy[t, j])} "
                            f"({int(np.isinf(xy).any(-1).sum())} such keypoints); expected finite values, or NaN "
                            f"for a missing keypoint")
    if absent and not interpolate:
        raise KeypointError(f"{source}: {len(absent)} frame(s) inside frame_id {int(frame_ids[0])}..."
                            f"{int(frame_ids[-1])} are not in the file, first {list(absent[:10])}; lifting without "
                            f"them would shift every later output frame against the video. Pass interpolate=True "
                            f"(CLI: --interpolate) to fill them linearly in time")
    missing = np.isnan(xy).any(-1)
    if scores is not None:
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != xy.shape[:2]:
            raise KeypointError(f"scores: expected shape {list(xy.shape[:2])}, got {list(scores.shape)}")
        missing |= ~(scores >= score_threshold)  # NaN scores count as missing too
    if missing.any():
        if not interpolate:
            ids = frame_ids if frame_ids is not None else np.arange(len(xy))
            where = [(int(ids[t]), JOINT_NAMES[j]) for t, j in np.argwhere(missing)[:5]]
            reason = "NaN or score below score_threshold=%g" % score_threshold if scores is not None else "NaN"
            raise KeypointError(
                f"{source}: {int(missing.sum())} missing keypoints ({reason}) in {int(missing.any(1).sum())} of "
                f"{len(xy)} frames, first (frame, joint): {where}; pass interpolate=True (CLI: --interpolate) to "
                f"fill them linearly in time")
        xy = interpolate_missing(xy, missing)
    confidence = None
    if return_confidence and scores is not None:
        confidence = np.where(missing, 0.0, scores).astype(np.float32)
    if normalized:
        check_values(xy, source, frame_ids=frame_ids)
        x = xy
    else:
        with np.errstate(over="ignore", invalid="ignore"):  # huge values are reported by check_values, not warned
            x = normalize_screen(xy, width, height)
        check_values(x, source, pixels=xy, width=width, height=height, frame_ids=frame_ids)
    return (x.astype(np.float32), confidence) if return_confidence else x.astype(np.float32)


def load_keypoints(path, *, width=None, height=None, normalized=None, score_threshold=DEFAULT_SCORE_THRESHOLD,
                   interpolate=False, return_confidence=False, **read_options):
    """``read_keypoints`` then ``prepare_keypoints``: returns ``(keypoints [T, 17, 2] float32 normalised,
    Keypoints2D as read)``, or ``(keypoints, confidence, Keypoints2D)`` with ``return_confidence`` (see
    ``prepare_keypoints``). ``read_options``: format, layout, subject, action, camera."""
    kp = read_keypoints(path, **read_options)
    out = prepare_keypoints(kp, width=width, height=height, normalized=normalized, score_threshold=score_threshold,
                            interpolate=interpolate, return_confidence=return_confidence)
    return (*out, kp) if return_confidence else (out, kp)
