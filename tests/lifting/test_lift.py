"""``pyengine.lift``: windowing / chunking and edge padding equal a naive per-frame loop over the eager model,
flip averaging equals the published formula, and bad inputs raise their documented errors."""
import numpy as np
import pytest
import torch

import pyengine
from pyengine.keypoints import KeypointError
from pyengine.lift import lift
from pyengine.models import HoTMixSTE, MHFormer, MixSTE, TPCMHFormer, TPCMixSTE
from pyengine.testing import randomize_

# Tiny models of every lifting architecture (odd and even window lengths).
TINY = {
    "mhformer": lambda: MHFormer(frames=9, channel=16, d_hid=32),
    "tpc_mhformer": lambda: TPCMHFormer(frames=9, channel=16, d_hid=32, token_num=3, layer_index=1),
    "mixste": lambda: MixSTE(frames=8, channel=16, depth=2, heads=2),
    "tpc_mixste": lambda: TPCMixSTE(frames=9, channel=16, depth=2, heads=2, token_num=3, layer_index=1),
    "hot_mixste": lambda: HoTMixSTE(frames=8, channel=16, depth=2, heads=2, token_num=4, layer_index=1),
}
# The published flip: joints_left / joints_right of the Human3.6M skeleton (MHFormer / MixSTE main.py).
JOINTS_LEFT, JOINTS_RIGHT = [4, 5, 6, 11, 12, 13], [1, 2, 3, 14, 15, 16]


def tiny(arch, seed=0):
    return randomize_(TINY[arch](), seed).eval()


def sequence(T, seed=0):
    return (0.4 * np.random.default_rng(seed).normal(size=(T, 17, 2))).astype(np.float32)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models: threads only add contention on small CI machines.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def published_flip(p):
    p = p.clone()
    p[..., 0] *= -1
    p[..., JOINTS_LEFT + JOINTS_RIGHT, :] = p[..., JOINTS_RIGHT + JOINTS_LEFT, :]
    return p


@torch.no_grad()
def naive_lift(model, x, flip):
    """One model call per output frame (seq2frame) or per chunk (seq2seq), written out the obvious way."""
    arch, F, T = model.arch, model.frames, len(x)
    x = torch.from_numpy(x)
    c = (F - 1) // 2
    outs = []
    if arch in ("mixste", "hot_mixste"):
        for start in range(0, T, F):
            chunk = torch.stack([x[min(start + k, T - 1)] for k in range(F)])[None]
            o = model(chunk)[0]
            if flip:
                o = (o + published_flip(model(published_flip(chunk))[0])) / 2
            outs += list(o[:min(F, T - start)])
        return torch.stack(outs).numpy()
    for t in range(T):
        win = torch.stack([x[min(max(t - c + k, 0), T - 1)] for k in range(F)])[None]
        if arch.startswith("tpc_"):
            out, index = model(win)
            pos = index[0].tolist().index(c)
            o = out[0, pos]
            if flip:
                o = (o + published_flip(model(published_flip(win), index)[0][0, pos])) / 2
        else:
            o = model(win)[0, c]
            if flip:
                o = (o + published_flip(model(published_flip(win))[0, c])) / 2
        outs.append(o)
    return torch.stack(outs).numpy()


@pytest.mark.parametrize("arch", list(TINY))
@pytest.mark.parametrize("T", [4, 19])  # shorter than the window; several windows / chunks with a ragged end
def test_lift_equals_naive_loop(arch, T):
    model = tiny(arch)
    x = sequence(T)
    want = naive_lift(model, x, flip=True)
    got = lift(model, x, batch_size=1)
    assert got.dtype == np.float32 and got.shape == (T, 17, 3)
    np.testing.assert_array_equal(got, want)  # same windows, same calls: bit for bit
    batched = lift(model, x, batch_size=5)  # batching changes only the float summation order
    assert pyengine.testing.rel_error(torch.from_numpy(batched), torch.from_numpy(want)) < 1e-5


@pytest.mark.parametrize("arch", ["mhformer", "mixste"])
def test_flip_is_the_published_average(arch):
    model = tiny(arch)
    x = sequence(11, seed=1)
    plain = lift(model, x, flip=False)
    mirrored = lift(model, published_flip(torch.from_numpy(x)).numpy(), flip=False)
    want = (plain + published_flip(torch.from_numpy(mirrored)).numpy()) / 2
    np.testing.assert_allclose(lift(model, x, flip=True), want, rtol=0, atol=1e-6)
    assert np.abs(plain - want).max() > 1e-3  # the flip pass does change the output


def test_loaded_models_pixels_and_tensors():
    # pyengine.load's LoadInfo gives arch / frames; pixels are normalised with width / height.
    model = pyengine.load(tiny("mhformer"), backend="reference", device="cpu")
    W, H = 1000, 1002
    px = (sequence(6) + 1) * 400
    want = lift(model, px / W * 2 - np.array([1, H / W], dtype=np.float32), flip=False)
    got = lift(model, torch.from_numpy(px), width=W, height=H, flip=False)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_bad_inputs():
    model = tiny("mixste")
    x = sequence(5)
    with pytest.raises(KeypointError, match="look like pixels"):
        lift(model, x * 500)
    with pytest.raises(KeypointError, match="give both or neither"):
        lift(model, x, width=100)
    bad = x.copy()
    bad[2, 3] = np.nan
    with pytest.raises(KeypointError, match="missing keypoints.*interpolate=True"):
        lift(model, bad)
    with pytest.raises(KeypointError, match=r"\[T, 17, 2\].*got \[5, 16, 2\]"):
        lift(model, x[:, :16])
    with pytest.raises(ValueError, match="batch_size: expected a positive int"):
        lift(model, x, batch_size=0)
    with pytest.raises(ValueError, match="training mode"):
        lift(tiny("mixste").train(), x)
    with pytest.raises(ValueError, match="lifting model"):
        lift(torch.nn.Linear(2, 3), x)
    with pytest.raises(TypeError, match="nn.Module"):
        lift("mhformer", x)
