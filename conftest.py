"""Test and benchmark configuration, shared by tests/ and benchmarks/.

CI has no GPU: Triton kernels run under the interpreter, which must be switched on before triton is first
imported."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
