"""Several people in one video: per-person tracks from per-frame detections (``build_tracks``), for
``pyengine.lift_tracks`` (docs/lifting.md, "Several people").

Rule:

* **track_id in the file**: every instance has one (``read_detections`` refuses a file where only some do, or
  where an id appears twice in a frame); instances with the same id are one person.
* **otherwise, frame-to-frame optimal assignment**: frames are visited in video order; the instances of a frame
  are matched to the active tracks by the Hungarian algorithm (``scipy.optimize.linear_sum_assignment``) on the
  cost ``1 - OKS`` (object keypoint similarity of the instance with the track's last pose, below). A pair whose
  OKS is below ``min_oks`` is never matched (gating); among the allowed pairs the assignment matches as many as
  possible, then minimises the summed cost. An unmatched instance starts a new track; a track that has not been
  matched for more than ``max_gap`` frames ends (a later detection of that person is a new track). Instance order
  within a frame does not matter: each frame's instances are first put in a canonical order (by their
  coordinates), and new tracks are numbered 0, 1, 2 ... in order of their first frame, then that order.
* **segments**: a track's frames are split where it has no detection for more than ``max_gap`` consecutive frames
  (possible with ``track_id``); shorter gaps stay inside the segment and are filled linearly in time, which needs
  ``interpolate=True`` as every missing keypoint does (``prepare_keypoints``). Each segment is lifted as a
  sequence of its own (edge-padded at its ends).
* **minimum length**: a segment spanning fewer than ``min_length`` frames (a spurious detection, a person
  glimpsed) is skipped and reported in ``Tracks.skipped``, never silently dropped.
* an instance without any usable keypoint (every joint NaN or scoring below ``score_threshold``) cannot be
  associated nor lifted: it is skipped and reported in ``Tracks.skipped_instances``.

OKS (COCO): ``sum_j v_j exp(-d_j^2 / (2 s^2 k_j^2)) / sum_j v_j`` over the joints ``v_j`` present (finite, score
at least ``score_threshold``) in both poses, with ``d_j`` the joint's distance, ``s^2`` the mean area of the two
poses' keypoint bounding boxes and ``k_j = 2 sigma_j`` the COCO per-keypoint constants (Human3.6M joints take the
sigma of the COCO joints they come from; spine and hip the hips', thorax the shoulders'). 1 for identical poses,
towards 0 for poses far apart relative to their size; 0 when no joint is present in both.
"""
from dataclasses import dataclass, field

import numpy as np

from .keypoints import (DEFAULT_SCORE_THRESHOLD, Detections, KeypointError, Keypoints2D,
                        prepare_keypoints, read_detections)

__all__ = ["build_tracks", "Tracks", "Segment", "oks", "DEFAULT_MIN_OKS", "DEFAULT_MAX_GAP", "DEFAULT_MIN_LENGTH"]

DEFAULT_MIN_OKS = 0.3  # consecutive frames of one person score ~0.9+; two people side by side well under 0.1
DEFAULT_MAX_GAP = 10  # frames (0.2 s at 50 fps, 0.4 s at 25 fps): a short occlusion, not a new person
DEFAULT_MIN_LENGTH = 10  # frames: shorter segments are too short to lift meaningfully (and mostly spurious)
# COCO keypoint sigmas (pycocotools) of the joints each Human3.6M joint is made from (keypoints.COCO_TO_H36M).
_HIPS, _KNEES, _ANKLES, _SHOULDERS, _ELBOWS, _WRISTS, _NOSE, _EYES = .107, .087, .089, .079, .072, .062, .026, .025
SIGMAS = np.array([_HIPS, _HIPS, _KNEES, _ANKLES, _HIPS, _KNEES, _ANKLES, _HIPS, _SHOULDERS, _NOSE, _EYES,
                   _SHOULDERS, _ELBOWS, _WRISTS, _SHOULDERS, _ELBOWS, _WRISTS])
_GATED = 1e6  # cost of a pair below min_oks: larger than any sum of real costs (each at most 1)


