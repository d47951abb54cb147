"""Engine checks that need a GPU (run by benchmarks/gpu_suite.sh on the GPU box; skipped on CPU CI)."""
import pytest
import torch

import pyengine
from pyengine.testing import randomize_, rel_error

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CASES = {
    "mhformer": dict(frames=81, channel=64, d_hid=128, layers=3),
    "tpc_mhformer": dict(frames=81, channel=64, d_hid=128, layers=3, token_num=27, layer_index=1),
    "mixste": dict(frames=27, channel=64, depth=2, heads=8),
    "hot_mixste": dict(frames=27, channel=64, depth=3, heads=8, token_num=9, layer_index=1),
    "tpc_mixste": dict(frames=27, channel=64, depth=3, heads=8, token_num=9, layer_index=2),
}


def run(model, arch, x, index=None):
    kw = {} if index is None else {"index": index}
    if arch == "hot_mixste":
        kw["return_index"] = True
    out = model(x, **kw)
    return out if isinstance(out, tuple) else (out, None)


@pytest.mark.parametrize("arch", list(CASES))
@pytest.mark.parametrize("backend", ["triton", "cuda", "auto"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_backends_match_reference(arch, backend, dtype):
    ref = randomize_(pyengine.arch.MODELS[arch](**CASES[arch]), seed=0).eval()
    x = torch.randn(4, CASES[arch]["frames"], 17, 2, device="cuda") * 0.3
    try:
        fast = pyengine.load(ref, backend=backend, device="cuda", dtype=dtype, cuda_graphs=False)
    except pyengine.BackendUnavailableError as exc:
        pytest.skip(str(exc))
    with torch.no_grad():
        want, idx = run(ref.double().cuda(), arch, x.double())
        base, _ = run(pyengine.load(ref, backend="reference", device="cuda", dtype=dtype), arch, x, idx)
        got, _ = run(fast, arch, x, idx)
    floor = 1e-4 if dtype == torch.float32 else 1e-1
    assert rel_error(got, want) <= max(floor, 2 * rel_error(base, want))


@pytest.mark.parametrize("arch", ["mhformer", "hot_mixste"])
def test_cuda_graph_replay_equals_eager(arch):
    ref = randomize_(pyengine.arch.MODELS[arch](**CASES[arch]), seed=0).eval()
    graphed = pyengine.load(ref, backend="triton", device="cuda")
    eager = pyengine.load(ref, backend="triton", device="cuda", cuda_graphs=False)
    for seed in range(3):  # capture on the first call, replay on the next ones with new inputs
        x = torch.randn(2, CASES[arch]["frames"], 17, 2, device="cuda", generator=None) * 0.3
        with torch.no_grad():
            a, b = graphed(x), eager(x)
        assert torch.equal(a, b)
