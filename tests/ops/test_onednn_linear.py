"""``pyengine::onednn_linear`` (oneDNN inner product with fused epilogue) and ``auto``'s measured CPU GEMM choice.

The op is held to the 2x-eager rule against fp64 (eager = the same-precision ATen composition), its autograd
formula to the fp64 reference's gradients, and ``ln_linear_aten(gemm="onednn")`` to the reference composition for
every grouping. ``dispatch.cpu_gemm_choice`` is tested with its timer replaced (which one wins is the machine's
business; that the faster one is picked, and said, is ours)."""
import importlib
import pytest
import torch

import pyengine
from pyengine import dispatch
from pyengine.backends import BackendUnavailableError
from pyengine.ops.ln_linear import ln_linear_aten, ln_linear_ref
from pyengine.ops.onednn_linear import (onednn_available, onednn_bf16_missing, onednn_bf16_runs, onednn_linear,
                                        onednn_linear_op, onednn_linear_ref)
from pyengine.testing import HostSyncRecorder, assert_close, randomize_, rel_error

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this torch build has no (enabled) oneDNN")
# AVX2-only CPUs (AMD Zen 3, say) have no oneDNN bf16 inner product at all: those cases cannot run there
needs_bf16 = pytest.mark.skipif(onednn_available() and not onednn_bf16_runs(),
                                reason=f"{onednn_bf16_missing() if onednn_available() else ''}")


