"""The engine: every architecture through backend="triton" (interpreter), "cpp" and "auto" matches
backend="reference"; report() is complete; impossible backends raise; swap + revert; third-party copies of the
published code are recognised; validate=True; gradients of the drop-in modules."""
import pytest
import torch

import pyengine
from pyengine import dispatch, engine
from pyengine.models import CHIBlock, MHFormer, SHRBlock
from pyengine.nn._common import Fused
from pyengine.ops.attention import attention_ref
from pyengine.testing import randomize_, rel_error

from small_configs import TRANSFORMERS as SMALL, arch_of, call
from thirdparty_models import ThirdPartyMHFormer, ThirdPartyMixSTE


def build(name):
    arch = arch_of(name)
    return arch, randomize_(pyengine.arch.MODELS[arch](**SMALL[name]), seed=1).eval()


def poses(model_cfg, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, model_cfg["frames"], 17, 2, generator=g) * 0.3


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_every_architecture_matches_the_reference(name, backend):
    arch, ref = build(name)
    # (the interpreter runs Triton programs one by one in numpy: an odd batch of 3 for cpp, 2 for triton)
    x = poses(SMALL[name], B=3 if backend == "cpp" else 2)
    fast = pyengine.load(ref, backend=backend, device="cpu")
    assert type(fast) is engine.FUSED[arch]
    with torch.no_grad():
        want, idx = call(ref.double(), arch, x.double())
        base, _ = call(ref.float(), arch, x, idx)
        got, got_idx = call(fast, arch, x)
    if idx is not None:  # same token selection (well-separated random features)
        assert torch.equal(got_idx, idx)
    tol = max(1e-5, 2 * rel_error(base, want))
    assert rel_error(got, want) <= tol, (rel_error(got, want), tol)


def test_half_precision_through_triton():
    arch, ref = build("mhformer81")
    x = poses(SMALL["mhformer81"], B=1)
    fast = pyengine.load(ref, backend="triton", device="cpu", dtype=torch.float16)
    with torch.no_grad():
        want, _ = call(ref.double(), arch, x.double())
        base, _ = call(pyengine.load(ref, backend="reference", dtype=torch.float16), arch, x)
        got, _ = call(fast, arch, x)
    assert got.dtype == torch.float32  # outputs follow the input dtype
    assert rel_error(got, want) <= max(2e-2, 2 * rel_error(base, want))


def test_auto_on_cpu_is_the_cpp_table_and_report_is_complete():
    """auto on CPU = the cpp column, but for ln_linear's GEMM, measured per dtype (tests/ops/test_onednn_linear.py),
    and attention, measured per call shape (test_auto_cpu_attention_*)."""
    arch, ref = build("tpc_mhformer")
    model = pyengine.load(ref, device="cpu")
    rows = model.report()
    text = str(rows)
    fused = [n for n, m in model.named_modules() if isinstance(m, Fused)]
    for name in fused:  # every fused module has a row
        assert any(r.module == (name or "(model)") for r in rows), name
    for op in ("layernorm", "tpc_select", "gather_tokens"):  # the ops this model runs
        assert f"{op}={dispatch.TABLE['cpp'][op]}" in text
    assert "attention=fastest" in text or "pinned by PYENGINE_CPU_ATTENTION" in text
    assert f"ln_linear={dispatch.cpu_gemm_choice(torch.float32).impl}" in text and "measured once" in text
    assert "auto on CPU" in text and "torch glue" in text
    # A reference model says why it is the reference.
    plain = pyengine.load(ref, backend="reference")
    assert "backend='reference' requested" in str(plain.report())


@pytest.fixture
def fresh_attention(monkeypatch):
    monkeypatch.setattr(dispatch, "_CPU_ATTENTION", {})
    monkeypatch.delenv("PYENGINE_CPU_ATTENTION", raising=False)
    # the GEMM choice pinned, so that only attention is timed (the tests replace the timer)
    monkeypatch.setattr(dispatch, "_CPU_GEMM", {})
    monkeypatch.setenv("PYENGINE_CPU_GEMM", "aten")
    return monkeypatch


