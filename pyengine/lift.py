"""``pyengine.lift``: 2D keypoint sequence in, 3D poses out, with the windowing and flip augmentation of the
published evaluation code (SPEC.md §4). ``pyengine.Lifter`` (below) does the same frame by frame for live input.

Models are any ``nn.Module`` with the reference models' call signature, in eval mode:

* seq2frame (``mhformer``, ``tpc_mhformer``, ``tpc_mixste``): one window of F frames per output frame, centred on
  it (frame ``t`` sits at window position ``c = (F-1)//2``), edge-padded by repeating the first / last frame; the
  output at the centre is kept. TPC models return ``(out [B, token_num, J, 3], index)`` covering only the kept
  frames (the centre frame is always kept), so the centre is found in ``index``.
* seq2seq (``mixste``, ``hot_mixste``): consecutive chunks of F frames, the last chunk edge-padded with the last
  frame and its output trimmed.

Flip test-time augmentation (``flip=True``, as published): run the model on ``x`` and on the flipped input
(x coordinate negated, left and right joints swapped), flip that output back the same way and average:
``(f(x) + flip(f(flip(x)))) / 2``. TPC seq2frame models run the flipped pass with the first pass's indices.
HoT-MixSTE selects its tokens independently in each pass (its published call ``model(x)``).
"""
import numpy as np
import torch

from .keypoints import (LEFT_JOINTS, RIGHT_JOINTS, KeypointError, Keypoints2D, check_values, normalize_screen,
                        positive_size, prepare_keypoints)

