"""Multi-GPU safety on CPU: every Triton launch runs under ``pyengine.backends.device_guard`` of its tensors'
device (Triton and the CUDA glue launch on the *current* device: without the guard a model on ``cuda:1``
would run on ``cuda:0``). Each interpreted launch records the guarded device; it must equal the device of every
tensor argument. Also: kernels refuse, on a GPU, dtypes with no compile-checked variant."""
import pytest
import torch

import pyengine
from pyengine.backends import BackendUnavailableError, check_compiled_dtype, guarded_device
from pyengine.testing import randomize_

CASES = {
    "hot_mixste": dict(frames=9, channel=32, depth=2, heads=4, token_num=5, layer_index=1),
    "tpc_mhformer": dict(frames=27, channel=32, d_hid=48, layers=3, token_num=9, layer_index=1),
    "hwsusa": dict(channels=8, mode="hw", ln_enable=True, hw_shuffle=True),
}


@pytest.fixture
def launches(monkeypatch):
    from triton.runtime import interpreter
    seen = []
    original = interpreter.GridExecutor.__call__

    def record(self, *args, **kwargs):
        devices = {a.device for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)}
        seen.append((getattr(self.fn, "__name__", str(self.fn)), guarded_device(), devices))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(interpreter.GridExecutor, "__call__", record)
    return seen


@pytest.mark.parametrize("arch", list(CASES))
def test_every_triton_launch_is_device_guarded(arch, launches):
    ref = randomize_(pyengine.arch.MODELS[arch](**CASES[arch]), seed=2).eval()
    model = pyengine.load(ref, backend="triton", device="cpu")
    cfg = CASES[arch]
    x = torch.randn(2, cfg["frames"], 17, 2) * 0.3 if "frames" in cfg else torch.randn(2, 8, 6, 5)
    with torch.no_grad():
        model(x)
    assert launches, "no Triton launch was seen (is the interpreter on?)"
    unguarded = [(name, devs) for name, guard, devs in launches if guard is None or devs - {guard}]
    assert not unguarded, f"launches outside a device_guard of their tensors' device: {unguarded}"


def test_kernels_refuse_unchecked_dtypes_on_a_gpu():
    meta64 = torch.empty(4, 4, dtype=torch.float64, device="meta")  # stands in for a GPU tensor
    with pytest.raises(BackendUnavailableError, match=r"layernorm: .* takes float32.*got torch.float64"):
        check_compiled_dtype(meta64, "pyengine::layernorm", (torch.float32, torch.float16, torch.bfloat16))
    check_compiled_dtype(meta64.float(), "pyengine::layernorm", (torch.float32,))  # a checked dtype passes
    check_compiled_dtype(torch.zeros(2, dtype=torch.float64), "x", (torch.float32,))  # CPU: the interpreter's
