"""Engine checks that need a GPU (run by benchmarks/gpu_suite.py on the GPU box; skipped on CPU CI): whole
models on every GPU backend against fp64 eager, CUDA-graph replay against eager (also after the weights change),
the steady-state forward without a host sync (CUDA's own sync detector), and a model on a second GPU."""
import pytest
import torch

import pyengine
from pyengine.testing import randomize_, rel_error

from small_configs import call

pytestmark = pytest.mark.gpu  # (conftest skips it without a GPU)

CASES = {
    "mhformer": dict(frames=81, channel=64, d_hid=128, layers=3),
    "tpc_mhformer": dict(frames=81, channel=64, d_hid=128, layers=3, token_num=27, layer_index=1),
    "mixste": dict(frames=27, channel=64, depth=2, heads=8),
    "hot_mixste": dict(frames=27, channel=64, depth=3, heads=8, token_num=9, layer_index=1),
    "tpc_mixste": dict(frames=27, channel=64, depth=3, heads=8, token_num=9, layer_index=2),
}
BACKENDS = ["triton", pytest.param("cuda", marks=pytest.mark.cuda_ext), "auto"]


def build(arch, seed=0):
    return randomize_(pyengine.arch.MODELS[arch](**CASES[arch]), seed=seed).eval()


def poses(arch, B=4):
    return torch.randn(B, CASES[arch]["frames"], 17, 2, device="cuda") * 0.3


@pytest.mark.parametrize("arch", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_backends_match_reference(arch, backend, dtype):
    ref = build(arch)
    x = poses(arch)
    fast = pyengine.load(ref, backend=backend, device="cuda", dtype=dtype, cuda_graphs=False)
    with torch.no_grad():
        want, idx = call(ref.double().cuda(), arch, x.double())
        base, _ = call(pyengine.load(ref, backend="reference", device="cuda", dtype=dtype), arch, x, idx)
        got, _ = call(fast, arch, x, idx)
    floor = 1e-4 if dtype == torch.float32 else 1e-1
    assert torch.isfinite(got).all()
    assert rel_error(got, want) <= max(floor, 2 * rel_error(base, want))


@pytest.mark.parametrize("arch", ["mhformer", "hot_mixste", "tpc_mhformer"])
@pytest.mark.parametrize("backend", ["triton", pytest.param("cuda", marks=pytest.mark.cuda_ext)])
def test_cuda_graph_replay_equals_eager(arch, backend):
    ref = build(arch)
    graphed = pyengine.load(ref, backend=backend, device="cuda")
    eager = pyengine.load(ref, backend=backend, device="cuda", cuda_graphs=False)
    for _ in range(3):  # capture on the first call, replay on the next ones with new inputs
        x = poses(arch, B=2)
        with torch.no_grad():
            a, b = call(graphed, arch, x), call(eager, arch, x)
        assert torch.equal(a[0], b[0])
    fwd = graphed.forward
    assert fwd.captures == 1 and not fwd.failures, graphed.report()
    # new weights: the graph must be captured again, never replayed with the old stacked / folded weights
    new = {k: v * 1.1 if v.is_floating_point() else v for k, v in ref.state_dict().items()}
    graphed.load_state_dict(new)
    eager.load_state_dict(new)
    x = poses(arch, B=2)
    with torch.no_grad():
        assert torch.equal(call(graphed, arch, x)[0], call(eager, arch, x)[0])
    assert fwd.captures == 2
    with torch.inference_mode():  # its own graph (inference tensors)
        assert torch.equal(call(graphed, arch, x)[0], call(eager, arch, x)[0])


@pytest.mark.parametrize("arch", list(CASES))
def test_steady_state_forward_has_no_host_sync(arch):
    """CUDA's sync detector: any synchronising call in the second forward raises."""
    model = pyengine.load(build(arch), backend="triton", device="cuda", cuda_graphs=False)
    x = poses(arch, B=2)
    with torch.no_grad():
        call(model, arch, x)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            call(model, arch, x)
        finally:
            torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("backend", ["triton", pytest.param("cuda", marks=pytest.mark.cuda_ext)])
def test_model_on_a_second_gpu_without_set_device(backend):
    ref = build("hot_mixste")
    model = pyengine.load(ref, backend=backend, device="cuda:1")
    x = poses("hot_mixste", B=2).to("cuda:1")
    assert torch.cuda.current_device() == 0
    with torch.no_grad():
        got, _ = call(model, "hot_mixste", x)
        want, _ = call(pyengine.load(ref, backend="reference", device="cuda:1"), "hot_mixste", x)
    assert got.device == torch.device("cuda:1") and rel_error(got, want) < 1e-4
