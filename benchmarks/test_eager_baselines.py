"""Eager-reference baselines that the fused kernels will be compared against, side by side, in one run.

Run: ``.venv/bin/python -m pytest benchmarks`` (CI runs it with ``--benchmark-disable``: each case once, as a
test). The sizes are the published ones where the CPU allows (the issue targets' CPU shapes)."""
import pytest
import torch

from pyengine.models import HSUSA, MHFormer
from pyengine.testing import randomize_


@pytest.mark.parametrize("frames,batch", [(27, 16), (81, 16)])
def test_mhformer_eager(benchmark, frames, batch):
    model = randomize_(MHFormer(frames=frames), seed=0).eval()
    x = torch.randn(batch, frames, 17, 2) * 0.3
    with torch.no_grad():
        out = benchmark(model, x)
    assert out.shape == (batch, frames, 17, 3) and torch.isfinite(out).all()


def test_susa_eager(benchmark):
    # issue 5's CPU shape: batch 8, 40 channels at 64 x 48
    module = randomize_(HSUSA(40), seed=0).eval()
    x = torch.randn(8, 40, 64, 48)
    with torch.no_grad():
        out = benchmark(module, x)
    assert out.shape == x.shape
