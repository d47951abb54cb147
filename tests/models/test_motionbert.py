"""MotionBERT (DSTformer) and HoT-MotionBERT against SPEC.md §7: parameter counts and published key names, a
second, independent functional reading of §7 (written from the SPEC text, no pyengine module used), the stream
order and eps quirks, input validation; the fused drop-ins on "cpp" and "triton" (interpreter) with the 2x-eager
rule; the MMPose / HoT checkpoint pieces (renaming, shape inference, telling the two apart)."""
import pytest
import torch
import torch.nn.functional as F

from pyengine.models import HoTMotionBERT, MotionBERT
from pyengine.testing import randomize_, rel_error

# ---------------------------------------------------------------------------------------------------------------
# SPEC.md §7, read again as plain functions over a published-format state_dict (fp64).
# ---------------------------------------------------------------------------------------------------------------


def _ln(sd, p, x, eps):
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps)


def _lin(sd, p, x):
    return x @ sd[p + ".weight"].T + sd[p + ".bias"]


def _mha(q, k, v, heads):
    """``softmax((q k^T) * d^-0.5) v`` per head over ``[S, N, C]`` (heads concatenated in order)."""
    S, N, C = q.shape
    d = C // heads
    q, k, v = (t.reshape(S, t.shape[1], heads, d).transpose(1, 2) for t in (q, k, v))
    w = torch.softmax((q @ k.transpose(-1, -2)) * d ** -0.5, dim=-1)
    return (w @ v).transpose(1, 2).reshape(S, N, C)


def _sublayer(sd, p, kind, h, heads, eps):
    """``h [B, F, J, C]``: ``h + attn_kind(norm1_kind(h))`` then ``h + mlp_kind(norm2_kind(h))``."""
    B, Fr, J, C = h.shape
    a = _ln(sd, f"{p}.norm1_{kind}", h, eps)
    if kind == "t":  # sequences: each (sample, joint) over the frames
        a = a.permute(0, 2, 1, 3)
    seq = a.reshape(-1, a.shape[2], C)
    q, k, v = _lin(sd, f"{p}.attn_{kind}.qkv", seq).split(C, dim=-1)  # qkv laid out (3, h, d)
    o = _lin(sd, f"{p}.attn_{kind}.proj", _mha(q, k, v, heads)).reshape(a.shape)
    h = h + (o.permute(0, 2, 1, 3) if kind == "t" else o)
    m = _ln(sd, f"{p}.norm2_{kind}", h, eps)
    return h + _lin(sd, f"{p}.mlp_{kind}.fc2", F.gelu(_lin(sd, f"{p}.mlp_{kind}.fc1", m)))


def f_motionbert(sd, x, heads, index=None, layer_index=None, eps=1e-6, orders=("st", "ts")):
    """DSTformer (``index is None``) or HoT-MotionBERT (TPC at ``layer_index`` with the given ``index``)."""
    sd = {k: v.double() for k, v in sd.items()}
    x = x.double()
    B, Fr, J, _ = x.shape
    hot = index is not None
    h = _lin(sd, "joints_embed", x) + sd["pos_embed"][0]          # [B, F, J, C]
    temp = sd["temp_embed"][0]                                    # [maxlen, 1, C]
    h = h + (temp if hot else temp[:Fr])                          # HoT: unsliced
    i = 0
    while f"blocks_st.{i}.norm1_s.weight" in sd:
        if hot and i == layer_index:
            h = torch.stack([h[b, index[b]] for b in range(B)]) + sd["pos_embed_token"][0][None, :, None, :]
        streams = []
        for name, order in zip(("blocks_st", "blocks_ts"), orders):
            s = h
            for kind in order:  # "st": spatial then temporal
                s = _sublayer(sd, f"{name}.{i}", kind, s, heads, eps)
            streams.append(s)
        alpha = torch.softmax(_lin(sd, f"ts_attn.{i}", torch.cat(streams, -1)), dim=-1)
        h = alpha[..., 0:1] * streams[0] + alpha[..., 1:2] * streams[1]
        i += 1
    h = _ln(sd, "norm", h, eps)
    if hot:  # TRA per joint stream: x_token + CA(x_token, h, h)
        C = h.shape[-1]
        kv = h.permute(0, 2, 1, 3).reshape(B * J, h.shape[1], C)
        q = sd["x_token"].expand(B * J, -1, -1)
        a = "cross_attention"
        o = _mha(_lin(sd, a + ".linear_q", q), _lin(sd, a + ".linear_k", kv), _lin(sd, a + ".linear_v", kv), heads)
        h = (q + _lin(sd, a + ".proj", o)).reshape(B, J, -1, C).permute(0, 2, 1, 3)
    return _lin(sd, "head", torch.tanh(_lin(sd, "pre_logits.fc", h)))


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def poses(B, Fr, seed=0, J=17):
    g = torch.Generator().manual_seed(seed)
    xy = torch.randn(B, Fr, J, 2, generator=g) * 0.5
    conf = torch.rand(B, Fr, J, 1, generator=g)
    return torch.cat([xy, conf], dim=-1)


