"""``pyengine.Lifter`` (streaming): frames come out as soon as their window is complete, equal to the batch
``lift`` frame for frame, from preallocated buffers."""
import numpy as np
import pytest
import torch

from pyengine.keypoints import KeypointError
from pyengine.lift import Lifter, lift
from test_lift import TINY, one_thread, sequence, tiny  # noqa: F401  (one_thread is an autouse fixture)


def stream(lifter, x):
    """Push every frame; return (outputs, number of outputs available after each push), then flush."""
    out, ready = [], []
    for frame in x:
        out += lifter.push(frame)
        ready.append(len(out))
    return out + lifter.flush(), ready


@pytest.mark.parametrize("arch", list(TINY))
@pytest.mark.parametrize("T", [3, 13])
def test_stream_equals_batch(arch, T):
    model = tiny(arch)
    x = sequence(T, seed=T)
    lifter = Lifter(model)
    out, ready = stream(lifter, x)
    np.testing.assert_array_equal(np.stack(out), lift(model, x, batch_size=1))
    F = model.frames
    if arch in ("mixste", "hot_mixste"):  # whole chunks of F frames
        assert ready == [F * ((t + 1) // F) for t in range(T)]
    else:  # frame t once frame t + latency has arrived
        latency = F - 1 - (F - 1) // 2
        assert lifter.latency == latency
        assert ready == [max(0, t + 1 - latency) for t in range(T)]


def test_buffers_are_reused_and_flush_starts_a_new_sequence():
    model = tiny("tpc_mixste")
    lifter = Lifter(model, flip=False)
    ring, window = lifter._ring.data_ptr(), lifter._window.data_ptr()
    a, b = sequence(12, seed=1), sequence(5, seed=2)
    first, _ = stream(lifter, a)
    second, _ = stream(lifter, b)  # flush() reset the state: b is a sequence of its own
    assert (lifter._ring.data_ptr(), lifter._window.data_ptr()) == (ring, window)
    np.testing.assert_array_equal(np.stack(first), lift(model, a, flip=False, batch_size=1))
    np.testing.assert_array_equal(np.stack(second), lift(model, b, flip=False, batch_size=1))
    assert lifter.flush() == []


def test_stream_pixels_and_bad_frames():
    model = tiny("mixste")
    W, H = 640, 480
    px = (sequence(10) + 1) * 300
    out, _ = stream(Lifter(model, width=W, height=H), px)
    np.testing.assert_array_equal(np.stack(out), lift(model, px, width=W, height=H, batch_size=1))
    lifter = Lifter(model)
    with pytest.raises(KeypointError, match=r"frame_2d: expected a numeric \[17, 2\]"):
        lifter.push(np.zeros((16, 2)))
    bad = np.zeros((17, 2))
    bad[4] = np.nan
    with pytest.raises(KeypointError, match=r"frame_2d: frame 0 joint 4 \(l_hip\): coordinate \(nan, nan\) is not "
                                            r"finite"):
        lifter.push(bad)
    # A normalised lifter refuses pixel-scale values, as lift does (frame and joint named, nothing stored).
    with pytest.raises(KeypointError, match=r"frame_2d: frame 0 joint 0 \(hip\): \(300, 300\) is outside "
                                            r"\[-4, 4\].*look like pixels"):
        lifter.push(np.full((17, 2), 300.0))
    # A pixel lifter with a wrong image size: the normalised value and the size used are named.
    with pytest.raises(KeypointError, match=r"\(5000, 10\) px is \(9, .*\) after normalisation with width=1000, "
                                            r"height=1000"):
        Lifter(model, width=1000, height=1000).push(np.full((17, 2), [5000.0, 10.0]))
    with pytest.raises(KeypointError, match="give both or neither"):
        Lifter(model, width=W)
    with pytest.raises(ValueError, match="training mode"):
        Lifter(tiny("mixste").train())
    assert lifter.push(torch.zeros(17, 2)) == []  # tensors are accepted
