"""Eager reference models against SPEC.md: parameter counts, an independent functional reading of the spec,
published key names, TPC behaviour, and input validation."""
import pytest
import torch

from functional_ref import mhformer as f_mhformer
from functional_ref import mixste as f_mixste
from pyengine.models import HoTMixSTE, MHFormer, MixSTE, TPCMHFormer, TPCMixSTE
from pyengine.models.tpc import check_index_values
from pyengine.testing import randomize_, rel_error


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("frames,count", [(27, 19_184_517), (81, 19_837_545), (243, 25_165_077),
                                          (351, 31_516_125)])
def test_mhformer_parameter_counts(frames, count):
    assert n_params(MHFormer(frames=frames)) == count


def test_mixste_parameter_counts():
    assert n_params(MixSTE()) == 33_783_811
    assert n_params(HoTMixSTE()) == 35_000_323
    assert n_params(TPCMixSTE()) == 33_783_811  # TPC adds no parameters


def poses(B, F, seed=0):
    return torch.randn(B, F, 17, 2, generator=torch.Generator().manual_seed(seed)) * 0.5


@pytest.mark.parametrize("frames", [9, 27, 36])  # <= 27: BatchNorm embedding; 36: plain Conv1d
def test_mhformer_matches_functional_spec(frames):
    model = randomize_(MHFormer(frames=frames, channel=32, d_hid=48), seed=frames).eval()
    x = poses(3, frames)
    want = f_mhformer(model.state_dict(), x)
    assert rel_error(model.double()(x.double()), want) < 1e-12
    assert rel_error(model.float()(x), want) < 1e-5


def test_mhformer_four_layers():
    model = randomize_(MHFormer(frames=18, channel=16, d_hid=24, layers=4), seed=1).eval().double()
    assert len(model.Transformer_hypothesis.SHR_blocks) == 3
    x = poses(2, 18).double()
    assert rel_error(model(x), f_mhformer(model.state_dict(), x)) < 1e-12


@pytest.mark.parametrize("layer_index", [0, 1])
def test_tpc_mhformer_matches_functional_spec(layer_index):
    model = randomize_(TPCMHFormer(frames=27, channel=32, d_hid=48, token_num=9, layer_index=layer_index),
                       seed=3).eval().double()
    x = poses(2, 27).double()
    out, index = model(x)
    assert out.shape == (2, 9, 17, 3) and index.shape == (2, 9)
    assert (index == 13).any(dim=1).all(), "the centre frame is always kept"
    assert (index[:, 1:] > index[:, :-1]).all()
    assert rel_error(out, f_mhformer(model.state_dict(), x, index=index, tpc=layer_index)) < 1e-12
    # a given index is used as is, and returned
    fixed = torch.arange(0, 27, 3).repeat(2, 1)
    out2, index2 = model(x, index=fixed)
    assert index2 is fixed
    assert rel_error(out2, f_mhformer(model.state_dict(), x, index=fixed, tpc=layer_index)) < 1e-12


def test_tpc_mhformer_selection_is_dpc_knn_of_concatenated_hypotheses():
    model = randomize_(TPCMHFormer(frames=27, channel=16, d_hid=24, token_num=7, layer_index=0), seed=4).eval()
    captured = {}
    from pyengine.models import mhformer as mod

    real = mod.dpc_knn_select

    def spy(x, keep, **kw):
        captured.update(x=x, keep=keep, **kw)
        return real(x, keep, **kw)

    mod.dpc_knn_select = spy
    try:
        model(poses(2, 27))
    finally:
        mod.dpc_knn_select = real
    assert captured["x"].shape == (2, 27, 48), "features are cat(x1, x2, x3) -> [B, F, 3C]"
    assert captured["keep"] == 7 and captured["center"] == 13


@pytest.mark.parametrize("frames,depth", [(9, 3), (27, 2)])
def test_mixste_matches_functional_spec(frames, depth):
    model = randomize_(MixSTE(frames=frames, channel=32, d_hid=40, depth=depth), seed=5).eval()
    x = poses(2, frames)
    want = f_mixste(model.state_dict(), x)
    assert rel_error(model.double()(x.double()), want) < 1e-12
    assert rel_error(model.float()(x), want) < 1e-5


@pytest.mark.parametrize("layer_index", [1, 3])
def test_hot_mixste_matches_functional_spec(layer_index):
    model = randomize_(HoTMixSTE(frames=27, channel=32, depth=4, token_num=9, layer_index=layer_index),
                       seed=6).eval().double()
    x = poses(2, 27).double()
    out, index = model(x, return_index=True)
    assert out.shape == (2, 27, 17, 3), "TRA recovers every frame"
    assert torch.equal(model(x), out), "the published call returns the output only"
    want = f_mixste(model.state_dict(), x, index=index, layer_index=layer_index, recover=True)
    assert rel_error(out, want) < 1e-12


def test_tpc_mixste_matches_functional_spec():
    model = randomize_(TPCMixSTE(frames=27, channel=32, depth=4, token_num=9, layer_index=2), seed=7).eval()
    model = model.double()
    x = poses(3, 27).double()
    out, index = model(x)
    assert out.shape == (3, 9, 17, 3)
    assert (index == 13).any(dim=1).all()
    assert rel_error(out, f_mixste(model.state_dict(), x, index=index, layer_index=2)) < 1e-12


