"""``pyengine.lift``: 2D keypoint sequence in, 3D poses out, with the windowing and flip augmentation of the
published evaluation code (SPEC.md §4). ``pyengine.Lifter`` (below) does the same frame by frame for live input.

Models are any ``nn.Module`` with the reference models' call signature, in eval mode:

* seq2frame (``mhformer``, ``tpc_mhformer``, ``tpc_mixste``): one window of F frames per output frame, centred on
  it (frame ``t`` sits at window position ``c = (F-1)//2``), edge-padded by repeating the first / last frame; the
  output at the centre is kept. TPC models return ``(out [B, token_num, J, 3], index)`` covering only the kept
  frames (the centre frame is always kept), so the centre is found in ``index``.
* seq2seq (``mixste``, ``hot_mixste``, ``motionbert``, ``hot_motionbert``; F = ``maxlen`` for MotionBERT):
  consecutive chunks of F frames, the last chunk edge-padded with the last frame and its output trimmed (so every
  call sees exactly F frames, which HoT-MotionBERT requires).

Confidence lifters (``SPECS[arch].input_channels == 3``: MotionBERT, HoT-MotionBERT) get ``[B, F, 17, 3]``: x, y
and the keypoint score in [0, 1] (``keypoints.check_confidence``); a keypoint that was filled (NaN or below
``score_threshold``, with ``interpolate``) gets 0.0, and input without scores gets 1.0 everywhere with a
``UserWarning`` (``NO_SCORES_NOTE``). 2-channel lifters are fed exactly as before.

Flip test-time augmentation (``flip=True``, as published): run the model on ``x`` and on the flipped input
(x coordinate negated, left and right joints swapped; the confidence channel is swapped with its joints, never
negated), flip that output back the same way and average:
``(f(x) + flip(f(flip(x)))) / 2``. TPC seq2frame models run the flipped pass with the first pass's indices.
HoT-MixSTE selects its tokens independently in each pass (its published call ``model(x)``).
"""
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from .arch import SPECS

from .keypoints import (LEFT_JOINTS, RIGHT_JOINTS, KeypointError, Keypoints2D, check_confidence, check_values,
                        normalize_screen, positive_size, prepare_keypoints)

# What a confidence lifter is told when the input has no scores (warned, and kept in the CLI's .npz).
NO_SCORES_NOTE = ("{source} has no keypoint scores: the confidence channel of {arch} (x, y, confidence) is 1.0 for "
                  "every detected keypoint")


def lifters():
    """The registry's 2D lifters, read live (an architecture registered later is seen): ``(seq2frame, seq2seq)``."""
    lift_specs = [(n, s) for n, s in SPECS.items() if s.lifter]
    return (tuple(n for n, s in lift_specs if s.io == "seq2frame"),
            tuple(n for n, s in lift_specs if s.io == "seq2seq"))


def input_channels(model):
    """2 (x, y) or 3 (x, y, confidence: MotionBERT) for a lifting model."""
    return SPECS[model_spec(model)[0]].input_channels


DEFAULT_BATCH_SIZE = 64
PROGRESS_MIN_FRAMES = 1000  # progress=None shows a bar from this many frames on
_SWAP = list(LEFT_JOINTS + RIGHT_JOINTS)
_SWAPPED = list(RIGHT_JOINTS + LEFT_JOINTS)