SEQ2FRAME = ("mhformer", "tpc_mhformer", "tpc_mixste")
SEQ2SEQ = ("mixste", "hot_mixste")
TPC = ("tpc_mhformer", "tpc_mixste")
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
    if arch not in SEQ2FRAME + SEQ2SEQ:
        raise ValueError(f"model: expected a 2D-to-3D lifting model (arch one of {SEQ2FRAME + SEQ2SEQ}, read from "
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
    """Mirror poses ``[..., 17, C]``: negate x, swap the left and right joints (its own inverse)."""
    x = x.clone()
    x[..., 0] = -x[..., 0]
    x[..., _SWAP, :] = x[..., _SWAPPED, :]
    return x


class _Runner:
    """Runs one batch of windows ``[B, F, 17, 2]`` through a model: the seq2frame centre frames ``[B, 17, 3]`` or
    the seq2seq outputs ``[B, F, 17, 3]``, flip-averaged when asked."""

    def __init__(self, model, flip):
        self.model, self.flip = model, flip
        self.arch, self.frames, _ = model_spec(model)
        self.centre = (self.frames - 1) // 2
        self.seq2frame = self.arch in SEQ2FRAME

    def _pass(self, x, index=None):
        if self.arch in TPC:
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
    """-> float32 numpy ``[T, 17, 2]`` in the normalised screen space, value-checked (``check_values``: finite,
    within the normalised range) by ``prepare_keypoints``."""
    if (width is None) != (height is None):
        raise KeypointError(f"width/height: give both or neither, got width={width!r}, height={height!r}")
    if isinstance(keypoints_2d, Keypoints2D):  # as read from a file: its own size / normalized flag apply
        return prepare_keypoints(keypoints_2d, width=width, height=height, source=keypoints_2d.source)
    if width is None:
        return prepare_keypoints(keypoints_2d, normalized=True, source="keypoints_2d")
    return prepare_keypoints(keypoints_2d, width=width, height=height, source="keypoints_2d")


def windows(x, starts, frames, centre):
    """Edge-padded windows ``[len(starts), frames, ...]`` of ``x [T, ...]``: window k covers frames
    ``starts[k] - centre + (0..frames-1)``, clamped to ``[0, T-1]`` (repeating the first / last frame)."""
    idx = starts[:, None] - centre + torch.arange(frames, device=x.device)[None]
    return x[idx.clamp_(0, len(x) - 1)]


def lift(model, keypoints_2d, *, width=None, height=None, flip=True, batch_size=DEFAULT_BATCH_SIZE, progress=None):
    """Lift a 2D keypoint sequence to 3D with ``model`` (any lifting arch of ``pyengine.load``).

    keypoints_2d: ``[T, 17, 2]`` numpy array or tensor, Human3.6M joint order (``pyengine.keypoints`` reads and
        converts files), or a ``Keypoints2D`` as read (its width / height apply). In pixels when ``width`` and
        ``height`` are given (normalised as SPEC.md §4), otherwise already normalised. Every normalised value must
        be finite and within +-4 (``keypoints.check_values``; the image spans [-1, 1]): a ``KeypointError`` names
        the frame and joint otherwise, e.g. pixels without width/height or a wrong image size. No NaN: fill gaps
        first (``load_keypoints(..., interpolate=True)``).
    flip: flip test-time augmentation (published): average with the mirrored input's mirrored output.
    batch_size: windows (seq2frame) or chunks (seq2seq) per model call.
    progress: tqdm bar on stderr; None shows it for sequences of at least 1000 frames.

    Returns ``[T, 17, 3]`` float32 numpy: root-relative 3D joints in the camera frame (model units, metres for
    Human3.6M-trained weights), equal to running the model once per frame on its own window.
    """
    _, frames, _ = model_spec(model)
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    runner = _Runner(model, flip)
    device = _device(model)
    x = torch.from_numpy(_as_input(keypoints_2d, width, height)).to(device)
    T = len(x)
    if runner.seq2frame:
        starts, step, centre = torch.arange(T, device=device), 1, runner.centre
    else:  # chunk k covers frames k*F .. k*F+F-1: the "window" of start k*F with centre 0
        starts, step, centre = torch.arange(0, T, frames, device=device), frames, 0
    out = np.empty((len(starts) * step, 17, 3), dtype=np.float32)
    batches = range(0, len(starts), batch_size)
    if progress or (progress is None and T >= PROGRESS_MIN_FRAMES):
        from tqdm import tqdm
        batches = tqdm(batches, desc=f"lifting {T} frames", unit="batch", leave=False)
    for b in batches:
        chunk = runner(windows(x, starts[b:b + batch_size], frames, centre))
        out[b * step:b * step + len(chunk) * step] = chunk.reshape(-1, 17, 3).float().cpu().numpy()
    return out[:T]


class Lifter:
    """Streaming lifting: ``push(frame_2d)`` returns the 3D frames whose windows are complete; ``flush()`` ends
    the sequence (edge padding) and returns the rest. The frames equal ``lift`` on the whole sequence.

    seq2frame models emit frame t once frame ``t + F-1-c`` has arrived (c = (F-1)//2: a latency of ``F-1-c``
    frames); seq2seq models emit a chunk of F frames when it is complete. ``frame_2d`` is ``[17, 2]`` in pixels
    (with width and height) or normalised; each frame gets ``lift``'s value check (finite, within +-4 after
    normalisation; the error names the frame of this sequence and the joint) and is refused before it is stored.
    The window buffers are allocated once (a ring of the last F frames); nothing grows with the length of the
    stream. After ``flush()`` the Lifter starts a new sequence.
    """

    def __init__(self, model, *, width=None, height=None, flip=True):
        self.arch, self.frames, _ = model_spec(model)
        self.runner = _Runner(model, flip)
        if (width is None) != (height is None):
            raise KeypointError(f"width/height: give both or neither, got width={width!r}, height={height!r}")
        if width is not None:
            width = positive_size(width, "width", "keypoints")
            height = positive_size(height, "height", "keypoints")
        self.width, self.height = width, height
        device = _device(model)
        F = self.frames
        self._ring = torch.empty(F, 17, 2, device=device)  # the last F frames, oldest at self._next
        self._window = torch.empty(1, F, 17, 2, device=device)
        # _orders[p]: ring slots in time order when the oldest frame is at slot p.
        self._orders = (torch.arange(F)[None] + torch.arange(F)[:, None]).remainder_(F).to(device)
        self.reset()

    def reset(self):
        """Drop the current sequence."""
        self._count = 0  # frames pushed in this sequence
        self._next = 0  # ring slot the next frame goes to

    @property
    def latency(self):
        """Frames a seq2frame output lags behind the input (``F - 1 - (F-1)//2``); F for seq2seq chunks."""
        return self.frames - 1 - self.runner.centre if self.runner.seq2frame else self.frames

    def _store(self, frame):
        if hasattr(frame, "detach"):
            frame = frame.detach().cpu().numpy()
        frame = np.asarray(frame)
        if frame.shape != (17, 2) or not np.issubdtype(frame.dtype, np.number):
            raise KeypointError(f"frame_2d: expected a numeric [17, 2] array (one frame, Human3.6M order), got "
                                f"shape {list(frame.shape)} dtype {frame.dtype}")
        if np.issubdtype(frame.dtype, np.complexfloating):
            raise KeypointError(f"frame_2d: expected real coordinates, got dtype {frame.dtype}")
        pixels = frame.astype(np.float64)
        if self.width is not None:  # exactly as prepare_keypoints does it (float64, then float32)
            with np.errstate(over="ignore", invalid="ignore"):
                frame = normalize_screen(pixels, self.width, self.height)
            check_values(frame[None], "frame_2d", pixels=pixels[None], width=self.width, height=self.height,
                         first_frame=self._count)
        else:  # the same check lift makes: a normalised lifter refuses pixel-scale values, NaN and inf
            frame = pixels
            check_values(frame[None], "frame_2d", first_frame=self._count)
        slot = self._ring[self._next]
        slot.copy_(torch.from_numpy(frame.astype(np.float32)))
        if self._count == 0 and self.runner.seq2frame:
            self._ring.copy_(slot.expand_as(self._ring))  # frames before the first one repeat it (edge padding)

    def _emit_window(self, count):
        """Run the window made of the ring in time order; return ``count`` frames of output."""
        torch.index_select(self._ring, 0, self._orders[self._next], out=self._window[0])
        out = self.runner(self._window).float().cpu().numpy()
        return list(out.reshape(-1, 17, 3)[:count])

    def push(self, frame_2d):
        """Add one frame ``[17, 2]``; returns a list of the 3D frames ``[17, 3]`` (float32) that are now ready."""
        self._store(frame_2d)
        self._count += 1
        self._next = (self._next + 1) % self.frames
        if self.runner.seq2frame:
            return self._emit_window(1) if self._count > self.latency else []
        return self._emit_window(self.frames) if self._next == 0 else []

    def flush(self):
        """End the sequence: emit the remaining frames (windows padded with the last frame) and reset."""
        out = []
        if self._count:
            last = self._ring[(self._next - 1) % self.frames].clone()
            if self.runner.seq2frame:
                # Pushing the last frame again closes the window of one more pending frame each time; pending
                # frames are the last min(count, latency) ones.
                pending = min(self._count, self.latency)
                for k in range(self.latency):
                    self._ring[self._next].copy_(last)
                    self._next = (self._next + 1) % self.frames
                    if k >= self.latency - pending:
                        out += self._emit_window(1)
            elif self._next:
                rest = self._next
                while self._next:
                    self._ring[self._next].copy_(last)
                    self._next = (self._next + 1) % self.frames
                out += self._emit_window(rest)
        self.reset()
        return out