TINY = dict(dim_feat=16, dim_rep=12, depth=2, num_heads=2, mlp_ratio=2, maxlen=9)
TINY_HOT = dict(dim_feat=16, dim_rep=12, depth=3, num_heads=2, mlp_ratio=2, maxlen=9, token_num=4)

# ---------------------------------------------------------------------------------------------------------------
# Eager references
# ---------------------------------------------------------------------------------------------------------------


def test_parameter_counts_equal_spec():
    assert n_params(MotionBERT(dim_feat=512, mlp_ratio=2)) == 42_466_317
    assert n_params(MotionBERT(dim_feat=256, mlp_ratio=4)) == 16_001_549
    assert n_params(MotionBERT()) == 16_001_549, "the published class defaults are the Lite geometry"
    assert n_params(HoTMotionBERT()) == 16_347_661


def test_published_key_names():
    full = MotionBERT(dim_feat=32, dim_rep=16, num_heads=4, maxlen=9)
    sd = full.state_dict()
    assert len(sd) == 260 and not list(full.buffers())
    stems = {"norm1_s", "norm1_t", "norm2_s", "norm2_t", "attn_s.qkv", "attn_s.proj", "attn_t.qkv", "attn_t.proj",
             "mlp_s.fc1", "mlp_s.fc2", "mlp_t.fc1", "mlp_t.fc2"}
    want = {"temp_embed", "pos_embed"}
    for p in ("joints_embed", "norm", "pre_logits.fc", "head", *(f"ts_attn.{i}" for i in range(5)),
              *(f"blocks_{s}.{i}.{stem}" for s in ("st", "ts") for i in range(5) for stem in stems)):
        want |= {p + ".weight", p + ".bias"}
    assert set(sd) == want
    assert sd["temp_embed"].shape == (1, 9, 1, 32) and sd["pos_embed"].shape == (1, 17, 32)
    assert sd["ts_attn.0.weight"].shape == (2, 64) and sd["pre_logits.fc.weight"].shape == (16, 32)
    hot = HoTMotionBERT(dim_feat=32, dim_rep=16, num_heads=4, maxlen=9, token_num=3).state_dict()
    extra = {"pos_embed_token", "x_token", *(f"cross_attention.{n}.{w}" for n in ("linear_q", "linear_k", "linear_v",
                                                                                "proj") for w in ("weight", "bias"))}
    assert len(hot) == 270 and set(hot) == want | extra
    assert hot["pos_embed_token"].shape == (1, 3, 32) and hot["x_token"].shape == (1, 9, 32)


@pytest.mark.parametrize("frames", [9, 5, 1])  # F == maxlen, and F < maxlen (temp_embed sliced)
def test_motionbert_matches_functional_spec(frames):
    model = randomize_(MotionBERT(**TINY), seed=frames).eval()
    x = poses(2, frames, seed=frames)
    want = f_motionbert(model.state_dict(), x, heads=2)
    assert rel_error(model.double()(x.double()), want) < 1e-12
    assert rel_error(model.float()(x), want) < 1e-5


@pytest.mark.parametrize("layer_index", [0, 1, 2])
def test_hot_motionbert_matches_functional_spec(layer_index):
    model = randomize_(HoTMotionBERT(**TINY_HOT, layer_index=layer_index), seed=10 + layer_index).eval().double()
    x = poses(2, 9, seed=layer_index).double()
    out, index = model(x, return_index=True)
    assert out.shape == (2, 9, 17, 3), "TRA recovers every frame"
    assert index.shape == (2, 4) and (index[:, 1:] > index[:, :-1]).all(), "kept frames sorted ascending"
    assert torch.equal(model(x), out), "the published call returns the output only"
    want = f_motionbert(model.state_dict(), x, heads=2, index=index, layer_index=layer_index)
    assert rel_error(out, want) < 1e-12
    # a given index is used as is and returned; it reproduces the functional reading with that selection
    fixed = torch.tensor([[0, 3, 5, 8], [1, 2, 4, 6]])
    out2, index2 = model(x, index=fixed, return_index=True)
    assert index2 is fixed
    assert rel_error(out2, f_motionbert(model.state_dict(), x, heads=2, index=fixed, layer_index=layer_index)) < 1e-12