def test_published_key_names():
    keys = set(MHFormer(frames=27, channel=16, d_hid=24).state_dict())
    assert {"norm_1.weight", "Transformer_encoder_3.pos_embed", "Transformer_encoder_1.blocks.3.attn.qkv.weight",
            "Transformer_encoder_2.norm.bias", "embedding_1.0.weight", "embedding_3.1.running_var",
            "Transformer_hypothesis.pos_embed_2", "Transformer_hypothesis.SHR_blocks.1.attn_3.proj.bias",
            "Transformer_hypothesis.SHR_blocks.0.norm1_2.weight", "Transformer_hypothesis.CHI_blocks.0.norm3_32.bias",
            "Transformer_hypothesis.CHI_blocks.0.attn_2.linear_k.weight", "Transformer_hypothesis.norm.weight",
            "regression.0.num_batches_tracked", "regression.1.weight"} <= keys
    assert "embedding_1.weight" in MHFormer(frames=36, channel=16, d_hid=24).state_dict()
    hot = set(HoTMixSTE(frames=27, channel=16, token_num=9).state_dict())
    assert {"Spatial_patch_to_embedding.weight", "Spatial_pos_embed", "Temporal_pos_embed", "pos_embed_token",
            "x_token", "cross_attention.linear_q.bias", "cross_attention.proj.weight", "STEblocks.7.mlp.fc2.bias",
            "TTEblocks.0.attn.qkv.weight", "Spatial_norm.weight", "Temporal_norm.bias", "head.0.weight",
            "head.1.bias"} <= hot
    assert set(MixSTE(frames=27, channel=16).state_dict()) == hot - {
        "pos_embed_token", "x_token", *(k for k in hot if k.startswith("cross_attention."))}


def test_chi_block_is_sequential():
    """Each CHI line must read the hypotheses already updated above it (SPEC.md §1.6)."""
    model = randomize_(MHFormer(frames=9, channel=16, d_hid=24), seed=8).eval().double()
    chi = model.Transformer_hypothesis.CHI_blocks[0]
    x1, x2, x3 = (torch.randn(2, 9, 16, dtype=torch.float64) for _ in range(3))
    y1 = x1 + chi.attn_1(chi.norm3_11(x2), chi.norm3_12(x3), chi.norm3_13(x1))
    stale = x2 + chi.attn_2(chi.norm3_21(x1), chi.norm3_22(x3), chi.norm3_23(x2))  # uses the old x1
    fresh = x2 + chi.attn_2(chi.norm3_21(y1), chi.norm3_22(x3), chi.norm3_23(x2))
    cat = torch.cat([y1, fresh, x3 + chi.attn_3(chi.norm3_31(y1), chi.norm3_32(fresh), chi.norm3_33(x3))], -1)
    want = cat + chi.mlp(chi.norm2(cat))
    got = torch.cat(chi(x1, x2, x3), -1)
    assert rel_error(got, want) < 1e-14
    assert not torch.allclose(stale, fresh)


def test_output_dtype_follows_input_and_compute_follows_parameters():
    model = randomize_(MHFormer(frames=9, channel=16, d_hid=24), seed=9).eval()
    x = poses(2, 9)
    ref = model(x)
    y = model.double()(x)
    assert y.dtype == torch.float32 and rel_error(y, ref) < 1e-5


@pytest.mark.parametrize("ctor", [lambda: MHFormer(frames=27, channel=16, d_hid=24),
                                  lambda: MixSTE(frames=27, channel=16),
                                  lambda: HoTMixSTE(frames=27, channel=16, token_num=9)])
def test_bad_inputs_raise_clear_errors(ctor):
    model = ctor().eval()
    with pytest.raises(ValueError, match=r"x: expected shape \[B, F=27, J=17, 2\].*got \[2, 81, 17, 2\]"):
        model(torch.zeros(2, 81, 17, 2))
    with pytest.raises(ValueError, match=r"J=17.*got \[2, 27, 16, 2\]"):
        model(torch.zeros(2, 27, 16, 2))
    with pytest.raises(ValueError, match=r"got \[27, 17, 2\]"):
        model(torch.zeros(27, 17, 2))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(2, 27, 17, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[0.0]])


def test_bad_index_raises():
    model = TPCMHFormer(frames=27, channel=16, d_hid=24, token_num=9).eval()
    x = poses(2, 27)
    with pytest.raises(ValueError, match=r"index: expected shape \[B=2, token_num=9\], got \[2, 8\]"):
        model(x, index=torch.zeros(2, 8, dtype=torch.long))
    # The forward checks metadata only (no host sync); values are checked where an index enters from outside.
    with pytest.raises(IndexError, match="out of bounds"):  # torch's own indexing error on CPU
        model(x, index=torch.full((2, 9), 27))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 27\), got range \[27, 27\]"):
        check_index_values(torch.full((2, 9), 27), 27)
    with pytest.raises(TypeError, match="int64"):
        model(x, index=torch.zeros(2, 9))


@pytest.mark.parametrize("ctor,match", [
    (lambda: MHFormer(frames=28), r"frames=28, mhg_heads=9.*not divisible"),
    (lambda: MHFormer(frames=27, channel=60), r"channel=60, heads=8"),
    (lambda: MHFormer(frames=27, layers=1), r"layers: expected >= 2"),
    (lambda: TPCMHFormer(frames=27), r"token_num: expected 1 <= token_num <= frames=27, got 117"),
    (lambda: TPCMHFormer(frames=27, token_num=9, layer_index=2), r"layer_index: expected .* \[0, 1\]"),
    (lambda: TPCMixSTE(frames=27, token_num=9, layer_index=0), r"layer_index: expected .* \[1, 7\]"),
    (lambda: HoTMixSTE(frames=27, token_num=9, tie_break="random"), r"tie_break"),
])
def test_bad_hyperparameters(ctor, match):
    with pytest.raises(ValueError, match=match):
        ctor()