def model_spec(model):
    """``(arch, frames, n_joints)`` of a lifting model, from ``model.pyengine`` (LoadInfo) or its attributes."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected an nn.Module (e.g. from pyengine.load), got {type(model).__name__}")
    info = getattr(model, "pyengine", None)
    arch = getattr(info, "arch", None) or getattr(model, "arch", None)
    config = dict(getattr(info, "config", None) or {})
    frames = config.get("frames", getattr(model, "frames", None))
    n_joints = config.get("n_joints", getattr(model, "n_joints", 17))
    seq2frame, seq2seq = lifters()
    if arch not in seq2frame + seq2seq:
        raise ValueError(f"model: expected a 2D-to-3D lifting model (arch one of {seq2frame + seq2seq}, read from "
                         f"model.pyengine.arch or model.arch), got arch {arch!r}")
    if not isinstance(frames, int) or frames < 1:
        raise ValueError(f"model: cannot tell its window length: no model.pyengine.config['frames'] or model.frames "
                         f"(got {frames!r})")
    if n_joints != 17:
        raise ValueError(f"model: expected a 17-joint model (Human3.6M order), got n_joints={n_joints}")
    if model.training:
        raise ValueError("model: is in training mode (BatchNorm / dropout would change the output); call "
                         "model.eval() first (pyengine.load returns eval-mode models)")
    return arch, frames, n_joints


def _device(model):
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def flip_pose(x):
    """Mirror poses ``[..., 17, C]``: negate x (channel 0 only: y and a confidence channel keep their sign), swap
    the left and right joints, every channel with its joint (its own inverse)."""
    x = x.clone()
    x[..., 0] = -x[..., 0]
    x[..., _SWAP, :] = x[..., _SWAPPED, :]
    return x


class _Runner:
    """Runs one batch of windows ``[B, F, 17, channels]`` through a model: the seq2frame centre frames
    ``[B, 17, 3]`` or the seq2seq outputs ``[B, F, 17, 3]``, flip-averaged when asked."""

    def __init__(self, model, flip):
        self.model, self.flip = model, flip
        self.arch, self.frames, _ = model_spec(model)
        self.centre = (self.frames - 1) // 2
        self.seq2frame = SPECS[self.arch].io == "seq2frame"
        self.channels = SPECS[self.arch].input_channels

    def _pass(self, x, index=None):
        if SPECS[self.arch].tpc_center:  # seq2frame TPC: the flip pass reuses the first pass's index
            out, index = self.model(x, index)
            pos = (index < self.centre).sum(-1)  # index is sorted and always holds the centre frame
            rows = torch.arange(len(x), device=x.device)
            if not bool((index[rows, pos] == self.centre).all()):
                raise RuntimeError(f"{self.arch}: the selected indices do not contain the centre frame "
                                   f"{self.centre}; cannot pick the centre output")
            return out[rows, pos], index
        out = self.model(x)
        return (out[:, self.centre] if self.seq2frame else out), None

    @torch.inference_mode()
    def __call__(self, x):
        out, index = self._pass(x)
        if self.flip:
            out_flip, _ = self._pass(flip_pose(x), index)
            out = (out + flip_pose(out_flip)) / 2
        return out


def _as_input(keypoints_2d, width, height):
    """-> ``(float32 numpy [T, 17, 2] in the normalised screen space, confidence [T, 17] or None, source)``,
    value-checked (``check_values``: finite, within the normalised range) by ``prepare_keypoints``."""
    if (width is None) != (height is None):
        raise KeypointError(f"width/height: give both or neither, got width={width!r}, height={height!r}")
    if isinstance(keypoints_2d, Keypoints2D):  # as read from a file: its own size / normalized flag apply
        return (*prepare_keypoints(keypoints_2d, width=width, height=height, source=keypoints_2d.source,
                                   return_confidence=True), keypoints_2d.source)
    size = dict(normalized=True) if width is None else dict(width=width, height=height)
    return prepare_keypoints(keypoints_2d, source="keypoints_2d", **size), None, "keypoints_2d"


def with_confidence(model, x, confidence, source, *, frame_ids=None, confidence_given=False):
    """The model's input ``[T, 17, channels]`` float32 and the notes for the user: ``x [T, 17, 2]`` as is for
    2-channel lifters (a ``confidence`` given explicitly is then an error, never dropped silently); for confidence
    lifters x, y and ``confidence`` (checked in [0, 1]), or 1.0 with ``NO_SCORES_NOTE`` (warned) when None."""
    arch = model_spec(model)[0]
    if SPECS[arch].input_channels == 2:
        if confidence_given:
            raise ValueError(f"confidence: arch {arch!r} takes x, y only (2 input channels); confidence applies to "
                             f"lifters with a confidence channel (MotionBERT), got an array for {source}")
        return x, []
    notes = []
    if confidence is None:
        notes.append(NO_SCORES_NOTE.format(source=source, arch=arch))
        warnings.warn(notes[-1], UserWarning, stacklevel=3)
        confidence = np.ones(x.shape[:2], dtype=np.float32)
    else:
        if hasattr(confidence, "detach"):
            confidence = confidence.detach().cpu().numpy()
        confidence = np.asarray(confidence)
        if confidence.shape != x.shape[:2] or not np.issubdtype(confidence.dtype, np.number):
            raise KeypointError(f"confidence: expected a numeric [T, 17] = {list(x.shape[:2])} array (one score per "
                                f"keypoint of {source}), got shape {list(confidence.shape)} dtype {confidence.dtype}")
        confidence = check_confidence(confidence, f"{source} (confidence)", frame_ids=frame_ids)
    return np.concatenate([x, confidence[..., None]], axis=-1), notes


def windows(x, starts, frames, centre):
    """Edge-padded windows ``[len(starts), frames, ...]`` of ``x [T, ...]``: window k covers frames
    ``starts[k] - centre + (0..frames-1)``, clamped to ``[0, T-1]`` (repeating the first / last frame)."""
    idx = starts[:, None] - centre + torch.arange(frames, device=x.device)[None]
    return x[idx.clamp_(0, len(x) - 1)]


def _check_batch(batch_size, first_row):
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    if first_row is not None and (isinstance(first_row, bool) or not isinstance(first_row, int)
                                  or not 0 <= first_row < batch_size):
        raise ValueError(f"first_row: expected None or an int in [0, batch_size={batch_size}), got {first_row!r}")


def _lift_sequences(runner, xs, device, batch_size, first_row, progress, what):
    """Lift the normalised sequences ``xs`` (float32 numpy ``[L_s, 17, channels]``) in shared model calls; returns
    ``(outputs [L_s, 17, 3] per sequence, the batch row of each sequence's first window)``.

    The windows (seq2frame) or chunks (seq2seq) of all sequences, one after the other, fill the model calls.
    ``first_row`` None: calls of ``batch_size`` windows, the last one smaller (``lift``'s plain layout).
    ``first_row`` an int (``lift_tracks``'s layout, docs/lifting.md): every call has exactly ``batch_size`` rows,
    the first window in row ``first_row`` of the first call; rows before the first and after the last window
    repeat a window of the same call. A call then always has the same shape and a window always sits in the row
    its place in this order gives it, so its result does not depend on the windows it shares the call with:
    sequence s equals ``lift(model, xs[s], batch_size=batch_size, first_row=rows[s])`` bit for bit (the rows of
    one call are computed independently of each other)."""
    F, step = runner.frames, (1 if runner.seq2frame else runner.frames)
    centre = runner.centre if runner.seq2frame else 0
    lens = [len(x) for x in xs]
    counts = [(n + step - 1) // step for n in lens]  # windows per sequence
    G = sum(counts)
    x_all = torch.from_numpy(np.concatenate(xs)).to(device)
    offsets = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    # per window: its start frame, its sequence's offset in x_all and last frame
    start = torch.from_numpy(np.concatenate([np.arange(c) * step for c in counts]).astype(np.int64)).to(device)
    off = torch.from_numpy(np.repeat(offsets, counts)).to(device)
    last = torch.from_numpy(np.repeat(np.asarray(lens, dtype=np.int64) - 1, counts)).to(device)
    span = torch.arange(F, device=device)[None] - centre
    fixed = first_row is not None
    first_row = first_row or 0
    bases = first_row + np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    out = np.empty((G * step, 17, 3), dtype=np.float32)
    calls = range((first_row + G + batch_size - 1) // batch_size)
    if progress or (progress is None and sum(lens) >= PROGRESS_MIN_FRAMES):
        from tqdm import tqdm
        calls = tqdm(calls, desc=f"lifting {what}", unit="batch", leave=False)
    for c in calls:
        lo = c * batch_size - first_row  # window number in row 0 of this call
        a, b = max(lo, 0), min(lo + batch_size, G)  # the real windows of this call
        g = torch.arange(lo, lo + batch_size, device=device).clamp_(0, G - 1) if fixed else \
            torch.arange(a, b, device=device)  # fixed: the padding rows repeat a real window
        idx = torch.minimum((start[g, None] + span).clamp_(min=0), last[g, None]) + off[g, None]
        y = runner(x_all[idx]).reshape(len(g), step, 17, 3)
        real = y[a - lo:b - lo] if fixed else y
        out[a * step:b * step] = real.reshape(-1, 17, 3).float().cpu().numpy()
    results = [out[base * step:base * step + n] for base, n in zip(bases - first_row, lens)]
    return results, [int(b % batch_size) for b in bases]


def lift(model, keypoints_2d, *, width=None, height=None, flip=True, batch_size=DEFAULT_BATCH_SIZE, progress=None,
         first_row=None, confidence=None):
    """Lift a 2D keypoint sequence to 3D with ``model`` (any lifting arch of ``pyengine.load``).

    keypoints_2d: ``[T, 17, 2]`` numpy array or tensor, Human3.6M joint order (``pyengine.keypoints`` reads and
        converts files), or a ``Keypoints2D`` as read (its width / height apply). In pixels when ``width`` and
        ``height`` are given (normalised as SPEC.md §4), otherwise already normalised. Every normalised value must
        be finite and within +-4 (``keypoints.check_values``; the image spans [-1, 1]): a ``KeypointError`` names
        the frame and joint otherwise, e.g. pixels without width/height or a wrong image size. No NaN: fill gaps
        first (``load_keypoints(..., interpolate=True)``).
    confidence: confidence lifters (MotionBERT) only: ``[T, 17]`` scores in [0, 1] for array input (a
        ``Keypoints2D``'s own scores are used when not given; filled keypoints get 0.0). Without scores the channel
        is 1.0 and a ``UserWarning`` says so. Given to a 2-channel lifter: a ``ValueError``.
    flip: flip test-time augmentation (published): average with the mirrored input's mirrored output (the
        confidence channel is mirrored with its joints, not negated).
    batch_size: windows (seq2frame) or chunks (seq2seq) per model call.
    progress: tqdm bar on stderr; None shows it for sequences of at least 1000 frames.
    first_row: None (default), or ``lift_tracks``'s layout: every call has exactly ``batch_size`` windows (padded
        by repeating one) and the first window sits in this row of the first call. A person lifted alone with the
        ``batch_size`` and row ``lift_tracks`` used (``LiftedTracks.batch_size`` / ``.first_rows``) gets exactly
        the result ``lift_tracks`` gave them.

    Returns ``[T, 17, 3]`` float32 numpy: root-relative 3D joints in the camera frame (model units, metres for
    Human3.6M-trained weights), equal to running the model once per frame on its own window.
    """
    model_spec(model)
    _check_batch(batch_size, first_row)
    runner = _Runner(model, flip)
    x, scores, source = _as_input(keypoints_2d, width, height)
    frame_ids = getattr(keypoints_2d, "frame_ids", None)
    x, _ = with_confidence(model, x, scores if confidence is None else confidence, source, frame_ids=frame_ids,
                           confidence_given=confidence is not None)
    (out,), _ = _lift_sequences(runner, [x], _device(model), batch_size, first_row, progress, f"{len(x)} frames")
    return out


@dataclass
class LiftedTracks:
    """``lift_tracks``'s result: ``positions_3d [P, T, 17, 3]`` float32 (NaN where the person has no pose),
    ``keypoints_2d [P, T, 17, 2]`` (the normalised input used, NaN likewise), ``valid [P, T]`` (a pose was
    lifted), ``detected [P, T]`` (the file had an instance; ``valid & ~detected``: a filled short gap),
    ``track_ids [P]``, ``frame_ids [T]`` (the video frame of each column), the ``tracks`` they came from, the
    windows per model call (``batch_size``) and the batch row of each segment's first window (``first_rows``, in
    ``tracks.segments`` order). Confidence lifters: ``confidence [P, T, 17]`` the third input channel used (NaN
    likewise; None for 2-channel lifters) and ``notes`` (e.g. ``NO_SCORES_NOTE``, also warned)."""

    positions_3d: np.ndarray
    keypoints_2d: np.ndarray
    valid: np.ndarray
    detected: np.ndarray
    track_ids: np.ndarray
    frame_ids: np.ndarray
    tracks: object
    batch_size: int
    first_rows: list
    confidence: object = None
    notes: list = field(default_factory=list)


def lift_tracks(model, detections, *, flip=True, batch_size=DEFAULT_BATCH_SIZE, progress=None, **track_options):
    """Lift every person of a video in shared model calls (docs/lifting.md, "Several people").

    detections: a ``pyengine.tracks.Tracks`` (``build_tracks``), or what ``build_tracks`` takes (a
        ``keypoints.Detections`` or an MMPose ``.json`` path) with its options in ``track_options`` (width,
        height, normalized, score_threshold, interpolate, min_oks, max_gap, min_length).
    flip, progress: as ``lift``.
    batch_size: the most windows (chunks) per model call. The windows of all segments fill the same calls one
        after the other, every call with the same number of rows: ``ceil(G / ceil(G / batch_size))`` for G
        windows in all (balanced: at most one padding row per call), returned as ``LiftedTracks.batch_size``.
        Each segment k equals ``lift(model, segment.keypoints, batch_size=result.batch_size,
        first_row=result.first_rows[k])`` bit for bit (``_lift_sequences``).

    Returns ``LiftedTracks``."""
    from .tracks import Tracks, build_tracks

    model_spec(model)
    _check_batch(batch_size, 0)
    if isinstance(detections, Tracks):
        if track_options:
            raise TypeError(f"lift_tracks: {sorted(track_options)} apply when building tracks, but detections is "
                            f"already a Tracks (pass them to pyengine.tracks.build_tracks instead)")
        tracks = detections
    else:
        tracks = build_tracks(detections, **track_options)
    runner = _Runner(model, flip)
    T, ids = len(tracks.frame_ids), list(tracks.track_ids)
    P = len(ids)
    pos = np.full((P, T, 17, 3), np.nan, dtype=np.float32)
    kp = np.full((P, T, 17, 2), np.nan, dtype=np.float32)
    valid, detected = np.zeros((P, T), dtype=bool), np.zeros((P, T), dtype=bool)
    first_rows, calls, notes, conf = [], 0, [], None
    xs = [s.keypoints for s in tracks.segments]
    if runner.channels == 3:
        conf = np.full((P, T, 17), np.nan, dtype=np.float32)
        if not tracks.has_scores:  # the segments hold 1.0 where detected; say so once for the file
            notes.append(NO_SCORES_NOTE.format(source=tracks.source, arch=runner.arch))
            warnings.warn(notes[-1], UserWarning, stacklevel=2)
        xs = [with_confidence(model, s.keypoints, s.confidence, f"{tracks.source} track {s.track_id}",
                              frame_ids=tracks.frame_ids[s.start:s.stop])[0] for s in tracks.segments]
    if tracks.segments:
        step = 1 if runner.seq2frame else runner.frames
        G = sum((len(s.keypoints) + step - 1) // step for s in tracks.segments)
        calls = -(-G // batch_size)
        batch_size = -(-G // calls)  # the same number of calls, as few padding rows as possible
        outs, first_rows = _lift_sequences(runner, xs, _device(model), batch_size, 0, progress, f"{P} tracks")
        for seg, out in zip(tracks.segments, outs):
            p = ids.index(seg.track_id)
            pos[p, seg.start:seg.stop], kp[p, seg.start:seg.stop] = out, seg.keypoints
            if conf is not None:
                conf[p, seg.start:seg.stop] = seg.confidence
            valid[p, seg.start:seg.stop], detected[p, seg.start:seg.stop] = True, seg.detected
    return LiftedTracks(pos, kp, valid, detected, np.asarray(ids, dtype=np.int64), np.asarray(tracks.frame_ids),
                        tracks, batch_size if tracks.segments else 0, first_rows, conf, notes)


class _Stream:
    """One person's ring of the last F frames, allocated once on the model's device, and its place in the
    sequence (``count`` frames pushed, ``next`` ring slot to write)."""

    def __init__(self, frames, device, channels=2):
        self.ring = torch.empty(frames, 17, channels, device=device)  # the last F frames, oldest at self.next
        self.window = torch.empty(1, frames, 17, channels, device=device)
        self.count = self.next = 0


class Lifter:
    """Streaming lifting: ``push(frame_2d)`` returns the 3D frames whose windows are complete; ``flush()`` ends
    the sequence (edge padding) and returns the rest. The frames equal ``lift`` on the whole sequence.

    seq2frame models emit frame t once frame ``t + F-1-c`` has arrived (c = (F-1)//2: a latency of ``F-1-c``
    frames); seq2seq models emit a chunk of F frames when it is complete. ``frame_2d`` is ``[17, 2]`` in pixels
    (with width and height) or normalised; each frame gets ``lift``'s value check (finite, within +-4 after
    normalisation; the error names the frame of this sequence and the joint) and is refused before it is stored.
    The window buffers are allocated once (a ring of the last F frames); nothing grows with the length of the
    stream. After ``flush()`` the Lifter starts a new sequence.

    Several people: push a dict ``{track_id: frame_2d}`` per video frame; the result is a dict ``{track_id: list
    of [17, 3]}``. Each person has their own ring (taken from a pool, returned when they leave); the windows that
    become ready in one push go through the model in one call. A person absent from a push has left: their
    sequence is flushed (its last frames come back in that push's result) and a later frame of the same id starts
    a new sequence (live input cannot bridge a gap). Each person's frames equal ``lift`` on their sequence up to
    the float summation order of the shared call (bit for bit while one person is present). A Lifter is either
    single-person (arrays) or multi-person (dicts) until ``flush()`` / ``reset()``.

    Confidence lifters (MotionBERT): a frame is ``[17, 3]`` (x, y, score in [0, 1]; only x, y are normalised), or
    ``[17, 2]`` with confidence 1.0 and a ``UserWarning`` (``NO_SCORES_NOTE``, once per Lifter; ``notes`` keeps
    it). Streaming has no interpolation, so the score is fed as given and no ``score_threshold`` applies.
    """

    def __init__(self, model, *, width=None, height=None, flip=True):
        self.arch, self.frames, _ = model_spec(model)
        self.runner = _Runner(model, flip)
        self.channels = self.runner.channels
        self.notes = []  # what the user was warned about (confidence lifters fed frames without scores)
        if (width is None) != (height is None):
            raise KeypointError(f"width/height: give both or neither, got width={width!r}, height={height!r}")
        if width is not None:
            width = positive_size(width, "width", "keypoints")
            height = positive_size(height, "height", "keypoints")
        self.width, self.height = width, height
        self._device = _device(model)
        F = self.frames
        # _orders[p]: ring slots in time order when the oldest frame is at slot p.
        self._orders = (torch.arange(F)[None] + torch.arange(F)[:, None]).remainder_(F).to(self._device)
        self._single = _Stream(F, self._device, self.channels)
        self._people, self._pool = {}, []  # track id -> _Stream; rings of people who left, for reuse
        self.reset()

    # The single-person stream's state (the names the tests and older code use).
    _ring = property(lambda self: self._single.ring)
    _window = property(lambda self: self._single.window)
    _count = property(lambda self: self._single.count)

    def reset(self):
        """Drop the current sequence (every person's)."""
        self._single.count = self._single.next = 0
        for stream in self._people.values():
            self._release(stream)
        self._people = {}

    def _release(self, stream):
        stream.count = stream.next = 0
        self._pool.append(stream)

    @property
    def latency(self):
        """Frames a seq2frame output lags behind the input (``F - 1 - (F-1)//2``); F for seq2seq chunks."""
        return self.frames - 1 - self.runner.centre if self.runner.seq2frame else self.frames

    def _check(self, frame, name, count):
        """The value-checked, normalised float32 ``[17, channels]`` of one pushed frame (nothing stored yet)."""
        if hasattr(frame, "detach"):
            frame = frame.detach().cpu().numpy()
        frame = np.asarray(frame)
        shapes = [(17, 2)] if self.channels == 2 else [(17, 3), (17, 2)]
        if frame.shape not in shapes or not np.issubdtype(frame.dtype, np.number):
            what = ("[17, 2] array" if self.channels == 2 else
                    f"[17, 3] (x, y, score; {self.arch} takes the confidence) or [17, 2] array")
            raise KeypointError(f"{name}: expected a numeric {what} (one frame, Human3.6M order), got "
                                f"shape {list(frame.shape)} dtype {frame.dtype}")
        if np.issubdtype(frame.dtype, np.complexfloating):
            raise KeypointError(f"{name}: expected real coordinates, got dtype {frame.dtype}")
        confidence = None
        if self.channels == 3:
            if frame.shape[1] == 3:
                confidence = check_confidence(frame[None, :, 2], f"{name} (score)", frame_ids=[count])[0]
            else:
                if not self.notes:
                    self.notes.append(NO_SCORES_NOTE.format(source="a pushed [17, 2] frame", arch=self.arch))
                    warnings.warn(self.notes[-1], UserWarning, stacklevel=4)
                confidence = np.ones(17, dtype=np.float32)
            frame = frame[:, :2]
        pixels = frame.astype(np.float64)
        if self.width is not None:  # exactly as prepare_keypoints does it (float64, then float32)
            with np.errstate(over="ignore", invalid="ignore"):
                frame = normalize_screen(pixels, self.width, self.height)
            check_values(frame[None], name, pixels=pixels[None], width=self.width, height=self.height,
                         first_frame=count)
        else:  # the same check lift makes: a normalised lifter refuses pixel-scale values, NaN and inf
            frame = pixels
            check_values(frame[None], name, first_frame=count)
        if confidence is not None:
            frame = np.concatenate([frame, confidence[:, None]], axis=1)
        return torch.from_numpy(frame.astype(np.float32))

    def _store(self, stream, frame):
        slot = stream.ring[stream.next]
        slot.copy_(frame)
        if stream.count == 0 and self.runner.seq2frame:
            stream.ring.copy_(slot.expand_as(stream.ring))  # frames before the first one repeat it (edge padding)
        stream.count += 1
        stream.next = (stream.next + 1) % self.frames

    def _ready(self, stream):
        """How many frames the window now in ``stream`` yields (0: not ready)."""
        if self.runner.seq2frame:
            return 1 if stream.count > self.latency else 0
        return self.frames if stream.next == 0 else 0

    def _emit_window(self, count, stream=None):
        """Run the window made of the ring in time order; return ``count`` frames of output."""
        stream = stream or self._single
        torch.index_select(stream.ring, 0, self._orders[stream.next], out=stream.window[0])
        out = self.runner(stream.window).float().cpu().numpy()
        return list(out.reshape(-1, 17, 3)[:count])

    def push(self, frame_2d):
        """Add one frame ``[17, 2]`` (confidence lifters: ``[17, 3]``, see the class docstring); returns a list
        of the 3D frames ``[17, 3]`` (float32) that are now ready.
        With a dict ``{track_id: [17, 2]}`` (several people), returns ``{track_id: list of [17, 3]}``."""
        if isinstance(frame_2d, Mapping):
            return self._push_people(frame_2d)
        if self._people:
            raise ValueError(f"frame_2d: this Lifter is streaming {len(self._people)} people (dicts of track id -> "
                             f"frame); got a single frame. flush() or reset() first to stream one person")
        self._store(self._single, self._check(frame_2d, "frame_2d", self._single.count))
        ready = self._ready(self._single)
        return self._emit_window(ready) if ready else []

    def _push_people(self, frames):
        if self._single.count:
            raise ValueError(f"frame_2d: this Lifter is streaming one person ({self._single.count} frames pushed); "
                             f"got a dict of people. flush() or reset() first")
        for key in frames:
            if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer, str)):
                raise KeypointError(f"frame_2d: expected track ids (int or str) as keys, got {key!r}")
        # Check every frame before storing any: a refused push leaves every person's stream as it was.
        checked = {key: self._check(frame, f"frame_2d[{key!r}]",
                                    self._people[key].count if key in self._people else 0)
                   for key, frame in frames.items()}
        out = {key: self._flush_stream(self._people.pop(key)) for key in list(self._people) if key not in frames}
        ready = []
        for key, frame in checked.items():
            if key not in self._people:
                self._people[key] = (self._pool.pop() if self._pool else
                                     _Stream(self.frames, self._device, self.channels))
            stream = self._people[key]
            self._store(stream, frame)
            out[key] = []
            if self._ready(stream):
                ready.append((key, stream))
        if ready:  # one model call for every window that became ready in this frame
            batch = torch.stack([stream.ring.index_select(0, self._orders[stream.next]) for _, stream in ready])
            res = self.runner(batch).float().cpu().numpy().reshape(len(ready), -1, 17, 3)
            for (key, _), frames_3d in zip(ready, res):
                out[key] = list(frames_3d)
        return out

    def _flush_stream(self, stream):
        """End one sequence: emit its remaining frames (windows padded with the last frame); the stream is
        released to the pool (multi-person) or reset (single)."""
        out = []
        if stream.count:
            last = stream.ring[(stream.next - 1) % self.frames].clone()
            if self.runner.seq2frame:
                # Pushing the last frame again closes the window of one more pending frame each time; pending
                # frames are the last min(count, latency) ones.
                pending = min(stream.count, self.latency)
                for k in range(self.latency):
                    stream.ring[stream.next].copy_(last)
                    stream.next = (stream.next + 1) % self.frames
                    if k >= self.latency - pending:
                        out += self._emit_window(1, stream)
            elif stream.next:
                rest = stream.next
                while stream.next:
                    stream.ring[stream.next].copy_(last)
                    stream.next = (stream.next + 1) % self.frames
                out += self._emit_window(rest, stream)
        if stream is self._single:
            stream.count = stream.next = 0
        else:
            self._release(stream)
        return out

    def flush(self):
        """End the sequence: emit the remaining frames (windows padded with the last frame) and reset. With
        several people: ``{track_id: remaining frames}`` for everyone still present."""
        if self._people:
            out = {key: self._flush_stream(stream) for key, stream in self._people.items()}
            self._people = {}
            return out
        return self._flush_stream(self._single)