def test_hot_selection_runs_on_the_joint_mean_at_layer_index():
    from pyengine.models import motionbert as mod

    model = randomize_(HoTMotionBERT(**TINY_HOT, layer_index=1), seed=3).eval().double()
    x = poses(2, 9).double()
    captured = {}
    real = mod.dpc_knn_select

    def spy(feat, keep, **kw):
        captured.update(feat=feat, keep=keep, **kw)
        return real(feat, keep, **kw)

    # the features layer 1 sees: embedding, then layer 0 (computed here with the model's own pieces)
    h = model.dual_stream(model.embed(x), 0, 9).reshape(2, 9, 17, 16)
    mod.dpc_knn_select = spy
    try:
        model(x)
    finally:
        mod.dpc_knn_select = real
    assert captured["keep"] == 4 and captured.get("center") is None
    assert rel_error(captured["feat"], h.mean(dim=2)) < 1e-14
    assert captured["tie_break"] == "index"


def test_stream_order_matters():
    """The ST stream runs spatial before temporal, the TS stream the reverse; both orders are visible."""
    model = randomize_(MotionBERT(**TINY), seed=4).eval().double()
    x = poses(2, 9).double()
    sd = model.state_dict()
    out = model(x)
    for swapped in (("ts", "st"), ("st", "st"), ("ts", "ts")):
        other = f_motionbert(sd, x, heads=2, orders=swapped)
        assert rel_error(other, out) > 1e-3, swapped
    assert [b.st_mode for b in model.blocks_st] == ["stage_st"] * 2
    assert [b.st_mode for b in model.blocks_ts] == ["stage_ts"] * 2
    # logit 0 weights the ST stream: swapping the two logits changes the output
    with torch.no_grad():
        for lin in model.ts_attn:
            lin.weight.copy_(lin.weight.flip(0))
            lin.bias.copy_(lin.bias.flip(0))
    assert rel_error(model(x), out) > 1e-3


def test_every_layernorm_has_eps_1e6():
    for model in (MotionBERT(**TINY), HoTMotionBERT(**TINY_HOT)):
        norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
        assert len(norms) == 4 * 2 * model.depth + 1
        assert all(m.eps == 1e-6 for m in norms)
    # and the functional check above can see the difference: eps 1e-5 gives another output
    model = randomize_(MotionBERT(**TINY), seed=5).eval().double()
    x = poses(1, 9).double()
    assert rel_error(f_motionbert(model.state_dict(), x, heads=2, eps=1e-5), model(x)) > 1e-9


def test_return_rep_is_the_tanh_representation():
    model = randomize_(MotionBERT(**TINY), seed=6).eval().double()
    x = poses(2, 7).double()
    rep = model(x, return_rep=True)
    assert rep.shape == (2, 7, 17, 12) and rep.abs().max() < 1
    assert rel_error(model.head(rep), model(x)) < 1e-14


def test_bad_inputs_raise_clear_errors():
    model = MotionBERT(**TINY).eval()
    hot = HoTMotionBERT(**TINY_HOT).eval()
    for m in (model, hot):
        with pytest.raises(ValueError, match=r"x: expected shape \[B, F, J=17, 3\] \(x, y and the 2D detector's "
                                             r"confidence\), got \[2, 9, 17, 2\]; .*third channel"):
            m(torch.zeros(2, 9, 17, 2))
        with pytest.raises(ValueError, match=r"J=17.*got \[2, 9, 16, 3\]"):
            m(torch.zeros(2, 9, 16, 3))
        with pytest.raises(ValueError, match=r"got \[9, 17, 3\]"):
            m(torch.zeros(9, 17, 3))
        with pytest.raises(TypeError, match="floating-point"):
            m(torch.zeros(2, 9, 17, 3, dtype=torch.int64))
        with pytest.raises(TypeError, match="torch.Tensor"):
            m([[0.0]])
        with pytest.raises(ValueError, match="batch is empty"):
            m(torch.zeros(0, 9, 17, 3))
    with pytest.raises(ValueError, match=r"1 <= F <= maxlen=9 frames .*sliced to F.*got shape \[1, 10, 17, 3\]"):
        model(torch.zeros(1, 10, 17, 3))
    # HoT adds temp_embed unsliced: F < maxlen is an error (F < maxlen works for MotionBERT, tested above)
    with pytest.raises(ValueError, match=r"F == maxlen=9 frames .*unsliced.*got shape \[1, 5, 17, 3\]"):
        hot(torch.zeros(1, 5, 17, 3))
    x = poses(2, 9)
    with pytest.raises(ValueError, match=r"index: expected shape \[B=2, token_num=4\], got \[2, 3\]"):
        hot(x, index=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="int64"):
        hot(x, index=torch.zeros(2, 4))


