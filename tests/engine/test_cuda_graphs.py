"""CUDA-graph latency mode (pyengine/cuda_graphs.py) on CPU: the signature, weight-state and fallback logic of
``GraphedForward`` with a fake capturer. The fake "graph" refuses to replay once the model's weights differ
from those at capture (a real graph would read stale or freed memory there), so every test below would fail on
a stale replay. The real capture runs in tests/gpu/test_engine_gpu.py on a GPU."""
import contextlib
import warnings

import pytest
import torch

import pyengine
from pyengine.cuda_graphs import GraphedForward, _model_state, enable_cuda_graphs
from pyengine.testing import randomize_

CFG = dict(frames=9, channel=32, depth=2, heads=4)
TPC_CFG = dict(frames=9, channel=32, depth=2, heads=4, token_num=3, layer_index=1)


class FakeCapturer:
    """Stands in for ``CudaGraphCapturer`` on CPU: warm-up twice, "capture" = remember the function and the
    model's weight state; replay recomputes into the static outputs, and fails on stale weights."""

    device_type = "cpu"

    def __init__(self, model, fail=None):
        self.model, self.fail, self.capturing_now = model, fail, False
        self.warmups = 0

    def device_guard(self, device):
        return contextlib.nullcontext()

    def capturing(self):
        return self.capturing_now

    def capture(self, fn, device):
        for _ in range(2):
            fn()
            self.warmups += 1
        if self.fail:
            raise RuntimeError(self.fail)
        out = fn()
        state = _model_state(self.model)

        def replay():
            assert _model_state(self.model) == state, "replayed a graph captured with other weights (stale)"
            new = fn()
            for o, n in zip(out if isinstance(out, tuple) else (out,), new if isinstance(new, tuple) else (new,)):
                o.copy_(n)
        return replay, out


def graphed(cfg=CFG, arch="mixste", fail=None):
    ref = randomize_(pyengine.arch.MODELS[arch](**cfg), seed=3).eval()
    model = pyengine.load(ref, backend="cpp", device="cpu")
    eager = model.forward
    enable_cuda_graphs(model, FakeCapturer(model, fail))
    return model, eager


def poses(B=2, seed=0):
    return torch.randn(B, 9, 17, 2, generator=torch.Generator().manual_seed(seed)) * 0.3


def test_replay_equals_eager_and_captures_once_per_signature():
    model, eager = graphed()
    fwd = model.forward
    with torch.no_grad():
        for seed in range(3):
            x = poses(seed=seed)
            got = model(x)
            assert torch.equal(got, eager(x))
        assert fwd.captures == 1
        keep = model(poses(seed=0))
        model(poses(seed=1))
        assert torch.equal(keep, eager(poses(seed=0)))  # outputs are fresh tensors, not the static buffer
        model(poses(B=3))
    assert fwd.captures == 2 and len(fwd.graphs) == 2


@pytest.mark.parametrize("change", ["load_state_dict", "in_place", "to_dtype", "replace_parameter"])
def test_weight_changes_recapture_instead_of_replaying_stale_weights(change):
    model, eager = graphed()
    x = poses()
    with torch.no_grad():
        before = model(x)
        if change == "load_state_dict":
            model.load_state_dict({k: v * 1.5 if v.is_floating_point() else v for k, v in model.state_dict().items()})
        elif change == "in_place":
            model.Spatial_pos_embed.add_(0.25)
        elif change == "to_dtype":
            model.double()
            x = x.double()
        else:
            model.STEblocks[0].attn.qkv.weight = torch.nn.Parameter(model.STEblocks[0].attn.qkv.weight * 2)
        after = model(x)
        assert torch.equal(after, eager(x))
        assert not torch.allclose(after.double(), before.double())
    assert model.forward.captures == 2


def test_capture_failure_warns_once_runs_eagerly_and_is_not_retried():
    model, eager = graphed(fail="operation not permitted when stream is capturing")
    x = poses()
    with torch.no_grad():
        with pytest.warns(RuntimeWarning, match="CUDA-graph capture failed.*runs eagerly"):
            got = model(x)
        assert torch.equal(got, eager(x))
        warmups = model.forward.capturer.warmups
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a second warning (or a retried capture) would fail here
            assert torch.equal(model(x), eager(x))
    assert model.forward.capturer.warmups == warmups and model.forward.captures == 0
    assert "capture FAILED" in str(model.report()) and "stream is capturing" in str(model.report())


def test_inference_mode_and_no_grad_get_their_own_graphs():
    model, eager = graphed()
    x = poses()
    with torch.inference_mode():
        a = model(x)
    with torch.no_grad():  # a graph captured under inference_mode cannot take in-place input copies here
        b = model(x)
    assert torch.equal(a, b) and len(model.forward.graphs) == 2


def test_steps_aside_for_grad_compile_tracing_and_a_foreign_capture(monkeypatch):
    model, eager = graphed()
    x = poses()
    out = model(x)  # grad mode: autograd needs the eager graph
    assert out.requires_grad and model.forward.captures == 0
    with torch.no_grad():
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        model(x)
        monkeypatch.undo()
        model.forward.capturer.capturing_now = True  # someone else is capturing on this stream
        model(x)
        assert model.forward.captures == 0
        model.forward.capturer.capturing_now = False
        model(x)
    assert model.forward.captures == 1


def test_tpc_index_keyword_is_a_static_input():
    model, eager = graphed(TPC_CFG, arch="tpc_mixste")
    x = poses()
    with torch.no_grad():
        _, index = eager(x)
        other = torch.sort(torch.stack([torch.tensor([0, 4, 8]), torch.tensor([1, 4, 7])]), dim=1).values
        for idx in (index, other):
            got, got_idx = model(x, index=idx)
            want, _ = eager(x, index=idx)
            assert torch.equal(got, want) and torch.equal(got_idx, idx)
    assert model.forward.captures == 1


def test_load_inside_inference_mode_and_in_place_update_of_inference_weights():
    """Parameters made under inference_mode keep no version counter: their derived weights are rebuilt each call
    (never a stale cache), and loading there works."""
    ref = randomize_(pyengine.arch.MODELS["mixste"](**CFG), seed=3).eval()
    x = poses()
    with torch.inference_mode():
        model = pyengine.load({k: v.clone() for k, v in ref.state_dict().items()}, arch="mixste", heads=4, backend="cpp",
                              device="cpu")
        assert model.Temporal_pos_embed.is_inference()
        first = model(x)
        model.Temporal_pos_embed.add_(0.5)  # in place, no version bump: a version cache could not see it
        second = model(x)
        want = pyengine.load(ref, backend="reference", device="cpu")
        want.Temporal_pos_embed.add_(0.5)
        assert torch.allclose(second, want(x), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(first, second)


def test_graphed_forward_is_what_load_installs_on_cuda():
    assert pyengine.engine.GraphedForward is GraphedForward  # engine re-exports the latency mode
