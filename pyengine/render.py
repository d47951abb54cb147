"""Animated pictures of a lifting result: the 2D input skeleton beside the 3D output (Human3.6M bones);
``render_tracks`` draws several people, one colour per track, with a legend.

matplotlib's Agg canvas (no display needed, pyplot's global state untouched). ``.gif`` is written with pillow;
``.mp4`` needs ``ffmpeg`` on the PATH and raises ``RenderError`` saying so when it is missing.
"""
import os

import numpy as np

from .skeleton import LEFT_JOINTS, PARENTS, RIGHT_JOINTS

FORMATS = (".gif", ".mp4")
PROGRESS_MIN_FRAMES = 50  # progress=None shows a bar from this many drawn frames on


class RenderError(RuntimeError):
    """The picture cannot be written (unknown format, missing ffmpeg, bad arrays)."""


TRACK_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray",
                 "tab:olive", "tab:cyan")  # one per track (repeating after 10)


def _colour(j):
    return "tab:blue" if j in LEFT_JOINTS else "tab:red" if j in RIGHT_JOINTS else "0.2"


def check_output(path):
    """Raise ``RenderError`` now if ``path`` cannot be written later (format, ffmpeg for .mp4)."""
    ext = os.path.splitext(str(path))[1].lower()
    if ext not in FORMATS:
        raise RenderError(f"render: path {str(path)!r}: expected a .gif or .mp4 file name")
    if ext == ".mp4":
        from matplotlib import animation
        if not animation.writers.is_available("ffmpeg"):
            raise RenderError("render: writing .mp4 needs ffmpeg on the PATH, which was not found; install ffmpeg "
                              "or write a .gif instead")
    return ext


def _check_common(every, fps):
    if isinstance(every, bool) or not (isinstance(every, int) and every >= 1):
        raise RenderError(f"render: every: expected an integer >= 1, got {every!r}")
    if isinstance(fps, bool) or not (isinstance(fps, (int, float)) and np.isfinite(fps) and fps > 0):
        raise RenderError(f"render: fps: expected a positive number, got {fps!r}")


def render(path, keypoints_2d, positions_3d, *, fps=25, every=1, dpi=80, title=None, progress=None):
    """Write an animation of ``keypoints_2d [T, 17, 2]`` (any 2D units, image y pointing down) beside
    ``positions_3d [T, 17, 3]`` (camera frame: x right, y down, z forward) to ``path`` (``.gif`` or ``.mp4``).

    every: draw only every ``every``-th frame (smaller, faster files); drawn frames are shown at ``fps`` per
    second (the CLI passes the input's fps by default). Left joints are blue, right joints red.
    progress: a tqdm bar of the drawn frames on stderr; None shows it from PROGRESS_MIN_FRAMES drawn frames on
    (drawing is the slow part, about 20 frames per second). Returns ``path``."""
    ext = check_output(path)
    kp = np.asarray(keypoints_2d, dtype=np.float64)
    pos = np.asarray(positions_3d, dtype=np.float64)
    if kp.ndim != 3 or kp.shape[1:] != (17, 2) or pos.ndim != 3 or pos.shape[1:] != (17, 3) or len(kp) != len(pos):
        raise RenderError(f"render: expected keypoints_2d [T, 17, 2] and positions_3d [T, 17, 3] with the same T, "
                          f"got {list(kp.shape)} and {list(pos.shape)}")
    if len(kp) == 0 or not (np.isfinite(kp).all() and np.isfinite(pos).all()):
        raise RenderError("render: the sequence is empty or has NaN/inf values")
    _check_common(every, fps)
    # 3D plot axes: x right, depth (camera z) into the picture, up = -y (the camera's y points down).
    pts = np.stack([pos[..., 0], pos[..., 2], -pos[..., 1]], axis=-1)
    return _animate(path, ext, kp[None], pts[None], np.ones((1, len(kp)), dtype=bool), None, fps=fps, every=every,
                    dpi=dpi, title=title, progress=progress)


def render_tracks(path, keypoints_2d, positions_3d, valid, track_ids, *, fps=25, every=1, dpi=80, title=None,
                  progress=None):
    """Several people (``pyengine.lift_tracks``'s result): ``keypoints_2d [P, T, 17, 2]`` and ``positions_3d
    [P, T, 17, 3]``, drawn where ``valid [P, T]``, one colour per track with a legend of ``track_ids [P]``. In 3D
    each root-relative pose stands at its 2D hip's horizontal place (normalised x times 2, in the poses' units),
    so the people keep the picture's left-to-right order. Otherwise as ``render``."""
    ext = check_output(path)
    kp = np.asarray(keypoints_2d, dtype=np.float64)
    pos = np.asarray(positions_3d, dtype=np.float64)
    valid = np.asarray(valid, dtype=bool)
    ids = list(np.asarray(track_ids).tolist())
    if (kp.ndim != 4 or kp.shape[2:] != (17, 2) or pos.shape != kp.shape[:2] + (17, 3) or valid.shape != kp.shape[:2]
            or len(ids) != len(kp)):
        raise RenderError(f"render: expected keypoints_2d [P, T, 17, 2], positions_3d [P, T, 17, 3], valid [P, T] "
                          f"and P track ids, got {list(kp.shape)}, {list(pos.shape)}, {list(valid.shape)} and "
                          f"{len(ids)} ids")
    if kp.shape[0] == 0 or kp.shape[1] == 0 or not valid.any():
        raise RenderError("render: no track has a pose to draw")
    if not (np.isfinite(kp[valid]).all() and np.isfinite(pos[valid]).all()):
        raise RenderError("render: a valid frame has NaN/inf values")
    _check_common(every, fps)
    shift = np.where(valid, np.nan_to_num(kp[:, :, 0, 0]) * 2.0, 0.0)  # the 2D hip's x, normalised units
    pts = np.stack([pos[..., 0] + shift[..., None], pos[..., 2], -pos[..., 1]], axis=-1)
    return _animate(path, ext, kp, pts, valid, ids, fps=fps, every=every, dpi=dpi, title=title, progress=progress)