@pytest.mark.parametrize("ctor,match", [
    (lambda: MotionBERT(dim_feat=30, num_heads=8), r"dim_feat=30, num_heads=8.*not divisible"),
    (lambda: MotionBERT(depth=0), r"depth: expected a positive integer, got 0"),
    (lambda: MotionBERT(maxlen=0), r"maxlen: expected a positive integer, got 0"),
    (lambda: MotionBERT(dim_feat=16, num_heads=2, mlp_ratio=0.01), r"mlp_ratio: expected int\(dim_feat"),
    (lambda: HoTMotionBERT(maxlen=27), r"token_num: expected 1 <= token_num <= maxlen=27, got 81"),
    (lambda: HoTMotionBERT(layer_index=5), r"layer_index: expected a block index in \[0, 4\].*got 5"),
    (lambda: HoTMotionBERT(tie_break="random"), r"tie_break"),
    (lambda: HoTMotionBERT(token_num=None), r"token_num: HoT-MotionBERT needs"),
])
def test_bad_hyperparameters(ctor, match):
    with pytest.raises(ValueError, match=match):
        ctor()


# SPEC.md §7: "GFLOP matmul at 243 frames, B = 1" = 2 x MACs of every linear layer and attention product.
@pytest.mark.parametrize("arch,config,gflops", [("motionbert", dict(dim_feat=512, mlp_ratio=2), 370.81),
                                                ("motionbert", dict(dim_feat=256, mlp_ratio=4), 142.09),
                                                ("hot_motionbert", {}, 66.86)])
def test_flops_match_spec(arch, config, gflops):
    from pyengine import bench

    assert bench.model_flops(arch, config)["total"] / 1e9 == pytest.approx(gflops, abs=0.006)


# ---------------------------------------------------------------------------------------------------------------
# Fused drop-ins (pyengine.nn.motionbert) against the references: 2x-eager rule vs fp64, same TPC selection, no
# host sync in the steady-state forward. The Triton interpreter is slow: one sample, one or two layers.
# ---------------------------------------------------------------------------------------------------------------
REF = {"motionbert": MotionBERT, "hot_motionbert": HoTMotionBERT}
FUSED_CFG = {
    "cpp": {"motionbert": dict(TINY), "hot_motionbert": dict(TINY_HOT, layer_index=1)},
    "triton": {"motionbert": dict(TINY, depth=1),
               "hot_motionbert": dict(TINY_HOT, depth=1, maxlen=6, token_num=4, layer_index=0)},  # cpp: layer 1 of 3
}


def _call(model, arch, x, index=None):
    if arch == "motionbert":
        return model(x), None
    return model(x, index=index, return_index=True)


def _fused_pair(arch, backend, seed=1):
    from pyengine.nn import motionbert as fused

    cfg = FUSED_CFG[backend][arch]
    ref = randomize_(REF[arch](**cfg), seed=seed).eval()
    fast = {"motionbert": fused.MotionBERT, "hot_motionbert": fused.HoTMotionBERT}[arch](**cfg, backend=backend)
    fast = fast.eval()
    fast.load_state_dict(ref.state_dict())
    return cfg, ref, fast


