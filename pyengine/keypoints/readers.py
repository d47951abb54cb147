"""Reading 2D keypoints from files: ``read_keypoints`` (one person, ``Keypoints2D``) and ``read_detections``
(every instance, ``Detections``). Human3.6M-17 order out (COCO-17 files are converted, ``layouts.coco_to_h36m``),
pixels or normalised as the file is; an infinite value is refused here, NaN (missing) is left to
``pyengine.keypoints.prepare``.

Formats (``read_keypoints``; chosen by the file extension unless ``format=`` is given):

* ``.npz`` (no pickle needed): pyengine / sample style, key ``keypoints_2d`` ``[T, 17, 2|3]`` (optional ``scores``
  ``[T, 17]``, ``width``, ``height``, ``layout`` ``"h36m"|"coco"``, ``normalized``), e.g. the shipped
  ``pyengine/data/sample_walk.npz``.
* ``.npz`` in the VideoPose3D layout: ``positions_2d`` is a pickled ``{subject: {action: [camera arrays]}}`` dict
  (and ``metadata`` a pickled dict). Pickle can run arbitrary code, so these two keys are read with a restricted
  unpickler (``pyengine.safe_pickle.NumpyUnpickler``) that only rebuilds plain containers (dict / list / tuple /
  str / numbers) and numpy arrays and dtypes; any other object in the file is refused (``KeypointError``) before it
  is created. The structure is validated.
  ``metadata['layout_name'] == 'coco'`` (VideoPose3D's in-the-wild files) switches to COCO-17 conversion, and
  ``metadata['video_metadata'][subject]['w'/'h']`` supplies the image size when present.
* ``.json``: MMPose predictions: ``{"instance_info": [{"frame_id", "instances": [...]}, ...]}`` (the top-down demo's
  ``--save-predictions``) or a plain list of such frame dicts (the inferencer); each instance has ``keypoints``
  (``[[x, y], ...]`` or a flat ``[x, y, score, ...]``; ``null`` = missing) and ``keypoint_scores``, COCO-17 order,
  pixels. One person is lifted: per frame, the instance with the highest mean keypoint score. A frame without
  instances has every keypoint missing. ``meta_info.image_width`` / ``image_height`` / ``fps`` (written by
  pyengine's sample) give the image size and frame rate. The video's frame axis is kept: output frame k is
  ``frame_id`` first + k (``Keypoints2D.frame_ids``); a ``frame_id`` the file skips is an absent frame, which
  ``prepare_keypoints`` refuses by name unless ``interpolate=True`` fills it. ``read_detections`` keeps every
  instance of every frame instead (``Detections``, with ``track_id`` when the file has it), for
  ``pyengine.tracks`` / ``pyengine.lift_tracks`` (several people).
* ``.npy``: a float array ``[T, 17, 2]`` (or ``[T, 17, 3]`` with scores), no pickle.
* ``.csv``: one row per frame, 34 columns ``x0, y0, x1, y1, ...`` or 51 columns ``x0, y0, s0, ...``; an optional
  non-numeric header line is skipped.

``.npy`` / ``.csv`` / the sample npz are Human3.6M-17 order unless ``layout="coco"``. ``layout`` does not apply to
MMPose JSON (always COCO-17) or VideoPose3D files (their metadata says), nor ``subject`` / ``action`` / ``camera`` to
anything but VideoPose3D files: passing them there is an error, not a silently ignored option.
"""
import csv
import json
import os
import zipfile
from dataclasses import dataclass

import numpy as np

from ..safe_pickle import NumpyUnpickler, RefusedGlobal
from .common import KeypointError, Keypoints2D
from .layouts import LAYOUTS, _joint_label, coco_to_h36m

FORMATS = ("npz", "json", "npy", "csv")
MAX_FRAMES = 10_000_000  # a frame_id range beyond this is not a video's (and would not fit in memory)


def _split_scores(a, name):
    """``[T, 17, 2|3]`` -> (xy, scores or None)."""
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise KeypointError(f"{name}: expected a real numeric array, got dtype {a.dtype}")
    if a.ndim != 3 or a.shape[1] != 17 or a.shape[2] not in (2, 3):
        raise KeypointError(f"{name}: expected shape [T, 17, 2] (x, y) or [T, 17, 3] (x, y, score) with 17 joints, "
                            f"got {list(a.shape)}")
    if a.shape[0] == 0:
        raise KeypointError(f"{name}: the sequence is empty (shape {list(a.shape)})")
    a = a.astype(np.float64)
    return (a[..., :2], a[..., 2]) if a.shape[2] == 3 else (a, None)