def _animate(path, ext, kp, pts, valid, ids, *, fps, every, dpi, title, progress):
    """Draw ``kp [P, T, 17, 2]`` and the plot-space ``pts [P, T, 17, 3]`` where ``valid [P, T]``; ``ids`` None:
    one person, left / right colours; otherwise one colour per track and a legend."""
    # A Figure with an Agg canvas, not pyplot: the user's matplotlib backend and figure list stay untouched.
    from matplotlib import animation
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    P, T = valid.shape
    frames = list(range(0, T, every))
    bones = [(j, p) for j, p in enumerate(PARENTS) if p >= 0]

    fig = Figure(figsize=(8, 4), dpi=dpi)
    FigureCanvasAgg(fig)
    ax2 = fig.add_subplot(1, 2, 1)
    ax3 = fig.add_subplot(1, 2, 2, projection="3d")
    flat2, flat3 = kp[valid].reshape(-1, 2), pts[valid].reshape(-1, 3)
    lo, hi = flat2.min(0), flat2.max(0)
    pad = 0.05 * max(hi - lo) + 1e-6
    ax2.set_xlim(lo[0] - pad, hi[0] + pad)
    ax2.set_ylim(hi[1] + pad, lo[1] - pad)  # image y grows downwards
    ax2.set_aspect("equal")
    ax2.set_title("2D input")
    centre = flat3.mean(0)
    radius = 0.55 * max(np.ptp(flat3, axis=0).max(), 1e-6)
    for set_lim, c in zip((ax3.set_xlim, ax3.set_ylim, ax3.set_zlim), centre):
        set_lim(c - radius, c + radius)
    ax3.set_xlabel("x")
    ax3.set_ylabel("depth")
    ax3.set_zlabel("up")
    ax3.set_title("3D output")
    if title:
        fig.suptitle(title)

    def colour(p, j):
        return _colour(j) if ids is None else TRACK_COLOURS[p % len(TRACK_COLOURS)]
    lines2 = [[ax2.plot([], [], color=colour(p, j), lw=2)[0] for j, _ in bones] for p in range(P)]
    lines3 = [[ax3.plot([], [], [], color=colour(p, j), lw=2)[0] for j, _ in bones] for p in range(P)]
    if ids is not None:  # one legend entry per track, drawn once (the handles need not be visible lines)
        from matplotlib.lines import Line2D
        handles = [Line2D([], [], color=colour(p, 0), lw=2) for p in range(P)]
        fig.legend(handles, [f"track {i}" for i in ids], loc="upper right", fontsize=7, ncol=max(1, (P + 7) // 8))
    label = fig.text(0.01, 0.01, "", fontsize=8)

    def draw(t):
        for p in range(P):
            show = bool(valid[p, t])
            for line, (j, q) in zip(lines2[p], bones):
                if show:
                    line.set_data(kp[p, t, [j, q], 0], kp[p, t, [j, q], 1])
                else:
                    line.set_data([], [])
            for line, (j, q) in zip(lines3[p], bones):
                if show:
                    line.set_data_3d(pts[p, t, [j, q], 0], pts[p, t, [j, q], 1], pts[p, t, [j, q], 2])
                else:
                    line.set_data_3d([], [], [])
        label.set_text(f"frame {t}" + ("" if ids is None else f", {int(valid[:, t].sum())} of {P} tracks"))
        return [line for group in lines2 + lines3 for line in group] + [label]

    anim = animation.FuncAnimation(fig, draw, frames=frames, blit=False)
    writer = animation.PillowWriter(fps=fps) if ext == ".gif" else animation.FFMpegWriter(fps=fps)
    bar = None
    if progress or (progress is None and len(frames) >= PROGRESS_MIN_FRAMES):
        from tqdm import tqdm
        bar = tqdm(total=len(frames), desc=f"rendering {os.path.basename(str(path))}", unit="frame", leave=False)
    try:
        anim.save(str(path), writer=writer, dpi=dpi,
                  progress_callback=None if bar is None else (lambda i, n: bar.update(1)))
    finally:
        if bar is not None:
            bar.close()
    return path