def _case(M=37, K=24, N=40, seed=0, bias=True, residual=False, strided=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(M, K + 8 if strided else K, generator=g, dtype=torch.float64)
    x = x[:, 4:4 + K] if strided else x  # a column slice of a wider buffer: row stride != K
    w = torch.randn(N, K, generator=g, dtype=torch.float64) * K ** -0.5
    b = torch.randn(N, generator=g, dtype=torch.float64) if bias else None
    r = torch.randn(M, N, generator=g, dtype=torch.float64) if residual else None
    return x, w, b, r


def _to(dtype, *ts):
    return [None if t is None else t.to(dtype) for t in ts]


@pytest.mark.parametrize("dtype", [torch.float32, pytest.param(torch.bfloat16, marks=needs_bf16)])
@pytest.mark.parametrize("activation", ["none", "gelu"])
@pytest.mark.parametrize("bias,residual,strided", [(True, False, False), (True, True, False), (False, True, True),
                                                   (False, False, True)])
def test_matches_fp64_within_twice_eager(dtype, activation, bias, residual, strided):
    x, w, b, r = _case(bias=bias, residual=residual, strided=strided, seed=int(activation == "gelu"))
    want = onednn_linear_ref(x, w, b, activation=activation, residual=r)
    xd, wd, bd, rd = _to(dtype, x, w, b, r)
    got = onednn_linear(xd, wd, bd, activation=activation, residual=rd)
    assert got.dtype == dtype and got.shape == want.shape
    eager = onednn_linear_ref(xd, wd, bd, activation=activation, residual=rd)
    assert_close(f"onednn_linear {dtype} {activation}", got, want, eager)


def test_gradients_match_the_fp64_reference():
    x, w, b, r = _case(M=19, K=16, N=12, seed=3, residual=True)
    for activation in ("none", "gelu"):
        leaves64 = [t.clone().requires_grad_() for t in (x, w, b, r)]
        leaves32 = [t.float().clone().requires_grad_() for t in (x, w, b, r)]
        grad = torch.randn(19, 12, dtype=torch.float64)
        want = torch.autograd.grad(onednn_linear_ref(*leaves64[:3], activation=activation, residual=leaves64[3]),
                                   leaves64, grad)
        got = torch.autograd.grad(onednn_linear_op(*leaves32[:3], activation, leaves32[3]), leaves32, grad.float())
        for name, a, e in zip(("x", "weight", "bias", "residual"), got, want):
            assert rel_error(a, e) < 1e-5, (activation, name, rel_error(a, e))


def test_opcheck_compile_and_export():
    x, w, b, r = _to(torch.float32, *_case(M=8, K=16, N=8, residual=True))
    torch.library.opcheck(onednn_linear_op, (x, w, b, "gelu", r))
    torch.library.opcheck(onednn_linear_op, (x, w, None, "none", None))

    def f(x, w, b, r):
        return onednn_linear_op(x, w, b, "none", r)

    want = f(x, w, b, r)
    assert torch.equal(torch.compile(f, fullgraph=True, backend="eager")(x, w, b, r), want)

    class M(torch.nn.Module):
        def forward(self, x, w, b, r):
            return f(x, w, b, r)

    ep = torch.export.export(M(), (x, w, b, r))
    assert torch.equal(ep.module()(x, w, b, r), want)


def test_bad_arguments_name_the_argument():
    x, w, b, r = _to(torch.float32, *_case(residual=True))
    with pytest.raises(ValueError, match=r"weight: expected shape \[N, 24\]"):
        onednn_linear(x, w[:, :5], b)
    with pytest.raises(ValueError, match=r"residual: expected shape \[37, 40\], got \[37, 39\]"):
        onednn_linear(x, w, b, residual=r[:, :39])
    with pytest.raises(TypeError, match=r"bias: expected dtype torch.float32 \(the dtype of x\), got torch.float64"):
        onednn_linear(x, w, b.double())
    with pytest.raises(ValueError, match="activation: expected one of"):
        onednn_linear(x, w, b, activation="relu")
    with pytest.raises(BackendUnavailableError, match="takes float32 or bfloat16.*got torch.float16"):
        onednn_linear(x.half(), w.half(), b.half())
    with pytest.raises(BackendUnavailableError, match="backend='triton' is not available"):
        onednn_linear(x, w, b, backend="triton")


@pytest.mark.parametrize("G,K_x,in_cols,ln,act,res", [
    (1, 24, None, True, "gelu", False), (1, 24, None, False, "none", True),
    (2, 24, [0, 0], False, "none", False), (3, 72, None, True, "none", True), (2, 48, [24, 0], True, "gelu", True)])
def test_ln_linear_with_onednn_gemm_equals_the_reference(G, K_x, in_cols, ln, act, res):
    g = torch.Generator().manual_seed(G)
    x = torch.randn(37, K_x, generator=g)
    w, b = torch.randn(G, 16, 24, generator=g) * 0.2, torch.randn(G, 16, generator=g)
    kw = dict(in_cols=in_cols, activation=act, residual=torch.randn(37, G * 16, generator=g) if res else None)
    if ln:
        kw.update(ln_weight=torch.randn(G, 24, generator=g), ln_bias=torch.randn(G, 24, generator=g))
    want = ln_linear_ref(x.double(), w.double(), b.double(),
                         **{k: v.double() if isinstance(v, torch.Tensor) else v for k, v in kw.items()})
    got = ln_linear_aten(x, w, b, gemm="onednn", **kw)
    assert_close("ln_linear onednn", got, want, ln_linear_ref(x, w, b, **kw))
    with pytest.raises(ValueError, match="gemm: expected 'aten' or 'onednn', got 'mkl'"):
        ln_linear_aten(x, w, b, gemm="mkl", **kw)


@pytest.fixture
def fresh_choice(monkeypatch):
    monkeypatch.setattr(dispatch, "_CPU_GEMM", {})
    monkeypatch.delenv("PYENGINE_CPU_GEMM", raising=False)
    return monkeypatch


@pytest.mark.parametrize("dtype,t_aten,t_dnn,want", [
    (torch.float32, 2.0, 1.0, "onednn"), (torch.float32, 1.0, 2.0, "aten"),
    (torch.float32, 1.0, 0.97, "aten"),  # a tie keeps ATen
    (torch.bfloat16, 1.0, 0.5, "onednn"), (torch.bfloat16, 1.0, 0.97, "aten")])
def test_auto_picks_the_measured_faster_gemm_once(fresh_choice, dtype, t_aten, t_dnn, want):
    calls = []

    def fake_time(fn, reps=5):
        calls.append(fn)
        return t_aten if len(calls) % 2 else t_dnn  # aten is timed first in each interleaved round

    fresh_choice.setattr(dispatch, "_time_gemm", fake_time)
    fresh_choice.setattr(dispatch, "onednn_bf16_runs", lambda: True)  # the choice's logic, whatever this CPU runs
    choice = dispatch.cpu_gemm_choice(dtype)
    assert choice.impl == want and "measured once" in choice.why and "GFLOP/s" in choice.why
    assert dispatch.cpu_gemm_choice(dtype) is choice and len(calls) == 4  # cached: not measured again
    assert dispatch.resolve("auto", "cpu", dtype)["ln_linear"] is choice
    assert dispatch.resolve("cpp", "cpu", dtype)["ln_linear"].impl == "aten"  # explicit backends: the table


def test_auto_gemm_pinned_unsupported_and_bad_setting(fresh_choice):
    fresh_choice.setattr(dispatch, "_time_gemm", lambda fn, reps=5: pytest.fail("a pinned choice is not measured"))
    fresh_choice.setenv("PYENGINE_CPU_GEMM", "onednn")
    c = dispatch.cpu_gemm_choice(torch.float32)
    assert c.impl == "onednn" and "pinned by PYENGINE_CPU_GEMM=onednn" in c.why
    assert dispatch.cpu_gemm_choice(torch.float16).impl == "aten"
    assert "takes float32 / bfloat16, not torch.float16" in dispatch.cpu_gemm_choice(torch.float16).why
    fresh_choice.setattr(dispatch, "_CPU_GEMM", {})
    fresh_choice.setenv("PYENGINE_CPU_GEMM", "mkl")
    with pytest.raises(ValueError, match="PYENGINE_CPU_GEMM: expected 'aten' or 'onednn'.*got 'mkl'"):
        dispatch.cpu_gemm_choice(torch.float32)


@pytest.mark.parametrize("arch,cfg", [("mhformer", dict(frames=27, channel=32, d_hid=48, layers=3)),
                                      ("mixste", dict(frames=9, channel=32, depth=2, heads=4))])
def test_a_model_on_the_onednn_gemm_is_exact_reported_and_sync_free(fresh_choice, arch, cfg):
    fresh_choice.setenv("PYENGINE_CPU_GEMM", "onednn")
    ref = randomize_(pyengine.arch.MODELS[arch](**cfg), seed=1).eval()
    model = pyengine.load(ref, backend="auto")
    x = torch.randn(2, cfg["frames"], 17, 2) * 0.3
    with torch.no_grad():
        want = ref.double()(x.double())
        ref.float()
        eager = ref(x)
        model(x)
        with HostSyncRecorder() as rec:
            got = model(x)
    assert not rec.calls, rec.calls
    assert_close(f"{arch} auto (onednn GEMM)", got, want, eager)
    text = str(model.report())
    assert "ln_linear=onednn" in text and "pinned by PYENGINE_CPU_GEMM=onednn" in text


def test_bf16_without_native_support_is_said(fresh_choice):
    """CPUs without AVX-512 BF16 / AMX (CI may be one) still run bf16, emulated: the choice's reason says so."""
    fresh_choice.setattr(dispatch, "onednn_bf16_native", lambda: False)
    fresh_choice.setattr(dispatch, "onednn_bf16_runs", lambda: True)
    fresh_choice.setattr(dispatch, "_time_gemm", lambda fn, reps=5: 1.0)
    assert "bf16 GEMMs are emulated" in dispatch.cpu_gemm_choice(torch.bfloat16).why
    assert "emulated" not in dispatch.cpu_gemm_choice(torch.float32).why


def test_bf16_where_onednn_cannot_run_it_is_refused_or_left_to_aten(fresh_choice):
    """AVX2-only CPUs: the op raises naming why, auto runs ATen's GEMM and says why, a pin to oneDNN raises."""
    mod = importlib.import_module("pyengine.ops.onednn_linear")
    fresh_choice.setattr(mod, "_BF16_PROBE", [(False, "this CPU's oneDNN has no bf16 inner product (probe)")])
    fresh_choice.setattr(dispatch, "onednn_bf16_runs", mod.onednn_bf16_runs)
    fresh_choice.setattr(dispatch, "onednn_bf16_missing", mod.onednn_bf16_missing)
    fresh_choice.setattr(dispatch, "_time_gemm", lambda fn, reps=5: pytest.fail("nothing to measure"))
    x, w, b = _to(torch.bfloat16, *_case()[:3])
    with pytest.raises(BackendUnavailableError, match="cannot run bfloat16 here: this CPU's oneDNN has no bf16"):
        onednn_linear(x, w, b, backend="onednn")
    c = dispatch.cpu_gemm_choice(torch.bfloat16)
    assert c.impl == "aten" and "no bf16 inner product (probe)" in c.why
    fresh_choice.setattr(dispatch, "_CPU_GEMM", {})
    fresh_choice.setenv("PYENGINE_CPU_GEMM", "onednn")
    with pytest.raises(BackendUnavailableError, match="PYENGINE_CPU_GEMM=onednn: oneDNN cannot run bfloat16"):
        dispatch.cpu_gemm_choice(torch.bfloat16)
    assert dispatch.cpu_gemm_choice(torch.float32).impl == "onednn"  # fp32 is unaffected


def test_the_bf16_probe_agrees_with_a_real_bf16_gemm():
    x, w, b = _to(torch.bfloat16, *_case()[:3])
    if onednn_bf16_runs():
        assert onednn_linear(x, w, b, backend="onednn").dtype == torch.bfloat16
    else:
        with pytest.raises(RuntimeError):
            torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


@needs_bf16
def test_prepacked_bf16_weights_are_exact_and_follow_weight_updates():
    from pyengine.ops.onednn_linear import PackedWeights, onednn_linear_prepacked
    x, w, b, r = _to(torch.bfloat16, *_case(M=33, K=24, N=40, residual=True))
    packs = PackedWeights()
    with torch.no_grad():
        for M, act, res in ((33, "gelu", None), (5, "none", r[:5]), (1, "gelu", r[:1])):  # any batch, one pack
            got = onednn_linear_prepacked(x[:M], w, b, act, res, packs)
            assert torch.equal(got, onednn_linear_op(x[:M], w, b, act, res)), (M, act)
        assert len(packs) == 1
        w.mul_(2)  # an in-place update: the pack is rebuilt, not replayed stale
        assert torch.equal(onednn_linear_prepacked(x, w, b, "none", None, packs),
                           onednn_linear_op(x, w, b, "none", None))
        assert len(packs) == 1
        assert not PackedWeights.usable(x.float(), w.float())  # fp32 gains nothing from packing: not packed
    assert not PackedWeights.usable(x, w)  # autograd on: the registered op (with its backward) runs
    with torch.inference_mode():
        wi = w.clone()
    assert not PackedWeights.usable(x, wi)  # an inference tensor has no version counter to key the pack on
    packs.MAX_ENTRIES = 2
    with torch.no_grad():
        for n in (8, 16, 24):
            onednn_linear_prepacked(x, w[:n], b[:n], "none", None, packs)
    assert len(packs) <= 2  # bounded: stale entries of rebuilt weights cannot pile up


@needs_bf16
@pytest.mark.parametrize("packed_faster", [True, False])
def test_a_weight_runs_packed_only_where_packing_measured_faster(monkeypatch, packed_faster):
    mod = importlib.import_module("pyengine.ops.onednn_linear")  # the module (pyengine.ops re-exports the function)
    calls = []

    def fake_timer(fn):  # the timer sees dense then packed, three rounds: answer which is faster
        fn()
        calls.append(len(calls) % 2)
        return (2.0 if packed_faster else 1.0) if calls[-1] == 0 else (1.0 if packed_faster else 2.0)

    monkeypatch.setattr(mod, "_time_once", fake_timer)
    x, w, b = _to(torch.bfloat16, *_case(M=33, K=24, N=40, residual=False)[:3])
    packs = mod.PackedWeights()
    with torch.no_grad():
        got = mod.onednn_linear_prepacked(x, w, b, "gelu", None, packs)
        assert torch.equal(got, onednn_linear_op(x, w, b, "gelu", None))
        assert len(calls) == 6 and packs.packed_count() == (1 if packed_faster else 0)
        assert (packs.get(w, x, b) is w) is not packed_faster
        mod.onednn_linear_prepacked(x, w, b, "none", None, packs)
    assert len(calls) == 6  # measured once per weight version


@needs_bf16
def test_a_bf16_model_on_prepacked_weights_matches_its_unpacked_self(fresh_choice):
    fresh_choice.setenv("PYENGINE_CPU_GEMM", "onednn")
    cfg = dict(frames=27, channel=32, d_hid=48, layers=3)
    ref = randomize_(pyengine.arch.MODELS["mhformer"](**cfg), seed=2).eval()
    model = pyengine.load(ref, backend="auto", dtype=torch.bfloat16)
    x = torch.randn(2, 27, 17, 2) * 0.3
    with torch.no_grad():
        packed = model(x)
    with torch.enable_grad():
        unpacked = model(x)  # grad mode: the registered op on the dense weights
    assert torch.equal(packed, unpacked.detach())
    other = randomize_(pyengine.arch.MODELS["mhformer"](**cfg), seed=3).eval()
    model.load_state_dict(other.state_dict())  # new weights: every pack is rebuilt
    with torch.no_grad():
        assert torch.equal(model(x), pyengine.load(other, backend="auto", dtype=torch.bfloat16)(x))


@pytest.mark.parametrize("gemm", ["onednn", "aten"])
@pytest.mark.parametrize("arch,cfg,dtype", [
    ("mhformer", dict(frames=27, channel=32, d_hid=48, layers=3), torch.bfloat16),  # MHG in fp32, bf16 GEMMs
    ("mhformer", dict(frames=27, channel=32, d_hid=48, layers=3), torch.float32),
    ("mixste", dict(frames=9, channel=32, depth=2, heads=4), torch.bfloat16)])
def test_the_resolved_block_path_gives_the_generic_paths_bits(fresh_choice, arch, cfg, dtype, gemm):
    """block_forward's CPU inference path (GEMM operands resolved once per block) runs the same kernels on the
    same operands as the generic ln_linear_aten path: the same bits, before and after the weights change."""
    if dtype == torch.bfloat16 and not onednn_bf16_runs():
        pytest.skip("this CPU's oneDNN runs no bf16 inner product")
    fresh_choice.setenv("PYENGINE_CPU_GEMM", gemm)
    fresh_choice.setenv("PYENGINE_CPU_ATTENTION", "sdpa")  # one attention kernel for both runs
    ref = randomize_(pyengine.arch.MODELS[arch](**cfg), seed=4).eval()
    model = pyengine.load(ref, backend="auto", dtype=dtype)
    x = torch.randn(2, cfg["frames"], 17, 2) * 0.3
    all_ops = lambda: [o for mod in model.modules() for o in mod.__dict__.get("_ops_cache", {}).values()]  # noqa
    with torch.no_grad():
        fast = model(x)
        plans = sum(len(o.block_plans) for o in all_ops())
        # the resolved path ran; on ATen not for the mixed-precision MHG (its blocks are MHFormer's only ones)
        assert (plans > 0) == (gemm == "onednn" or not (arch == "mhformer" and dtype == torch.bfloat16))
        flags = {id(o): o.resolved_blocks for o in all_ops()}
        for o in all_ops():
            o.resolved_blocks = False
        assert torch.equal(model(x), fast)
        for o in all_ops():
            o.resolved_blocks = flags[id(o)]
        other = randomize_(pyengine.arch.MODELS[arch](**cfg), seed=5).eval()
        model.load_state_dict(pyengine.load(other, backend="reference", dtype=dtype).state_dict())
        changed = model(x)  # in-place weight updates: every plan is rebuilt
        assert not torch.equal(changed, fast)
        for o in all_ops():
            o.resolved_blocks = False
        assert torch.equal(model(x), changed)