@pytest.mark.parametrize("arch", ["motionbert", "hot_motionbert"])
@pytest.mark.parametrize("backend", ["cpp", "triton"])
def test_fused_matches_reference_without_host_sync(arch, backend):
    from pyengine.testing import HostSyncRecorder

    cfg, ref, fast = _fused_pair(arch, backend)
    assert list(fast.state_dict()) == list(ref.state_dict())
    frames = cfg["maxlen"] - 2 if arch == "motionbert" else cfg["maxlen"]  # MotionBERT: F < maxlen (sliced)
    x = poses(3 if backend == "cpp" else 1, frames, seed=2)
    with torch.no_grad():
        want, index = _call(ref.double(), arch, x.double())
        base, _ = _call(ref.float(), arch, x, index)
        _call(fast, arch, x)  # the first call builds the stacked-weight caches
        with HostSyncRecorder() as rec:
            got, got_index = _call(fast, arch, x)
        assert not rec.calls, "host syncs in the forward:\n" + "\n".join(rec.calls)
        if index is not None:
            assert torch.equal(got_index, index), "the fused TPC keeps the reference's frames"
            with HostSyncRecorder() as rec:  # a given selection (lift's flip pass) must not sync either
                again, same = _call(fast, arch, x, got_index)
            assert not rec.calls, "host syncs with index=:\n" + "\n".join(rec.calls)
            assert same is got_index and torch.equal(again, got)
    assert got.shape == want.shape == (x.shape[0], frames, 17, 3) and got.dtype == torch.float32
    tol = max(1e-5, 2 * rel_error(base, want))
    assert rel_error(got, want) <= tol, (rel_error(got, want), tol)