def _finish(xy, scores, layout, source, **kw):
    if layout not in LAYOUTS:
        raise KeypointError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    ids = kw.get("frame_ids")  # the video frame of each row (MMPose frame_id), else the row

    def frame(t):
        return t if ids is None else int(ids[t])
    inf = np.isinf(xy).any(-1)
    if inf.any():  # NaN means "missing" (handled by prepare_keypoints); infinity is a broken file
        t, j = map(int, np.argwhere(inf)[0])
        raise KeypointError(f"{source}: frame {frame(t)} {_joint_label(j, layout)}: infinite coordinate "
                            f"{tuple(xy[t, j])} ({int(inf.sum())} in {int(inf.any(1).sum())} frames); expected "
                            f"finite pixel or normalised values, or NaN for a missing keypoint")
    if scores is not None and np.isinf(scores).any():
        t, j = map(int, np.argwhere(np.isinf(scores))[0])
        raise KeypointError(f"{source}: frame {frame(t)} {_joint_label(j, layout)}: infinite score "
                            f"{scores[t, j]}; expected a finite score (NaN counts as missing)")
    if layout == "coco":
        xy, scores = coco_to_h36m(xy, scores)
    return Keypoints2D(xy, scores, layout=layout, source=source, **kw)


# ---------------------------------------------------------------- VideoPose3D npz: restricted unpickling
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _safe_object_member(zf, member, path):
    """Load the 0-d object array ``member`` (``positions_2d.npy``) of an npz with the restricted unpickler."""
    with zf.open(member) as f:
        try:
            version = np.lib.format.read_magic(f)
            shape, _, dtype = _HEADER_READERS[version](f)
        except (KeyError, ValueError) as exc:
            raise KeypointError(f"{path}: {member}: not a readable .npy member ({exc!r})") from None
        if dtype.hasobject:
            try:
                value = NumpyUnpickler(f).load()
            except RefusedGlobal as exc:
                raise KeypointError(f"{path}: {member}: refusing to unpickle {exc.module}.{exc.name}: only numpy "
                                    f"arrays and plain containers are accepted in a VideoPose3D keypoint "
                                    f"file") from None
            except Exception as exc:
                raise KeypointError(f"{path}: {member} is not a readable pickled object ({exc})") from None
            return value.item() if isinstance(value, np.ndarray) and value.shape == () else value
    raise KeypointError(f"{path}: {member}: expected a pickled dict (object array), got dtype {dtype} shape {shape}")


def _pick(options, wanted, what, path):
    keys = list(options)
    if wanted is None:
        if len(keys) != 1:
            raise KeypointError(f"{path}: holds {len(keys)} {what}s {keys[:20]}; choose one with {what}=")
        return keys[0]
    if wanted not in options:
        raise KeypointError(f"{path}: {what} {wanted!r} not found; available: {keys[:20]}")
    return wanted


def _read_videopose3d(path, zf, subject, action, camera):
    pos = _safe_object_member(zf, "positions_2d.npy", path)
    meta = _safe_object_member(zf, "metadata.npy", path) if "metadata.npy" in zf.namelist() else {}
    if not isinstance(pos, dict) or not all(isinstance(v, dict) for v in pos.values()):
        raise KeypointError(f"{path}: positions_2d must be a dict subject -> dict action -> list of per-camera "
                            f"[T, 17, 2] arrays, got {type(pos).__name__}")
    if not isinstance(meta, dict):
        raise KeypointError(f"{path}: metadata must be a dict, got {type(meta).__name__}")
    subject = _pick(pos, subject, "subject", path)
    action = _pick(pos[subject], action, "action", path)
    cams = pos[subject][action]
    if isinstance(cams, np.ndarray) and cams.dtype != object:
        cams = [cams]
    if not isinstance(cams, (list, tuple, np.ndarray)) or len(cams) == 0:
        raise KeypointError(f"{path}: positions_2d[{subject!r}][{action!r}] must be a non-empty list of per-camera "
                            f"arrays, got {type(cams).__name__}")
    camera = 0 if camera is None else camera
    if not 0 <= camera < len(cams):
        raise KeypointError(f"{path}: camera={camera} out of range: {subject}/{action} has {len(cams)} camera(s)")
    name = f"{path}: positions_2d[{subject!r}][{action!r}][{camera}]"
    xy, scores = _split_scores(cams[camera], name)
    layout = str(meta.get("layout_name", "h36m")).lower()
    layout = "coco" if layout.startswith("coco") else "h36m"
    size = (meta.get("video_metadata") or {}).get(subject) or {}
    where = f"{path}: metadata['video_metadata'][{subject!r}]"
    return _finish(xy, scores, layout, f"{path} [{subject}/{action}/camera {camera}]",
                   width=_number(size.get("w"), f"{where}['w']"), height=_number(size.get("h"), f"{where}['h']"),
                   fps=_number(size.get("fps"), f"{where}['fps']"))