@pytest.mark.parametrize("cpp_faster", [True, False])
def test_auto_cpu_attention_runs_the_kernel_measured_faster_per_shape(fresh_attention, cpp_faster):
    calls = []
    real_sdpa, real_attention = dispatch.sdpa_attention, dispatch.attention

    def sdpa(q, k, v):
        calls.append("sdpa")
        return real_sdpa(q, k, v)

    def cpp(q, k, v, **kw):
        calls.append(kw.get("backend"))
        return real_attention(q, k, v, **kw)

    fresh_attention.setattr(dispatch, "sdpa_attention", sdpa)
    fresh_attention.setattr(dispatch, "attention", cpp)
    fresh_attention.setattr(dispatch, "_time_once", lambda fn: (fn(), {"sdpa": 2.0, "cpp": 1.0 if cpp_faster
                                                                       else 1.95}[calls[-1]])[1])
    ops = dispatch.Ops("auto", "cpu")
    assert ops.impl["attention"] == "fastest" and "nothing measured yet" in ops.choice["attention"].describe()
    q, k, v = (torch.randn(2, 1, 9, 2, 8) for _ in range(3))
    out = ops.attention(q, k, v)
    assert calls[:6] == ["sdpa", "cpp"] * 3  # interleaved, three rounds
    want = "cpp" if cpp_faster else "sdpa"  # 1.95 vs 2.0 is a tie: SDPA
    assert calls[6:] == [want] and torch.allclose(out, dispatch.attention_ref(q, k, v), atol=1e-5)
    ops.attention(q, k, v)
    assert calls[7:] == [want]  # cached: not measured again
    assert f"q [2, 1, 9, 2, 8] float32: {want}" in ops.choice["attention"].describe()
    ops.attention(*(torch.randn(2, 1, 5, 2, 8) for _ in range(3)))
    assert len(calls) == 8 + 7  # a new shape is measured again
    assert dispatch.Ops("auto", "cpu", dtype=torch.float64).impl["attention"] == "sdpa"  # fp64: no fp32 kernel


@pytest.mark.parametrize("amx_here", [True, False])
def test_auto_cpu_attention_times_the_amx_kernel_where_it_runs(fresh_attention, amx_here):
    """bf16 on a CPU with AMX: the AMX kernel is a third candidate (a fake one here, so the test runs anywhere)."""
    calls = []
    fresh_attention.setattr(dispatch, "amx_available", lambda: amx_here)
    fresh_attention.setattr(dispatch, "sdpa_attention", lambda q, k, v: calls.append("sdpa") or attention_ref(q, k, v))
    fresh_attention.setattr(dispatch, "attention", lambda q, k, v, **kw: calls.append(kw["backend"]) or
                            attention_ref(q, k, v))
    fresh_attention.setattr(dispatch, "attention_amx", lambda q, k, v: calls.append("amx") or attention_ref(q, k, v))
    times = {"sdpa": 2.0, "cpp": 3.0, "amx": 0.5}
    fresh_attention.setattr(dispatch, "_time_once", lambda fn: (fn(), times[calls[-1]])[1])
    ops = dispatch.Ops("auto", "cpu", dtype=torch.bfloat16)
    assert ("no AMX kernel here" in ops.choice["attention"].why) is not amx_here
    q, k, v = (torch.randn(2, 1, 9, 2, 8).bfloat16() for _ in range(3))
    ops.attention(q, k, v)
    kernels = ["sdpa", "cpp", "amx"] if amx_here else ["sdpa", "cpp"]
    assert calls == kernels * 3 + [kernels[-1] if amx_here else "sdpa"]
    text = ops.choice["attention"].describe()
    assert ("amx 500.00 ms" in text) is amx_here and "SDPA 2000.00 ms, cpp 3000.00 ms" in text
    calls.clear()
    ops.attention(q.float(), k.float(), v.float())  # fp32: the AMX kernel takes bf16 only
    assert calls == ["sdpa", "cpp"] * 3 + ["sdpa"]
    if amx_here:
        calls.clear()
        wide = torch.randn(1, 1, 3, 1, dispatch.AMX_MAX_HEAD_DIM + 8).bfloat16()
        ops.attention(wide, wide, wide)  # a head dim beyond the AMX kernel's
        assert "amx" not in calls