@pytest.mark.parametrize("arch", ["motionbert", "hot_motionbert"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_half_precision_on_cpp(arch, dtype):
    cfg, ref, fast = _fused_pair(arch, "cpp", seed=3)
    x = poses(2, cfg["maxlen"], seed=4)
    with torch.no_grad():
        want, index = _call(ref.double(), arch, x.double())
        base, _ = _call(ref.to(dtype), arch, x, index)  # the same frames on both sides (fixed selection)
        got, _ = _call(fast.to(dtype), arch, x, index)
    assert got.dtype == torch.float32, "outputs follow the input dtype"
    assert rel_error(got, want) <= 2 * rel_error(base, want), (rel_error(got, want), rel_error(base, want))


def test_fused_half_precision_through_triton():
    cfg, ref, fast = _fused_pair("motionbert", "triton", seed=5)
    x = poses(1, cfg["maxlen"], seed=6)
    with torch.no_grad():
        want = ref.double()(x.double())
        base = ref.half()(x)
        got = fast.half()(x)
    assert rel_error(got, want) <= 2 * rel_error(base, want), (rel_error(got, want), rel_error(base, want))


def test_fused_return_rep():
    cfg, ref, fast = _fused_pair("motionbert", "cpp", seed=7)
    x = poses(2, 5)
    with torch.no_grad():
        want, got = ref.double()(x.double(), return_rep=True), fast(x, return_rep=True)
    assert got.shape == (2, 5, 17, 12) and rel_error(got, want) < 1e-5


@pytest.mark.parametrize("arch", ["motionbert", "hot_motionbert"])
def test_fused_launch_plan(arch, monkeypatch):
    """Per layer: ONE grouped LN + QKV launch for both streams (G=2 on the same columns), 16 more GEMMs
    (7 per stream, 2 for the fusion logits), 4 attentions; the final norm is a GEMM prologue."""
    cfg, ref, fast = _fused_pair(arch, "cpp", seed=8)
    x = poses(1, cfg["maxlen"])
    ops = fast.ops_for(x)
    calls = {"ln_linear": [], "attention": [], "layernorm": []}
    for name in calls:
        real = getattr(ops, name)

        def spy(*args, _real=real, _name=name, **kw):
            calls[_name].append((args, kw))
            return _real(*args, **kw)
        monkeypatch.setattr(ops, name, spy)
    with torch.no_grad():
        fast(x)
    d = cfg["depth"]
    grouped = [kw for args, kw in calls["ln_linear"] if args[1].shape[0] == 2 and kw.get("ln_weight") is not None]
    extra = 0 if arch == "motionbert" else 3  # TRA: q (once), grouped k/v with the final norm as prologue, proj
    assert len(calls["ln_linear"]) == 1 + 17 * d + 2 + extra  # embed, layers, pre_logits + head
    assert len(grouped) == d + (arch != "motionbert")
    assert all(kw["in_cols"] == [0, 0] for kw in grouped)
    assert len(calls["attention"]) == 4 * d + (arch != "motionbert")
    assert not calls["layernorm"], "every LayerNorm is a GEMM prologue"


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint pieces (pyengine.motionbert_ckpt): MMPose names, telling the architectures apart, shape inference.
# ---------------------------------------------------------------------------------------------------------------
def test_mmpose_names_round_trip_and_load_identically():
    from pyengine import motionbert_ckpt as mc

    model = randomize_(MotionBERT(**TINY), seed=9).eval()
    sd = model.state_dict()
    mm = mc.to_mmpose(sd)
    # SPEC.md §7's mapping, spelled out
    assert {"backbone.spat_embed", "backbone.temp_embed", "backbone.joints_embed.weight", "backbone.norm.bias",
            "backbone.attn_regress.1.weight", "backbone.blocks_st.0.mlp_s.0.weight",
            "backbone.blocks_ts.1.mlp_t.2.bias", "backbone.blocks_ts.0.attn_t.qkv.weight", "backbone.blocks_st.1.norm2_t.weight",
            "head.pre_logits.fc.weight", "head.fc.weight", "head.fc.bias"} <= set(mm)
    assert len(mm) == len(sd) and not any("fc1" in k or "fc2" in k or "ts_attn" in k for k in mm)
    assert mc.is_mmpose(mm) and not mc.is_mmpose(sd)
    back, note = mc.from_mmpose(mm)
    assert "MMPose" in note and set(back) == set(sd) and all(back[k] is sd[k] for k in sd)
    arch, _ = mc.detect(back)
    config = {k: v for k, (v, _) in mc.infer(back, arch).items()}
    loaded = MotionBERT(**config, num_heads=2).eval()
    loaded.load_state_dict(back, strict=True)
    x = poses(2, 9)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("key,match", [
    ("data_preprocessor.mean", r"unexpected key 'data_preprocessor.mean' \(expected 'backbone.\*'"),
    ("head.final_layer.weight", r"unexpected head key 'head.final_layer.weight'"),
    ("backbone.pos_embed", r"'backbone.pos_embed' mixes the published DSTformer name 'pos_embed'"),
    ("backbone.blocks_st.0.mlp_s.fc1.weight", r"mixes the published DSTformer name"),
    ("backbone.head.weight", r"keys 'head.fc.weight' and 'backbone.head.weight' both map to 'head.weight'"),
])
def test_mmpose_renaming_refuses_what_it_cannot_place(key, match):
    from pyengine import motionbert_ckpt as mc
    from pyengine.checkpoint import CheckpointError

    mm = mc.to_mmpose(MotionBERT(**TINY).state_dict())
    mm[key] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=match):
        mc.from_mmpose(mm)


def test_detect_tells_the_architectures_apart():
    from pyengine import motionbert_ckpt as mc
    from pyengine.models import MixSTE

    assert mc.detect(MotionBERT(**TINY).state_dict())[0] == "motionbert"
    hot = HoTMotionBERT(**TINY_HOT).state_dict()
    assert mc.detect(hot)[0] == "hot_motionbert"
    partial = {k: v for k, v in hot.items() if k != "x_token"}  # one HoT key is enough; strictness names the rest
    assert mc.detect(partial)[0] == "hot_motionbert"
    assert mc.detect(MixSTE(frames=9, channel=16, depth=1).state_dict()) is None
    assert mc.detect(mc.to_mmpose(MotionBERT(**TINY).state_dict())) is None, "MMPose names: rename first"
    plain = MotionBERT(**TINY).state_dict()  # the ArchSpec signatures: each recognises its own keys only
    assert mc.signature_motionbert(plain) and mc.signature_hot_motionbert(plain) is None
    assert mc.signature_hot_motionbert(hot) and mc.signature_motionbert(hot) is None


@pytest.mark.parametrize("arch,cfg", [
    ("motionbert", dict(dim_feat=16, dim_rep=12, depth=2, num_heads=2, mlp_ratio=2, maxlen=9)),
    # odd widths; hidden int(14 * 4.3572) = 61, for which the float 61 / 14 gives int(14 * ratio) = 60 (a nudge)
    ("motionbert", dict(dim_in=2, dim_out=4, dim_feat=14, dim_rep=5, depth=3, num_heads=7, mlp_ratio=4.3572,
                        num_joints=15, maxlen=4)),
    ("hot_motionbert", dict(dim_feat=24, dim_rep=8, depth=2, num_heads=3, mlp_ratio=2.5, maxlen=7, token_num=3)),
])
def test_infer_reads_every_shape_determined_hyperparameter(arch, cfg):
    from pyengine import motionbert_ckpt as mc

    model = REF[arch](**cfg)
    sd = model.state_dict()
    got = {k: v for k, (v, _) in mc.infer(sd, arch).items()}
    shape_set = {"dim_in", "dim_out", "dim_feat", "dim_rep", "depth", "mlp_ratio", "num_joints", "maxlen"}
    assert set(got) == shape_set | ({"token_num"} if arch == "hot_motionbert" else set())
    rebuilt = REF[arch](**got, num_heads=cfg["num_heads"])
    assert rebuilt.mlp_hidden == model.mlp_hidden
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in sd.items()}
    for name, value in cfg.items():
        if name in got and name != "mlp_ratio":
            assert got[name] == value, name