def _number(value, where):
    """A positive finite number stored in a file (image size, fps), or None when absent."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise KeypointError(f"{where}: expected one number, got an array of shape {list(value.shape)}")
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise KeypointError(f"{where}: expected a positive number, got {value!r}")
    if not (np.isfinite(value) and value > 0):
        raise KeypointError(f"{where}: expected a positive finite number, got {value!r}")
    return float(value)


def _read_npz(path, layout, subject, action, camera):
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise KeypointError(f"{path}: not a readable .npz file ({exc})") from None
    with zf:
        names = zf.namelist()
        if "positions_2d.npy" in names:
            if layout is not None:
                raise KeypointError(f"layout={layout!r}: does not apply to {path}, a VideoPose3D file (its metadata "
                                    f"'layout_name' says the joint order)")
            return _read_videopose3d(path, zf, subject, action, camera)
    _not_videopose3d(path, "a pyengine sample .npz", subject=subject, action=action, camera=camera)
    try:
        data = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise KeypointError(f"{path}: cannot read without pickle ({exc})") from None
    try:
        with data:
            return _sample_npz(path, data, layout)
    except ValueError as exc:  # e.g. an object array, which allow_pickle=False refuses
        if isinstance(exc, KeypointError):
            raise
        raise KeypointError(f"{path}: cannot read without pickle ({exc})") from None


def _sample_npz(path, data, layout):
    """The pyengine sample layout: ``keypoints_2d`` plus optional ``scores``, ``width``, ``height`` ..."""
    if "keypoints_2d" not in data.files:
        raise KeypointError(f"{path}: expected a key 'keypoints_2d' [T, 17, 2] (pyengine sample layout) or "
                            f"'positions_2d' (VideoPose3D layout), found keys {data.files}")
    xy, scores = _split_scores(data["keypoints_2d"], f"{path}: keypoints_2d")
    if "scores" in data.files:
        if scores is not None:
            raise KeypointError(f"{path}: scores given twice (keypoints_2d [.., 3] and 'scores')")
        scores = np.asarray(data["scores"], dtype=np.float64)
        if scores.shape != xy.shape[:2]:
            raise KeypointError(f"{path}: scores: expected shape {list(xy.shape[:2])}, got {list(scores.shape)}")
    size = {k: _number(data[k], f"{path}: {k}") if k in data.files else None for k in ("width", "height", "fps")}
    file_layout = str(data["layout"]) if "layout" in data.files else None
    if layout is not None and file_layout is not None and layout != file_layout:
        raise KeypointError(f"layout={layout!r} contradicts {path}, whose 'layout' says {file_layout!r}")
    normalized = bool(data["normalized"]) if "normalized" in data.files else False
    return _finish(xy, scores, file_layout or layout or "h36m", path, normalized=normalized, **size)


def _not_videopose3d(path, kind, **options):
    given = sorted(k for k, v in options.items() if v is not None)
    if given:
        raise KeypointError(f"{', '.join(f'{k}={options[k]!r}' for k in given)}: only applies to VideoPose3D .npz "
                            f"files ('positions_2d'); {path} is {kind}")



# ---------------------------------------------------------------- MMPose JSON
def _instance_keypoints(inst, where):
    """``(xy [17, 2], scores [17])`` of one MMPose instance (scores 1.0 when it has none)."""
    return _instance_keypoints_scored(inst, where)[:2]


def _instance_keypoints_scored(inst, where):
    """``(xy [17, 2], scores [17], whether the instance gives scores)``."""
    if not isinstance(inst, dict) or "keypoints" not in inst:
        raise KeypointError(f"{where}: expected an instance dict with 'keypoints', got {type(inst).__name__}")
    for key in ("keypoints", "keypoint_scores"):
        if key in inst and inst[key] is None:
            raise KeypointError(f"{where}: {key} is null; expected 17 COCO {key.replace('_', ' ')} (null only for "
                                f"a single missing value)")
    try:
        kp = np.asarray(inst["keypoints"], dtype=np.float64)
        scores = (np.asarray(inst["keypoint_scores"], dtype=np.float64).reshape(-1)
                  if "keypoint_scores" in inst else None)
    except (TypeError, ValueError) as exc:
        raise KeypointError(f"{where}: keypoints / keypoint_scores are not numeric arrays ({exc})") from None
    if kp.ndim == 3 and kp.shape[0] == 1:  # some MMPose versions nest one more level
        kp = kp[0]
    if kp.ndim == 1 and kp.size == 51:
        kp = kp.reshape(17, 3)
    if kp.ndim != 2 or kp.shape[0] != 17 or kp.shape[1] not in (2, 3):
        raise KeypointError(f"{where}: keypoints: expected 17 COCO keypoints ([17, 2], [17, 3] or 51 numbers), got "
                            f"shape {list(kp.shape)}")
    scored = scores is not None or kp.shape[1] == 3
    if scores is not None:
        if scores.shape != (17,):
            raise KeypointError(f"{where}: keypoint_scores: expected 17 scores, got {scores.size}")
    elif kp.shape[1] == 3:
        scores = kp[:, 2]
    else:
        scores = np.ones(17)
    return kp[:, :2], scores, scored


def _json_frames(path):
    """Parse an MMPose prediction file: ``(meta_info, frame ids [T], absent ids, records)`` where records are
    ``(row, position in the file's frame list, frame dict)``, every instance list checked to be a list."""
    try:
        with open(path) as f:
            doc = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KeypointError(f"{path}: not valid JSON ({exc})") from None
    meta = doc.get("meta_info", {}) if isinstance(doc, dict) else {}
    frames = doc.get("instance_info") if isinstance(doc, dict) else doc
    if not isinstance(frames, list) or not frames or not all(isinstance(fr, dict) and "instances" in fr
                                                             for fr in frames):
        raise KeypointError(f"{path}: expected MMPose predictions: a non-empty list of frames "
                            "{'frame_id', 'instances': [...]}, or a dict with such a list under 'instance_info'")
    if not isinstance(meta, dict):
        raise KeypointError(f"{path}: meta_info: expected a dict, got {type(meta).__name__}")
    ids, absent = _frame_ids(frames, path)
    row = {int(fid): t for t, fid in enumerate(ids)}
    records = []
    for k, fr in enumerate(frames):
        t = row[int(fr["frame_id"])] if "frame_id" in fr else k
        if fr["instances"] is not None and not isinstance(fr["instances"], list):
            raise KeypointError(f"{path}: frame {int(ids[t])}: instances: expected a list, got "
                                f"{type(fr['instances']).__name__}")
        records.append((t, fr))
    return meta, ids, absent, records


def _json_size(meta, path):
    return dict(width=_number(meta.get("image_width"), f"{path}: meta_info.image_width"),
                height=_number(meta.get("image_height"), f"{path}: meta_info.image_height"),
                fps=_number(meta.get("fps"), f"{path}: meta_info.fps"))


def _read_json(path):
    meta, ids, absent, records = _json_frames(path)
    T = len(ids)
    xy, scores = np.full((T, 17, 2), np.nan), np.zeros((T, 17))
    for t, fr in records:
        best = None
        for i, inst in enumerate(fr["instances"] or []):
            kp, s = _instance_keypoints(inst, f"{path}: frame {int(ids[t])} instance {i}")
            if best is None or s.mean() > best[1].mean():
                best = (kp, s)
        if best is not None:
            xy[t], scores[t] = best
    return _finish(xy, scores, "coco", path, frame_ids=ids, absent_frames=absent, **_json_size(meta, path))


@dataclass
class Detections:
    """Every instance of an MMPose prediction file (``read_detections``), Human3.6M-17 order, pixels.

    N instances: ``row [N]`` (index into ``frame_ids``), ``index [N]`` (position in its frame's instance list),
    ``xy [N, 17, 2]`` float64 (NaN where missing), ``scores [N, 17]`` (1.0 when the file has none),
    ``track_id [N]`` int64 or None when the file has no ``track_id``; ``frame_ids [T]`` the video's frame axis
    (first to last ``frame_id``, no gaps), ``absent_frames`` ids inside it the file has no record of;
    width / height / fps as the file says (or None); ``has_scores``: the file gives keypoint scores."""

    row: np.ndarray
    index: np.ndarray
    xy: np.ndarray
    scores: np.ndarray
    track_id: object
    frame_ids: np.ndarray
    absent_frames: tuple = ()
    width: object = None
    height: object = None
    fps: object = None
    source: str = "<detections>"
    has_scores: bool = True

    @property
    def max_per_frame(self):
        """The most instances any frame has."""
        return int(np.bincount(self.row, minlength=1).max()) if len(self.row) else 0

    @property
    def several_people(self):
        """More than one person: a frame with several instances, or several distinct ``track_id`` values."""
        return self.max_per_frame > 1 or (self.track_id is not None and len(np.unique(self.track_id)) > 1)

    def where(self, n):
        """``"frame F instance I"`` of instance ``n`` (the file's video frame and list position)."""
        return f"frame {int(self.frame_ids[self.row[n]])} instance {int(self.index[n])}"


def read_detections(path, *, format=None):
    """Every instance of an MMPose prediction ``.json`` (not only the best one per frame, as ``read_keypoints``
    keeps): ``Detections`` in Human3.6M-17 order, for ``pyengine.tracks``.

    Refused with ``KeypointError`` (naming the frame and instance): ``track_id`` on only some instances, a
    ``track_id`` that is not an integer or appears twice in one frame, ``keypoint_scores`` on only some
    instances, ``keypoints`` / ``keypoint_scores`` that are null, of the wrong length or not numeric, an infinite
    coordinate or score, and a file without any instance."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"keypoint file {path!r}: is a directory, expected a keypoint file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"keypoint file {path!r}: no such file")
    fmt = format or os.path.splitext(path)[1].lower().lstrip(".")
    if fmt != "json":
        raise KeypointError(f"{path}: several people per frame are read from MMPose .json predictions only, got "
                            f"format {fmt!r}")
    meta, ids, absent, records = _json_frames(path)
    rows, index, xys, scores, tids, has_scores, has_tid = [], [], [], [], [], [], []
    for t, fr in records:
        seen = {}
        for i, inst in enumerate(fr["instances"] or []):
            where = f"{path}: frame {int(ids[t])} instance {i}"
            kp, s, scored = _instance_keypoints_scored(inst, where)
            rows.append(t), index.append(i), xys.append(kp), scores.append(s), has_scores.append(scored)
            has_tid.append("track_id" in inst)
            if "track_id" in inst:
                tid = inst["track_id"]
                if isinstance(tid, float) and tid.is_integer():
                    tid = int(tid)
                if isinstance(tid, bool) or not isinstance(tid, int):
                    raise KeypointError(f"{where}: track_id: expected an integer, got {tid!r}")
                if tid in seen:
                    raise KeypointError(f"{path}: frame {int(ids[t])}: track_id {tid} appears in instances "
                                        f"{seen[tid]} and {i}; expected one instance per track and frame")
                seen[tid] = i
                tids.append(tid)
    if not rows:
        raise KeypointError(f"{path}: no instance in any of its {len(records)} frame(s); nothing to lift")

    def first(flags, value):
        n = flags.index(value)
        return f"frame {int(ids[rows[n]])} instance {index[n]}"
    if any(has_tid) and not all(has_tid):
        raise KeypointError(f"{path}: track_id: {has_tid.count(True)} of {len(has_tid)} instances have one (first "
                            f"without: {first(has_tid, False)}); expected every instance or none to have one")
    if any(has_scores) and not all(has_scores):
        raise KeypointError(f"{path}: keypoint_scores: {has_scores.count(False)} of {len(has_scores)} instances "
                            f"have none (first: {first(has_scores, False)}); expected scores on every instance "
                            f"or on none")
    xy, sc = np.stack(xys), np.stack(scores)
    inf = np.isinf(xy).any(-1)
    if inf.any() or np.isinf(sc).any():
        n, j = map(int, np.argwhere(inf | np.isinf(sc))[0])
        raise KeypointError(f"{path}: frame {int(ids[rows[n]])} instance {index[n]} {_joint_label(j, 'coco')}: "
                            f"infinite coordinate or score ({xy[n, j, 0]:g}, {xy[n, j, 1]:g}), score {sc[n, j]:g}; "
                            f"expected finite values "
                            f"(NaN or null for a missing keypoint)")
    xy, sc = coco_to_h36m(xy, sc)
    return Detections(np.asarray(rows, dtype=np.int64), np.asarray(index, dtype=np.int64), xy, sc,
                      np.asarray(tids, dtype=np.int64) if has_tid[0] else None, ids, absent, source=path,
                      has_scores=bool(has_scores[0]), **_json_size(meta, path))


def _frame_ids(frames, path):
    """``(frame ids of the output rows, ids absent from the file)``: the rows run from the first to the last
    ``frame_id`` without gaps, so output row k is video frame first + k; frames without ids are numbered 0, 1 ..."""
    has = [("frame_id" in fr) for fr in frames]
    if not any(has):
        return np.arange(len(frames), dtype=np.int64), ()
    if not all(has):
        raise KeypointError(f"{path}: {has.count(False)} of {len(frames)} frames have no 'frame_id' (first: list "
                            f"position {has.index(False)}); expected every frame or none to have one")
    ids = [fr["frame_id"] for fr in frames]
    bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, int) or i < 0]
    if bad:
        raise KeypointError(f"{path}: frame_id: expected non-negative integers, got {bad[:5]!r}")
    dupes = sorted({i for i in ids if ids.count(i) > 1}) if len(set(ids)) != len(ids) else []
    if dupes:
        raise KeypointError(f"{path}: frame_id: {len(dupes)} ids appear more than once, first {dupes[:10]}; "
                            f"expected one record per video frame")
    first, last = min(ids), max(ids)
    if last - first + 1 > MAX_FRAMES:
        raise KeypointError(f"{path}: frame_id runs from {first} to {last}, more than {MAX_FRAMES} frames")
    absent = tuple(sorted(set(range(first, last + 1)) - set(ids)))
    return np.arange(first, last + 1, dtype=np.int64), absent



# ---------------------------------------------------------------- npy / csv
def _read_npy(path, layout):
    try:
        a = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise KeypointError(f"{path}: not a plain numeric .npy array ({exc})") from None
    xy, scores = _split_scores(a, path)
    return _finish(xy, scores, layout or "h36m", path)


def _read_csv(path, layout):
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise KeypointError(f"{path}: not a readable text .csv file ({exc})") from None
    if rows:
        try:
            float(rows[0][0])
        except ValueError:
            rows = rows[1:]  # header line
    if not rows:
        raise KeypointError(f"{path}: no data rows")
    widths = {len(r) for r in rows}
    if len(widths) != 1 or widths.pop() not in (34, 51):
        raise KeypointError(f"{path}: expected every row to have 34 (x, y per joint) or 51 (x, y, score) columns for "
                            f"17 joints, got row lengths {sorted({len(r) for r in rows})}")
    try:
        a = np.array([[float(c) if c.strip() else np.nan for c in r] for r in rows])
    except ValueError as exc:
        raise KeypointError(f"{path}: non-numeric value ({exc})") from None
    xy, scores = _split_scores(a.reshape(len(rows), 17, -1), path)
    return _finish(xy, scores, layout or "h36m", path)


def read_keypoints(path, *, format=None, layout=None, subject=None, action=None, camera=None):
    """Read 2D keypoints from ``path`` (formats in the module docstring) -> ``Keypoints2D`` in Human3.6M order.

    format: ``"npz" | "json" | "npy" | "csv"``, default from the extension. layout: ``"h36m"`` (default) or
    ``"coco"`` for npy / csv / sample-npz files (JSON is always COCO; VideoPose3D files say so in metadata).
    subject / action / camera: which sequence of a VideoPose3D file (needed when it holds more than one).
    Raises ``KeypointError`` for an unreadable or malformed file, FileNotFoundError for a missing one."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"keypoint file {path!r}: is a directory, expected a keypoint file")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"keypoint file {path!r}: no such file")
    if format is not None and format not in FORMATS:
        raise KeypointError(f"format: expected one of {FORMATS}, got {format!r}")
    fmt = format or os.path.splitext(path)[1].lower().lstrip(".")
    if fmt not in FORMATS:
        raise KeypointError(f"{path}: unknown keypoint format {fmt!r} (from the file extension); expected one of "
                            f"{FORMATS}, or pass format=")
    if layout is not None and layout not in LAYOUTS:
        raise KeypointError(f"layout: expected one of {LAYOUTS}, got {layout!r}")
    if fmt == "npz":
        return _read_npz(path, layout, subject, action, camera)
    _not_videopose3d(path, f"a .{fmt} file", subject=subject, action=action, camera=camera)
    if fmt == "json":
        if layout is not None:
            raise KeypointError(f"layout={layout!r}: does not apply to {path}, an MMPose .json file (always COCO-17, "
                                f"converted to Human3.6M-17)")
        return _read_json(path)
    return _read_npy(path, layout) if fmt == "npy" else _read_csv(path, layout)