def test_auto_cpu_attention_can_be_pinned_and_traces_sdpa(fresh_attention):
    fresh_attention.setenv("PYENGINE_CPU_ATTENTION", "cpp")
    c = dispatch.Ops("auto", "cpu").choice["attention"]
    assert c.impl == "cpp" and "pinned by PYENGINE_CPU_ATTENTION=cpp" in c.why
    fresh_attention.setenv("PYENGINE_CPU_ATTENTION", "flash")
    with pytest.raises(ValueError, match="PYENGINE_CPU_ATTENTION: expected 'cpp' or 'sdpa'.*got 'flash'"):
        dispatch.Ops("auto", "cpu")
    fresh_attention.delenv("PYENGINE_CPU_ATTENTION")
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        q = torch.empty(2, 1, 9, 2, 8)
        assert dispatch.cpu_attention_impl(q, q, q) == "sdpa"  # nothing to time: torch's own op is traced
    assert dispatch._CPU_ATTENTION == {}


def test_impossible_backends_raise(monkeypatch):
    _, ref = build("mixste")
    with pytest.raises(pyengine.BackendUnavailableError, match="backend='cuda' runs on CUDA tensors"):
        pyengine.load(ref, backend="cuda", device="cpu")
    monkeypatch.setattr(dispatch, "interpreting", lambda: False)
    with pytest.raises(pyengine.BackendUnavailableError, match="backend='triton' needs CUDA tensors"):
        pyengine.load(ref, backend="triton", device="cpu")
    with pytest.raises(ValueError, match="backend: expected one of"):
        pyengine.load(ref, backend="tensorrt")


@pytest.mark.parametrize("arch,cfg", [("hsusa", dict(channels=8)), ("wsusa", dict(channels=8, ln_enable=False)),
                                      ("hwsusa", dict(channels=8, mode="hw", ln_enable=True, hw_shuffle=True)),
                                      ("sx_shuffle_unit", dict(in_channels=16, out_channels=16)),
                                      ("px_shuffle_unit", dict(in_channels=16, out_channels=16))])
@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_susa_family_through_the_engine(arch, cfg, backend):
    ref = randomize_(pyengine.arch.MODELS[arch](**cfg), seed=5).eval()
    fast = pyengine.load(ref, backend=backend)
    assert type(fast) is engine.FUSED[arch]
    assert f"susa={backend}" in str(fast.report())
    if arch.endswith("unit"):  # the folded depthwise conv between the SUSAs: ours on CPU, cuDNN's on CUDA
        assert f"dwconv3x3={'cpp' if backend == 'cpp' else 'aten'}" in str(fast.report())
    x = torch.randn(3, next(iter(cfg.values())), 7, 5)
    with torch.no_grad():
        want, base, got = ref.double()(x.double()), ref.float()(x), fast(x)
    assert rel_error(got, want) <= max(1e-5, 2 * rel_error(base, want))


def test_dispatch_table_covers_every_op_and_backend():
    """One table: every op in dispatch.OPS has an implementation, with a reason, for every backend in TABLE and for
    "auto" on CUDA; the backends are backends.BACKENDS (the one definition), and every op wrapper's own "auto"
    (backends.OP_IMPLS) covers every wrapper in pyengine.ops (the engine's ops and onednn_linear, which the engine
    runs as an implementation of ln_linear)."""
    from pyengine import backends, ops
    assert set(dispatch.TABLE) | {"auto"} == set(backends.BACKENDS)
    for backend, row in dispatch.TABLE.items():
        assert set(row) == set(dispatch.OPS), backend
        assert all(dispatch.why(op, impl) for op, impl in row.items())
    assert set(dispatch.AUTO_CUDA) == set(dispatch.OPS)
    assert set(backends.OP_IMPLS) == set(ops.__all__) and set(dispatch.OPS) <= set(ops.__all__)
    for backend in ("cpp", "reference", "auto"):
        assert set(dispatch.resolve(backend, "cpu")) == set(dispatch.OPS)
    from pyengine.nn import susa as dn
    assert dn.BACKENDS is backends.BACKENDS


