"""CUDA-graph rules on CPU: the steady-state forward of every fused model makes no host sync.

CUDA graphs are on by default on CUDA, and capture fails on any host sync (``.item()``, ``bool(t)``, ``int(t)``,
``.tolist()``, ``.cpu()``, ``nonzero``, a data-dependent Python ``if``); so does ``torch.export``. Each fused
architecture's *second* forward (the first may build weight caches) runs under a recorder of those calls, on the
C++ backend and on Triton under the interpreter. Value checks belong where data enters (``lift``, ``Lifter``,
the file readers, the CLI), not in the forward."""
import contextlib

import pytest
import torch

import pyengine
from pyengine import launch_record
from pyengine.testing import HostSyncRecorder, randomize_, rel_error

from small_configs import SMALL, arch_of, call

TPC = ("tpc_mhformer", "tpc_mixste", "hot_mixste", "hot_motionbert")


def _model_and_input(name, backend):
    arch = arch_of(name)
    ref = randomize_(pyengine.arch.MODELS[arch](**SMALL[name]), seed=1).eval()
    model = pyengine.load(ref, backend=backend, device="cpu")
    cfg = SMALL[name]
    if "maxlen" in cfg:  # MotionBERT: x, y and the detector's confidence
        x = torch.cat([torch.randn(2, cfg["maxlen"], 17, 2) * 0.3, torch.rand(2, cfg["maxlen"], 17, 1)], dim=-1)
    elif "frames" in cfg:
        x = torch.randn(2, cfg["frames"], 17, 2) * 0.3
    else:
        x = torch.randn(2, next(iter(cfg.values())), 7, 5)
    return arch, model, x


@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("name", list(SMALL))
def test_steady_state_forward_makes_no_host_sync(name, backend):
    """On Triton the forwards run dry (``launch_record.record(execute=False)``: every launch goes through its
    launcher, the kernels are not interpreted) with the launchers' CUDA configurations, so the Python that runs
    on a GPU is what is checked, in seconds instead of minutes. The launches of a dry forward are those of an
    executed one (tests/kernels/test_launch_record.py); the kernels' values are tested in tests/engine/."""
    arch, model, x = _model_and_input(name, backend)
    dry = launch_record.record(execute=False, gpu_configs=True) if backend == "triton" else contextlib.nullcontext()
    with torch.no_grad(), dry as launches:
        first = call(model, arch, x)  # builds the weight caches
        with HostSyncRecorder() as rec:
            call(model, arch, x)
        assert not rec.calls, f"{name} on {backend}: host syncs in the forward:\n" + "\n".join(rec.calls)
        if arch in TPC:  # a given selection (lift's flip pass reuses the index) must not sync either
            index = first[1]
            with HostSyncRecorder() as rec:
                call(model, arch, x, index)
            assert not rec.calls, f"{name} on {backend} with index=: host syncs:\n" + "\n".join(rec.calls)
    if backend == "triton":  # the forwards did go through the Triton launchers
        assert len(launches.launches) > 2, launches.launches


def test_the_recorder_sees_each_kind_of_sync():
    """The recorder itself: each forbidden call is caught (so an empty record means something)."""
    x = torch.randn(4)
    checks = {"item": lambda: x[0].item(), "__bool__": lambda: bool((x > 0).all()), "__int__": lambda: int(x[0]),
              "tolist": lambda: x.tolist(), "nonzero": lambda: x.nonzero(), "__float__": lambda: float(x[1]),
              "numpy": lambda: x.numpy()}
    for name, fn in checks.items():
        with HostSyncRecorder() as rec:
            fn()
        assert any(c.startswith(name + " at ") and __file__ in c for c in rec.calls), (name, rec.calls)
    with HostSyncRecorder() as rec:
        _ = x.shape[0] + 1, x * 2, x.sum(), torch.where(x > 0, x, -x)
    assert rec.calls == []


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_hot_mixste_exports_without_a_value_check_in_thecall(backend):
    """torch.export traces the TPC selection (the exporter tripped on the old host-side NaN check)."""
    arch, model, x = _model_and_input("hot_mixste", backend)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        got, want = exported.module()(x), model(x)
    if backend == "reference":
        assert torch.equal(got, want)
    else:  # eager CPU inference runs pyengine's C++ LayerNorm, the exported graph F.layer_norm: fp32 rounding apart
        assert rel_error(got, want) < 1e-6