def oks(a, a_ok, b, b_ok):
    """Object keypoint similarity of every pose in ``a [m, 17, 2]`` with every pose in ``b [n, 17, 2]`` -> ``[m, n]``;
    ``a_ok [m, 17]`` / ``b_ok [n, 17]`` mark the joints present (module docstring)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)

    def area(x, ok):
        lo = np.where(ok[..., None], x, np.inf).min(1)
        hi = np.where(ok[..., None], x, -np.inf).max(1)
        wh = np.where(ok.any(1)[:, None], hi - lo, 0.0)
        return wh[:, 0] * wh[:, 1]
    s2 = np.maximum((area(a, a_ok)[:, None] + area(b, b_ok)[None]) / 2, 1e-12)  # a point-like pose: tiny, not 0
    both = a_ok[:, None] & b_ok[None]
    d2 = np.where(both, ((np.nan_to_num(a)[:, None] - np.nan_to_num(b)[None]) ** 2).sum(-1), 0.0)
    e = np.exp(-d2 / (2 * s2[..., None] * (2 * SIGMAS) ** 2))
    n = both.sum(-1)
    return np.where(n > 0, (e * both).sum(-1) / np.maximum(n, 1), 0.0)


@dataclass
class Segment:
    """A run of one track without a gap longer than ``max_gap``: rows ``start .. start + len - 1`` of the video's
    frame axis, ``keypoints [L, 17, 2]`` float32 normalised (gaps filled), ``detected [L]`` (False: filled),
    ``confidence [L, 17]`` float32: the keypoint scores (1.0 when the file has none), 0.0 where a keypoint was
    filled; the third input channel of confidence lifters (MotionBERT)."""

    track_id: int
    start: int
    keypoints: np.ndarray
    detected: np.ndarray
    confidence: np.ndarray = None

    @property
    def stop(self):
        return self.start + len(self.keypoints)


@dataclass
class Tracks:
    """The people of a video (``build_tracks``): the lifted ``segments`` (ordered by track id, then start), the
    ``track_ids`` they belong to, what was ``skipped`` (segments shorter than ``min_length``; dicts with
    track_id, first_frame, last_frame, frames, detections) and ``skipped_instances`` (``"frame F instance I"``
    without a usable keypoint); ``method`` ``"track_id"`` (from the file) or ``"oks"`` (assignment);
    ``has_scores``: the file gave keypoint scores (otherwise the segments' confidence is 1.0 where detected)."""

    frame_ids: np.ndarray
    segments: list
    skipped: list
    skipped_instances: list
    method: str
    params: dict
    source: str = "<detections>"
    fps: object = None
    width: object = None
    height: object = None
    has_scores: bool = True
    track_ids: tuple = field(init=False)

    def __post_init__(self):
        self.track_ids = tuple(sorted({s.track_id for s in self.segments}))

    def summary(self):
        """One line per fact: how many tracks were kept and how, each skipped segment and skipped instances."""
        p = self.params
        how = ("track_id from the file" if self.method == "track_id" else
               f"optimal assignment on OKS, min_oks={p['min_oks']:g}")
        filled = sum(int((~s.detected).sum()) for s in self.segments)
        lines = [f"{self.source}: {len(self.track_ids)} track(s) {list(self.track_ids)} in {len(self.segments)} "
                 f"segment(s) ({how}; max_gap={p['max_gap']}, min_length={p['min_length']}; {filled} frame(s) of "
                 f"short gaps filled)"]
        for s in self.skipped:
            lines.append(f"{self.source}: skipped track {s['track_id']} frames {s['first_frame']}..{s['last_frame']}"
                         f" ({s['frames']} frame(s), {s['detections']} detection(s)): shorter than min_length="
                         f"{p['min_length']}")
        if self.skipped_instances:
            lines.append(f"{self.source}: skipped {len(self.skipped_instances)} instance(s) without any keypoint "
                         f"present (NaN or score below {p['score_threshold']:g}), first "
                         f"{self.skipped_instances[:5]}")
        return lines


def _int_at_least(value, low, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    return int(value)


def _canonical(det, members):
    """``members`` (instance numbers of one frame) sorted by their coordinates, then scores: file order never
    matters."""
    xy = np.nan_to_num(det.xy[members].reshape(len(members), -1), nan=np.inf)
    keys = np.concatenate([xy, det.scores[members]], axis=1)
    return members[np.lexsort(keys.T[::-1])]


def _associate(det, present, usable, min_oks, max_gap):
    """Track label of every instance (-1: not usable) by frame-to-frame optimal assignment (module docstring)."""
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:  # pinned in requirements.txt; say what is missing rather than fail obscurely
        raise ImportError("pyengine.tracks: associating detections without track_id needs scipy "
                          "(pip install scipy)") from None
    labels = np.full(len(det.row), -1, dtype=np.int64)
    order = np.argsort(det.row, kind="stable")
    bounds = np.searchsorted(det.row[order], np.arange(len(det.frame_ids) + 1))
    active = []  # [track id, last row, instance number of its last pose]
    new_id = 0
    for t in range(len(det.frame_ids)):
        members = order[bounds[t]:bounds[t + 1]]
        members = _canonical(det, members[usable[members]]) if len(members) else members
        active = [a for a in active if t - a[1] - 1 <= max_gap]  # a longer gap ends the track
        matched = set()
        if active and len(members):
            last = np.array([a[2] for a in active])
            sim = oks(det.xy[last], present[last], det.xy[members], present[members])
            cost = np.where(sim >= min_oks, 1 - sim, _GATED)
            for i, j in zip(*linear_sum_assignment(cost)):
                if sim[i, j] >= min_oks:
                    labels[members[j]] = active[i][0]
                    active[i][1:] = [t, members[j]]
                    matched.add(j)
        for j, n in enumerate(members):
            if j not in matched:
                labels[n], new_id = new_id, new_id + 1
                active.append([labels[n], t, n])
    return labels


def build_tracks(detections, *, width=None, height=None, normalized=None, score_threshold=DEFAULT_SCORE_THRESHOLD,
                 interpolate=False, min_oks=DEFAULT_MIN_OKS, max_gap=DEFAULT_MAX_GAP,
                 min_length=DEFAULT_MIN_LENGTH):
    """Tracks of the people in ``detections`` (a ``keypoints.Detections`` or the path of an MMPose ``.json``),
    each segment validated, filled and normalised as ``prepare_keypoints`` does (``width`` / ``height`` /
    ``normalized`` / ``score_threshold`` / ``interpolate`` mean the same). ``min_oks`` in (0, 1]: the gate of the
    assignment (ignored, and refused, when the file has ``track_id``); ``max_gap`` >= 0 frames: longer gaps end a
    track / split a segment; ``min_length`` >= 1 frames: shorter segments are skipped and reported. Rules in the
    module docstring. Raises ``KeypointError`` for bad keypoints (naming the track, frame and joint)."""
    if not isinstance(detections, Detections):
        detections = read_detections(detections)
    det = detections
    max_gap = _int_at_least(max_gap, 0, "max_gap")
    min_length = _int_at_least(min_length, 1, "min_length")
    if det.track_id is not None and min_oks != DEFAULT_MIN_OKS:
        raise ValueError(f"min_oks={min_oks!r}: {det.source} has track_id on every instance, so no assignment "
                         f"(and no OKS gate) is used; drop min_oks (CLI --min-oks)")
    if isinstance(min_oks, (bool, np.bool_)) or not isinstance(min_oks, (int, float, np.number)) \
            or not 0 < min_oks <= 1:
        raise ValueError(f"min_oks: expected a number in (0, 1], got {min_oks!r}")
    if isinstance(score_threshold, (bool, np.bool_)) or not isinstance(score_threshold, (int, float, np.number)) \
            or not 0 <= score_threshold <= 1:
        raise KeypointError(f"score_threshold: expected a number in [0, 1], got {score_threshold!r}")
    present = ~np.isnan(det.xy).any(-1) & (det.scores >= score_threshold)
    usable = present.any(1)
    skipped_instances = [det.where(n) for n in np.flatnonzero(~usable)]
    if det.track_id is not None:
        labels, method = np.where(usable, det.track_id, np.iinfo(np.int64).min), "track_id"
    else:
        labels, method = _associate(det, present, usable, min_oks, max_gap), "oks"
    params = dict(min_oks=float(min_oks), max_gap=max_gap, min_length=min_length,
                  score_threshold=float(score_threshold))
    segments, skipped = [], []
    for tid in np.unique(labels[usable]):
        members = np.flatnonzero(usable & (labels == tid))
        members = members[np.argsort(det.row[members], kind="stable")]
        rows = det.row[members]
        cuts = np.flatnonzero(np.diff(rows) - 1 > max_gap) + 1
        for part in np.split(members, cuts):
            r = det.row[part]
            first, last = int(r[0]), int(r[-1])
            if last - first + 1 < min_length:
                skipped.append(dict(track_id=int(tid), first_frame=int(det.frame_ids[first]),
                                    last_frame=int(det.frame_ids[last]), frames=last - first + 1,
                                    detections=len(part)))
                continue
            segments.append(_segment(det, int(tid), part, first, last, width=width, height=height,
                                     normalized=normalized, score_threshold=score_threshold,
                                     interpolate=interpolate))
    return Tracks(det.frame_ids, segments, skipped, skipped_instances, method, params, source=det.source,
                  fps=det.fps, width=det.width, height=det.height, has_scores=det.has_scores)


def _segment(det, tid, members, first, last, *, interpolate, **prepare):
    """One segment: the detections ``members`` on rows ``first..last``, gaps checked, then ``prepare_keypoints``."""
    L = last - first + 1
    xy, scores = np.full((L, 17, 2), np.nan), np.zeros((L, 17))
    detected = np.zeros(L, dtype=bool)
    rel = det.row[members] - first
    xy[rel], scores[rel], detected[rel] = det.xy[members], det.scores[members], True
    source = f"{det.source} track {tid}"
    ids = det.frame_ids[first:last + 1]
    if not detected.all() and not interpolate:
        gaps = [int(i) for i in ids[~detected]]
        raise KeypointError(f"{source}: {len(gaps)} frame(s) without a detection inside frames {int(ids[0])}..."
                            f"{int(ids[-1])} (gaps of at most max_gap frames stay in the track), first {gaps[:10]};"
                            f" pass interpolate=True (CLI: --interpolate) to fill them linearly in time")
    # (a file without scores has 1.0 on every detection, so only the gaps count as missing)
    kp = Keypoints2D(xy, scores, width=det.width, height=det.height, layout="h36m", source=source, fps=det.fps,
                     frame_ids=ids)
    try:
        x, confidence = prepare_keypoints(kp, interpolate=interpolate, return_confidence=True, **prepare)
    except KeypointError as exc:
        if str(exc).startswith(source) or str(exc).startswith(("width", "height", "normalized")):
            raise
        raise KeypointError(f"{source} (frames {int(ids[0])}...{int(ids[-1])}): {exc}") from None
    return Segment(tid, first, x, detected, confidence)