def test_op_wrappers_share_one_signature_convention():
    """Every op wrapper in pyengine.ops: inputs first, options keyword-only, ``backend="auto"`` keyword-only."""
    import inspect
    import pyengine.ops as ops
    for name in ops.__all__:
        params = inspect.signature(getattr(ops, name)).parameters
        assert params["backend"].kind is inspect.Parameter.KEYWORD_ONLY, name
        assert params["backend"].default == "auto", name


@pytest.mark.parametrize("backend", ["cpp", "triton", "reference", "auto"])
def test_susa_drop_ins_resolve_through_the_dispatch_table(backend, monkeypatch):
    """The SUSA drop-ins are ordinary fused modules: their kernels are dispatch.resolve's, report() names them per
    backend (each reason once), and a changed table entry changes what they run."""
    cfg = dict(in_channels=16, out_channels=16)
    ref = randomize_(pyengine.arch.MODELS["px_shuffle_unit"](**cfg), seed=5).eval()
    if backend == "reference":  # load(backend="reference") returns the reference itself; the drop-in can run it too
        from pyengine.nn.susa import PXShuffleUnit
        fast = PXShuffleUnit.from_reference(ref, backend="reference")
    else:
        fast = pyengine.load(ref, backend=backend, device="cpu")
    assert isinstance(fast, Fused)
    choice = dispatch.resolve(backend, "cpu")
    text = str(fast.report())
    for op in ("susa", "dwconv3x3"):
        assert f"{op}={choice[op].impl}" in text
        assert f"{choice[op].impl}: {choice[op].why}" in text
    reasons = text.split("why:\n")[1].splitlines()
    assert len(reasons) == len(set(reasons))
    x = torch.randn(2, 16, 7, 5)
    with torch.no_grad():
        want = ref(x)
        torch.testing.assert_close(fast(x), want, rtol=1e-4, atol=1e-5)
    if backend == "cpp":  # the module asks the table: the depthwise conv moves to ATen's F.conv2d
        monkeypatch.setitem(dispatch.TABLE["cpp"], "dwconv3x3", "aten")
        fresh = pyengine.load(ref, backend="cpp", device="cpu")
        assert "dwconv3x3=aten" in str(fresh.report())
        with torch.no_grad():
            torch.testing.assert_close(fresh(x), want, rtol=1e-4, atol=1e-5)


def test_fused_state_dict_keeps_the_published_format():
    arch, ref = build("hot_mixste")
    fast = pyengine.load(ref, backend="cpp")
    assert list(fast.state_dict()) == list(ref.state_dict())
    assert all(torch.equal(fast.state_dict()[k], v) for k, v in ref.state_dict().items())


def test_third_party_copies_are_recognised_by_load():
    for tp, cfg, arch in [(ThirdPartyMHFormer(frames=81, channel=32, d_hid=48), dict(frames=81), "mhformer"),
                          (ThirdPartyMixSTE(frames=9, channel=32, depth=2), dict(frames=9), "mixste")]:
        tp = randomize_(tp, seed=2).eval()
        x = poses(cfg, B=2)
        fast = pyengine.load(tp, backend="cpp")
        assert fast.pyengine.arch == arch
        with torch.no_grad():
            want = tp.double()(x.double())
            base = tp.float()(x)
            got = fast(x)
        assert rel_error(got, want) <= max(1e-5, 2 * rel_error(base, want))