def test_mlp_ratio_gives_back_the_width_at_any_size():
    from pyengine.motionbert_ckpt import mlp_ratio_for

    for dim in range(1, 80):
        for hidden in range(1, 400):
            assert int(dim * mlp_ratio_for(dim, hidden)) == hidden, (dim, hidden)  # e.g. (7, 61) needs a nudge
    assert mlp_ratio_for(512, 1024) == 2 and isinstance(mlp_ratio_for(256, 1024), int)


def test_infer_names_a_missing_or_misshaped_key():
    from pyengine import motionbert_ckpt as mc
    from pyengine.checkpoint import CheckpointError

    sd = dict(MotionBERT(**TINY).state_dict())
    bad = dict(sd, **{"norm.weight": torch.zeros(17)})
    with pytest.raises(CheckpointError, match=r"mis-shaped key\(s\) 'norm.weight' of shape \[17\]: 5 other keys"):
        mc.infer(bad, "motionbert")
    with pytest.raises(CheckpointError, match=r"no key 'joints_embed.weight'"):
        mc.infer({k: v for k, v in sd.items() if not k.startswith("joints_embed.")}, "motionbert")
    with pytest.raises(CheckpointError, match=r"keys disagree on dim_rep"):
        mc.infer(dict(sd, **{"head.weight": torch.zeros(3, 13)}), "motionbert")
    # a removed layer's keys leave the depth at the largest count, so the strict key check names them missing
    fewer = {k: v for k, v in sd.items() if not k.startswith("ts_attn.1.")}
    depth, why = mc.infer(fewer, "motionbert")["depth"]
    assert depth == 2 and "ts_attn.i: 1" in why
    with pytest.raises(RuntimeError, match=r"Missing key\(s\) in state_dict: \"ts_attn.1.weight\""):
        MotionBERT(**TINY).load_state_dict(fewer, strict=True)
    with pytest.raises(ValueError, match="arch: expected one of"):
        mc.infer(sd, "mixste")


def test_report_lists_what_runs_where():
    _, _, fast = _fused_pair("hot_motionbert", "cpp")
    text = str(fast.report())
    assert "both streams' first LN+QKV (one grouped launch)" in text and "ln_linear=aten" in text
    assert "tpc_select=cpp" in text and "gather_tokens=index" in text and "TRA" in text
    assert "torch glue" in text and "sigmoid(l0 - l1)" in text


def test_fused_trains_like_the_reference():
    """Gradients flow to the published parameters through the stacked / split weights (cpp backend)."""
    cfg, ref, fast = _fused_pair("hot_motionbert", "cpp", seed=12)
    ref, fast = ref.double(), fast.double()
    x = poses(2, cfg["maxlen"], seed=13).double()
    out, index = ref(x, return_index=True)
    out.square().sum().backward()
    fast(x, index=index).square().sum().backward()
    grads = dict(fast.named_parameters())
    scale = max(p.grad.abs().max().item() for p in ref.parameters())
    for name, p in ref.named_parameters():
        if name == "cross_attention.linear_k.bias":  # inert (shifts every logit of a query alike): gradient ~0
            assert grads[name].grad.abs().max() < 1e-12 * scale and p.grad.abs().max() < 1e-12 * scale
            continue
        assert rel_error(grads[name].grad, p.grad) < 1e-10, name


def test_fused_float64_forward():
    for arch in ("motionbert", "hot_motionbert"):
        cfg, ref, fast = _fused_pair(arch, "cpp", seed=14)
        x = poses(2, cfg["maxlen"], seed=15).double()
        with torch.no_grad():
            want, index = _call(ref.double(), arch, x)
            got, _ = _call(fast.double(), arch, x, index)
        assert got.dtype == torch.float64 and rel_error(got, want) < 1e-12, arch
