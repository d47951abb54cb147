"""Eager SUSA baseline (issue 5's CPU shape: batch 8, 40 channels at 64 x 48). The model baselines that used to
live here (MHFormer eager at 27 / 81 frames) are now rows of benchmarks/test_bench_models.py, next to the compiled and
pyengine rows. Run: ``.venv/bin/python -m pytest benchmarks/test_bench_eager_baselines.py``."""
import torch

from common import DEVICE, time_rows
from pyengine.models import HSUSA
from pyengine.testing import randomize_


def test_susa_eager(benchmark):
    module = randomize_(HSUSA(40), seed=0).eval().to(DEVICE)
    inputs = [torch.randn(8, 40, 64, 48, device=DEVICE) for _ in range(4)]
    n = inputs[0].numel() * 4
    out = time_rows(benchmark, module, inputs, group="susa eager",
                    extra={"impl": "eager", "variant": "fp32", "dtype": "float32", "bytes": 2 * n})
    assert out.shape == inputs[0].shape