@pytest.mark.parametrize("make", [lambda: ThirdPartyMHFormer(frames=81, channel=32, d_hid=48),
                                  lambda: randomize_(MHFormer(frames=81, channel=32, d_hid=48), seed=3),
                                  lambda: ThirdPartyMixSTE(frames=9, channel=32, depth=2)],
                         ids=["thirdparty_mhformer", "pyengine_mhformer", "thirdparty_mixste"])
def test_swap_and_revert(make):
    model = randomize_(make(), seed=3).eval()
    x = poses(dict(frames=81 if hasattr(model, "Transformer_hypothesis") else 9), B=2)
    with torch.no_grad():
        before = model(x)
        want = model.double()(x.double())
        model.float()
    params = {n: p for n, p in model.named_parameters()}
    swapped = pyengine.swap(model, backend="cpp")
    assert swapped, "nothing recognised"
    kinds = {type(model.get_submodule(n)).__name__ for n in swapped}
    assert kinds <= {"SHRBlock", "CHIBlock", "MHGEncoder", "Block", "CrossAttention"}
    # the very same Parameter objects, so training the swapped model trains the user's model
    assert all(p is params[n] for n, p in model.named_parameters())
    with torch.no_grad():
        during = model(x)
    assert rel_error(during, want) <= max(1e-5, 2 * rel_error(before, want))
    restored = pyengine.revert(model)
    assert sorted(restored) == sorted(swapped)
    assert not any(isinstance(m, Fused) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), before)  # bit for bit


def test_swap_reports_missing_head_count():
    blk = randomize_(SHRBlock(16, 4, 32))
    del blk.attn_1.num_heads
    with pytest.raises(ValueError, match="num_heads"):
        pyengine.swap(torch.nn.Sequential(blk), backend="cpp")


def test_validate_passes_and_catches_a_wrong_kernel(monkeypatch):
    arch, ref = build("mixste")
    x = poses(SMALL["mixste"], B=2)
    model = pyengine.load(ref, backend="cpp", validate=True)
    with torch.no_grad():
        model(x)
    assert model.pyengine.validation["deviation"] <= model.pyengine.validation["tolerance"]
    broken = pyengine.load(ref, backend="cpp", validate=True)
    assert dispatch.TABLE["cpp"]["attention"] == "cpp"  # the C++ kernel: the one broken below
    real = dispatch.attention
    monkeypatch.setattr(dispatch, "attention", lambda q, k, v, **kw: real(q, k, v, **kw) * 1.001)
    with pytest.raises(pyengine.ValidationError, match="deviates from the fp64 eager reference"), torch.no_grad():
        broken(x)


@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_drop_in_blocks_train_like_the_reference(backend):
    """Gradients of the fused SHR / CHI blocks equal the reference's (fp64, small shapes)."""
    from pyengine import nn as pnn
    for R, Fu in [(SHRBlock, pnn.mhformer.SHRBlock), (CHIBlock, pnn.mhformer.CHIBlock)]:
        ref = randomize_(R(16, 4, 24), seed=4).double()
        fast = Fu(16, 4, 24).double()
        fast.load_state_dict(ref.state_dict())
        fast.set_backend(backend)
        xs = [torch.randn(2, 5, 16, dtype=torch.float64, requires_grad=True) for _ in range(3)]
        ys_ref = ref(*xs)
        g_ref = torch.autograd.grad(sum((y * (i + 1)).sum() for i, y in enumerate(ys_ref)),
                                    [*xs, *ref.parameters()])
        ys = fast(*xs)
        g = torch.autograd.grad(sum((y * (i + 1)).sum() for i, y in enumerate(ys)), [*xs, *fast.parameters()])
        # (one flat comparison: some gradients are exactly zero in exact arithmetic, e.g. the key bias's)
        assert len(g) == len(g_ref)
        assert rel_error(torch.cat([a.flatten() for a in g]), torch.cat([b.flatten() for b in g_ref])) <= 1e-10
