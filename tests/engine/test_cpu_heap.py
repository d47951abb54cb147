"""pyengine.cpu_heap: the heap settings a fused CPU model applies once per process, what report() says, the opt-out
and a bad setting."""
import pytest
import torch

import pyengine
from pyengine import cpu_heap
from pyengine.testing import randomize_


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(cpu_heap, "_state", None)
    monkeypatch.delenv("PYENGINE_CPU_HEAP", raising=False)
    return monkeypatch


def test_a_fused_cpu_model_keeps_the_heap_once_and_says_so(fresh):
    calls = []
    real = cpu_heap._glibc_mallopt()
    if real is None:
        pytest.skip("not glibc: no mallopt to set")
    fresh.setattr(cpu_heap, "_glibc_mallopt", lambda: lambda p, v: calls.append((p, v)) or real(p, v))
    model = pyengine.load(randomize_(pyengine.arch.MODELS["mixste"](frames=9, channel=32, depth=2, heads=4)).eval())
    with torch.no_grad():
        model(torch.randn(1, 9, 17, 2))
        model(torch.randn(1, 9, 17, 2))
    assert calls == [(cpu_heap._M_MMAP_THRESHOLD, 32 << 20), (cpu_heap._M_TRIM_THRESHOLD, 1 << 30)]  # once
    assert "keeps freed blocks up to 32 MiB in the heap" in str(model.report())
    plain = pyengine.load(model, backend="reference")
    assert "CPU heap" not in str(plain.report())


def test_the_heap_can_be_left_alone_and_a_bad_setting_raises(fresh):
    fresh.setattr(cpu_heap, "_glibc_mallopt", lambda: pytest.fail("PYENGINE_CPU_HEAP=0: mallopt is not called"))
    fresh.setenv("PYENGINE_CPU_HEAP", "0")
    assert "left as it is (PYENGINE_CPU_HEAP=0)" in cpu_heap.keep_cpu_heap()
    fresh.setattr(cpu_heap, "_state", None)
    fresh.setenv("PYENGINE_CPU_HEAP", "yes")
    with pytest.raises(ValueError, match="PYENGINE_CPU_HEAP: expected '0' .* or '1' .*got 'yes'"):
        cpu_heap.keep_cpu_heap()


def test_without_glibc_nothing_changes_and_the_report_says_why(fresh):
    fresh.setattr(cpu_heap, "_glibc_mallopt", lambda: None)
    assert "not glibc" in cpu_heap.keep_cpu_heap()
    fresh.setattr(cpu_heap, "_state", None)
    fresh.setattr(cpu_heap, "_glibc_mallopt", lambda: lambda p, v: 0)
    assert "refused" in cpu_heap.keep_cpu_heap()
