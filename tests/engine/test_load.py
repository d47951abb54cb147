"""pyengine.load: every published checkpoint format, strict key checking, architecture inference, errors."""
import collections
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import pyengine
from pyengine import BackendUnavailableError, CheckpointError
from pyengine.models import (HSUSA, HWSUSA, WSUSA, HoTMixSTE, MHFormer, MixSTE, PXShuffleUnit, SXShuffleUnit,
                             TPCMHFormer, TPCMixSTE)
from pyengine.testing import randomize_, rel_error


def poses(B, F, seed=0):
    return torch.randn(B, F, 17, 2, generator=torch.Generator().manual_seed(seed)) * 0.5


def small_mhformer(frames=27, seed=0):
    return randomize_(MHFormer(frames=frames, channel=32, d_hid=48), seed).eval()


def small_mixste(seed=0, cls=MixSTE, **kw):
    return randomize_(cls(frames=27, channel=32, d_hid=40, depth=3, **kw), seed).eval()


def assert_same_outputs(a, b, x, **kw):
    """``b`` (loaded) holds exactly ``a``'s weights and computes its outputs: bit for bit on the reference
    backend; on a fused backend (the default, "auto") within fp32 rounding of the different kernel order."""
    from pyengine.nn._common import Fused
    from pyengine.testing import rel_error
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb) and all(torch.equal(sa[k], sb[k].to(sa[k].dtype)) for k in sa)
    with torch.no_grad():
        ya, yb = a(x, **kw), b(x, **kw)
    ya = ya[0] if isinstance(ya, tuple) else ya
    yb = yb[0] if isinstance(yb, tuple) else yb
    fused = any(isinstance(m, Fused) or type(m).__module__ == "pyengine.nn.susa" for m in b.modules())
    assert rel_error(yb, ya) <= 1e-5 if fused else torch.equal(ya, yb)


# ---------------------------------------------------------------- formats


@pytest.mark.parametrize("frames", [27, 81])
def test_bare_state_dict_file(tmp_path, frames):
    model = small_mhformer(frames)
    path = tmp_path / "mhformer.pth"
    torch.save(model.state_dict(), path)
    loaded = pyengine.load(path, device="cpu")
    assert loaded.pyengine.arch == "mhformer" and loaded.pyengine.format == "state_dict"
    assert loaded.pyengine.config["frames"] == frames and loaded.pyengine.config["channel"] == 32
    assert loaded.pyengine.config["d_hid"] == 48 and not loaded.training
    assert_same_outputs(model, loaded, poses(2, frames))


def test_mixste_model_pos_with_module_prefix_and_random_state(tmp_path):
    model = small_mixste()
    opt = torch.optim.AdamW(model.parameters())
    ckpt = {"epoch": 80, "lr": 0.00015, "optimizer": opt.state_dict(),
            "model_pos": nn.DataParallel(model).state_dict(),
            "random_state": np.random.RandomState(1234)}
    assert all(k.startswith("module.") for k in ckpt["model_pos"])
    path = tmp_path / "mixste.bin"
    torch.save(ckpt, path)
    loaded = pyengine.load(path, device="cpu")
    info = loaded.pyengine
    assert info.arch == "mixste" and info.format == "model_pos"
    assert any("RandomState" in n for n in info.notes) and any("module." in n for n in info.notes)
    assert (info.config["depth"], info.config["d_hid"], info.config["frames"]) == (3, 40, 27)
    assert_same_outputs(model, loaded, poses(2, 27))


def test_hot_mixste_infers_token_num_from_shapes(tmp_path):
    model = small_mixste(cls=HoTMixSTE, token_num=9, layer_index=2)
    path = tmp_path / "hot.pth"
    torch.save(model.state_dict(), path)
    loaded = pyengine.load(path, layer_index=2, device="cpu")
    assert loaded.pyengine.arch == "hot_mixste" and loaded.pyengine.config["token_num"] == 9
    assert_same_outputs(model, loaded, poses(2, 27))
    with pytest.raises(CheckpointError, match=r"token_num=81 contradicts the checkpoint: pos_embed_token length"):
        pyengine.load(path, token_num=81)


def legacy_names(sd):
    """SPEC.md §6's whole new -> old mapping (the inverse of what pyengine.load applies)."""
    legacy = {}
    for k, v in sd.items():
        for i in (1, 2, 3):
            k = k.replace(f"Transformer_hypothesis.pos_embed_{i}", f"Transformer.Temporal_pos_embed_{i}")
        k = k.replace("Transformer_hypothesis.norm.", "Transformer.Temporal_norm.")
        k = k.replace("Transformer_hypothesis.SHR_blocks.", "Transformer.blocks.")
        k = k.replace("Transformer_hypothesis.CHI_blocks.", "Transformer.part_blocks.")
        k = k.replace("Transformer_hypothesis.", "Transformer.")
        k = k.replace("regression.", "fcn.")
        for i in (1, 2, 3):
            k = k.replace(f"Transformer_encoder_{i}.pos_embed", f"trans_auto_{i}.Temporal_pos_embed")
            k = k.replace(f"Transformer_encoder_{i}.norm.", f"trans_auto_{i}.Temporal_norm.")
            k = k.replace(f"Transformer_encoder_{i}.", f"trans_auto_{i}.")
            k = k.replace(f"embedding_{i}.", f"encoder_{i}.0.")
        legacy[k] = v
    return legacy


def test_legacy_mhformer_names(tmp_path):
    model = small_mhformer(81)
    legacy = legacy_names(model.state_dict())
    assert "trans_auto_1.Temporal_pos_embed" in legacy and "Transformer.part_blocks.0.norm3_11.weight" in legacy
    assert "Transformer.Temporal_norm.weight" in legacy and "Transformer.Temporal_pos_embed_2" in legacy
    assert not any(k.startswith(("Transformer_", "embedding_", "regression.")) for k in legacy)
    torch.save(legacy, tmp_path / "old.pth")
    loaded = pyengine.load(tmp_path / "old.pth", device="cpu")
    assert "legacy" in loaded.pyengine.format
    assert_same_outputs(model, loaded, poses(2, 81))


def test_legacy_mhformer_bn_embedding(tmp_path):
    model = small_mhformer(27)
    legacy = {k.replace("encoder_1.0.0.", "encoder_1.0.").replace("encoder_2.0.0.", "encoder_2.0.")
              .replace("encoder_3.0.0.", "encoder_3.0.").replace("encoder_1.0.1.", "encoder_1.1.")
              .replace("encoder_2.0.1.", "encoder_2.1.").replace("encoder_3.0.1.", "encoder_3.1."): v
              for k, v in legacy_names(model.state_dict()).items()}  # Conv1d -> BatchNorm: encoder_k.{0,1}
    loaded = pyengine.load(legacy, device="cpu")
    assert_same_outputs(model, loaded, poses(1, 27))


def test_mixed_legacy_and_current_mhformer_names_are_an_error():
    sd = dict(small_mhformer(81).state_dict())
    sd["fcn.1.weight"] = sd.pop("regression.1.weight")
    with pytest.raises(pyengine.CheckpointError, match=r"mixes MHFormer's legacy .* with the current ones"):
        pyengine.load(sd)


def test_published_args_namespace_keys_are_accepted_when_they_agree():
    model = small_mixste(cls=HoTMixSTE, token_num=9, layer_index=1)
    loaded = pyengine.load(model.state_dict(), device="cpu", layer_index=1, n_joints=17, out_joints=17)
    assert loaded.pyengine.arch == "hot_mixste" and "out_joints" not in loaded.pyengine.config
    with pytest.raises(ValueError, match=r"out_joints=16: .* must equal n_joints=17"):
        pyengine.load(model.state_dict(), layer_index=1, out_joints=16)


def test_safetensors(tmp_path):
    model = small_mixste(cls=HoTMixSTE, token_num=9, layer_index=1)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "hot.safetensors")
    loaded = pyengine.load(tmp_path / "hot.safetensors", layer_index=1, device="cpu")
    assert loaded.pyengine.arch == "hot_mixste"
    assert_same_outputs(model, loaded, poses(2, 27))


@pytest.mark.parametrize("make,x_shape,config", [
    (lambda: HSUSA(20), (2, 20, 16, 12), {}),
    (lambda: WSUSA(20, ln_enable=False), (2, 20, 16, 12), {}),
    (lambda: HWSUSA(40, mode="hw", ln_enable=True, hw_shuffle=True), (2, 40, 8, 6), {"hw_shuffle": True}),
    (lambda: HWSUSA(40, mode="wh"), (2, 40, 8, 6), {}),
    (lambda: SXShuffleUnit(40, 40), (2, 40, 16, 12), {}),
    (lambda: PXShuffleUnit(40, 40), (2, 40, 16, 12), {}),
])
def test_susa_modules_in_mmcv_format(tmp_path, make, x_shape, config):
    module = randomize_(make(), seed=3).eval()
    ckpt = {"meta": {"epoch": 210}, "state_dict": {"backbone." + k: v for k, v in module.state_dict().items()}}
    torch.save(ckpt, tmp_path / "x.pth")
    loaded = pyengine.load(tmp_path / "x.pth", device="cpu", **config)
    assert loaded.pyengine.arch == module.arch and loaded.pyengine.format == "mmcv"
    assert_same_outputs(module, loaded, torch.randn(x_shape))


def test_whole_xhrnet_checkpoint_is_refused_clearly(tmp_path):
    ckpt = {"state_dict": {"backbone.stage1.0.group_weight": torch.ones(1, 1, 96, 1),
                           "keypoint_head.final_layer.weight": torch.ones(17, 40, 1, 1)}}
    with pytest.raises(CheckpointError, match=r"whole network.*keypoint_head"):
        pyengine.load(ckpt)


# ---------------------------------------------------------------- strictness


def test_removed_key_is_named():
    sd = small_mhformer(27).state_dict()
    del sd["Transformer_hypothesis.CHI_blocks.0.norm3_22.bias"]
    with pytest.raises(CheckpointError) as err:
        pyengine.load(sd)
    msg = str(err.value)
    assert "missing keys (1): ['Transformer_hypothesis.CHI_blocks.0.norm3_22.bias']" in msg
    assert "arch 'mhformer'" in msg and "inferred from keys" in msg


def test_renamed_key_is_named_both_ways():
    sd = small_mixste().state_dict()
    sd["TTEblocks.1.attn.qkv_weight"] = sd.pop("TTEblocks.1.attn.qkv.weight")
    with pytest.raises(CheckpointError) as err:
        pyengine.load(sd)
    msg = str(err.value)
    assert "missing keys (1): ['TTEblocks.1.attn.qkv.weight']" in msg
    assert "unexpected keys (1): ['TTEblocks.1.attn.qkv_weight']" in msg


def test_misshaped_key_is_named_with_shapes():
    sd = small_mixste().state_dict()
    sd["STEblocks.2.mlp.fc2.bias"] = torch.zeros(33)
    with pytest.raises(CheckpointError, match=r"mis-shaped key 'STEblocks.2.mlp.fc2.bias': expected \[32\], got \[33\]"):
        pyengine.load(sd)


class NotATensor:
    pass


def test_pickle_with_arbitrary_objects_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": NotATensor()}, path)
    with pytest.raises(CheckpointError, match=r"refused .*not a plain tensor dict.*NotATensor"):
        pyengine.load(path)


def test_state_dict_with_non_tensor_values_is_refused():
    with pytest.raises(CheckpointError, match=r"non-tensor entries: \['epoch'\]"):
        pyengine.load({"group_weight": torch.ones(1, 1, 96, 1), "epoch": 3})


def test_unrecognised_keys_ask_for_arch():
    with pytest.raises(CheckpointError, match=r"cannot recognise the architecture.*pass arch="):
        pyengine.load({"fc.weight": torch.zeros(3, 3)})


def test_missing_file_and_bad_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        pyengine.load(tmp_path / "nope.pth")
    (tmp_path / "w.ckpt").write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"expected a file ending in one of"):
        pyengine.load(tmp_path / "w.ckpt")
    (tmp_path / "broken.pth").write_bytes(b"not a zip")
    with pytest.raises(CheckpointError):
        pyengine.load(tmp_path / "broken.pth")


# ---------------------------------------------------------------- architecture and config


def test_tpc_variants_need_arch_or_tpc_config():
    model = randomize_(TPCMHFormer(frames=27, channel=32, d_hid=48, token_num=9), seed=1).eval()
    sd = model.state_dict()
    assert pyengine.load(sd).pyengine.arch == "mhformer"  # same keys as the base model
    by_arch = pyengine.load(sd, arch="tpc_mhformer", token_num=9, device="cpu")
    by_config = pyengine.load(sd, token_num=9, device="cpu")
    assert by_arch.pyengine.arch == by_config.pyengine.arch == "tpc_mhformer"
    assert "TPC variant because the config sets ['token_num']" in by_config.pyengine.reason
    x = poses(2, 27)
    out, index = model(x)
    out2, index2 = by_arch(x)  # the fused model (auto): same selection, outputs within fp32 rounding
    assert torch.equal(index, index2) and rel_error(out2, out) <= 1e-5
    tpc_mixste = pyengine.load(small_mixste().state_dict(), arch="tpc_mixste", token_num=9, layer_index=2)
    assert isinstance(tpc_mixste, TPCMixSTE) and tpc_mixste.layer_index == 2


def test_default_tpc_config_is_the_published_setting():
    sd = randomize_(MHFormer(frames=351, channel=16, d_hid=24), seed=0).state_dict()
    model = pyengine.load(sd, arch="tpc_mhformer")
    assert (model.token_num, model.layer_index) == (117, 1)


def test_config_that_agrees_is_accepted_and_one_that_contradicts_is_refused():
    sd = small_mhformer(27).state_dict()
    assert pyengine.load(sd, frames=27, channel=32).pyengine.config["frames"] == 27
    with pytest.raises(CheckpointError, match=r"frames=81 contradicts the checkpoint: norm_1.weight has length 27"):
        pyengine.load(sd, frames=81)
    with pytest.raises(ValueError, match=r"config: unknown keys \['chanel'\] for arch 'mhformer'"):
        pyengine.load(sd, chanel=32)


def test_arch_that_contradicts_the_keys():
    with pytest.raises(CheckpointError, match=r"arch='mixste' was given, but the checkpoint's keys belong to "
                                              r"'mhformer'"):
        pyengine.load(small_mhformer(27).state_dict(), arch="mixste")
    with pytest.raises(ValueError, match=r"arch: expected one of"):
        pyengine.load(small_mhformer(27).state_dict(), arch="videopose")


def test_bn_embedding_with_too_many_frames_is_explained():
    # A consistent frames=36 checkpoint carrying the BatchNorm embedding of a frames <= 27 model.
    sd = dict(small_mhformer(36).state_dict())
    sd = {k: v for k, v in sd.items() if not k.startswith("embedding_")}
    sd.update({k: v for k, v in small_mhformer(27).state_dict().items() if k.startswith("embedding_")})
    with pytest.raises(CheckpointError, match=r"BatchNorm embedding .* frames=36 .*frames <= 27"):
        pyengine.load(sd)
    # Only the norm_k keys edited to 36 frames: the four other keys that give frames say 27, so those are
    # reported as the mis-shaped keys they are.
    sd = dict(small_mhformer(27).state_dict())
    for k in ("norm_1", "norm_2", "norm_3"):
        sd[k + ".weight"], sd[k + ".bias"] = torch.ones(36), torch.zeros(36)
    with pytest.raises(CheckpointError, match=r"mis-shaped key\(s\) 'norm_1.weight' of shape \[36\], 'norm_2.weight'"
                                              r".* give frames=27"):
        pyengine.load(sd)


def test_load_module_instances():
    own = small_mixste(cls=HoTMixSTE, token_num=9, layer_index=2)
    loaded = pyengine.load(own, device="cpu")
    assert loaded is not own and loaded.layer_index == 2
    assert loaded.Temporal_pos_embed.data_ptr() != own.Temporal_pos_embed.data_ptr()
    assert_same_outputs(own, loaded, poses(2, 27))

    class Wrapper(nn.Module):  # any module whose state_dict has the published names
        def __init__(self, inner):
            super().__init__()
            for name, child in inner.named_children():
                self.add_module(name, child)
            for name, p in inner.named_parameters(recurse=False):
                self.register_parameter(name, p)

    wrapped = Wrapper(small_mhformer(27))
    assert pyengine.load(wrapped).pyengine.arch == "mhformer"
    with pytest.raises(TypeError, match="obj: expected a checkpoint path"):
        pyengine.load(42)


def test_dtype_and_backend_options():
    model = small_mhformer(27)
    half = pyengine.load(model.state_dict(), dtype=torch.float64, device="cpu")
    assert half.norm_1.weight.dtype == torch.float64
    assert half.regression[0].num_batches_tracked.dtype == torch.int64
    y = half(poses(1, 27))
    assert y.dtype == torch.float32
    assert pyengine.load(model.state_dict(), backend="reference").pyengine.backend == "reference"
    assert pyengine.load(model.state_dict()).pyengine.backend == "auto"
    assert pyengine.load(model.state_dict(), backend="cpp").pyengine.backend == "cpp"
    with pytest.raises(BackendUnavailableError, match=r"backend='cuda' runs on CUDA tensors"):
        pyengine.load(model.state_dict(), backend="cuda", device="cpu")
    with pytest.raises(ValueError, match=r"backend: expected one of"):
        pyengine.load(model.state_dict(), backend="tensorrt")
    with pytest.raises(ValueError, match=r"dtype: expected a floating torch.dtype"):
        pyengine.load(model.state_dict(), dtype=torch.int8)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_mhformer_keeps_its_mhg_in_fp32_and_reports_it(dtype):
    ref = small_mhformer(27, seed=3)
    model = pyengine.load(ref, dtype=dtype)
    kept = pyengine.arch.SPECS["mhformer"].fp32_modules
    assert model.pyengine.fp32_modules == kept and "MHG" in model.pyengine.fp32_why
    for name, p in model.named_parameters():
        in_mhg = any(name.startswith(k + ".") for k in kept)
        assert p.dtype == (torch.float32 if in_mhg else dtype), name
    assert "kept float32 in this" in str(model.report())
    for name in kept:  # the loaded fp32 values themselves, not rounded through the half dtype on the way
        for (n, p), (_, want) in zip(model.get_submodule(name).named_parameters(),
                                     ref.get_submodule(name).named_parameters()):
            assert torch.equal(p, want), (name, n)
    x = poses(2, 27)
    with torch.no_grad():
        want = ref.double()(x.double())
        ref.float()
        got = model(x)
        assert got.dtype == torch.float32 and rel_error(got, want) < 0.05
        assert model(x.to(dtype)).dtype == dtype
    # fp32 models and the eager reference (which has no casts between its parts) are not touched
    assert pyengine.load(ref).pyengine.fp32_modules == ()
    plain = pyengine.load(ref, dtype=dtype, backend="reference")
    assert plain.pyengine.fp32_modules == () and plain.norm_1.weight.dtype == dtype
    assert "kept float32" not in str(plain.report())


def test_a_bf16_mhformer_runs_its_fp32_mhg_gemms_in_bf16_on_cpu():
    """The MHG kept float32 in a bf16 MHFormer still runs its GEMMs in bf16 on CPU (LayerNorm and residuals in
    fp32; ``arch.ArchSpec.fp32_modules_bf16_gemms``), said so in report(); only while the model is in bf16."""
    ref = small_mhformer(27, seed=3)
    model = pyengine.load(ref, dtype=torch.bfloat16)
    assert model.fp32_gemm_dtype == torch.bfloat16 and model.pyengine.fp32_bf16_gemms
    assert "their GEMMs in bf16" in str(model.report())
    assert pyengine.load(ref, dtype=torch.float16).fp32_gemm_dtype is None  # bf16 only
    x = poses(2, 27)
    enc = model.Transformer_encoder_1
    with torch.no_grad():
        want = ref.double()(x.double())
        ref.float()
        enc.__dict__["_ops_cache"] = {}
        mixed = model(x)
        assert {ops.gemm_dtype for ops in enc._ops_cache.values()} == {torch.bfloat16}
        assert all(len(ops.weight_casts) > 0 for ops in enc._ops_cache.values())  # bf16 copies, made once
        model.fp32_gemm_dtype = None
        fp32_mhg = model(x)
        model.fp32_gemm_dtype = torch.bfloat16
    assert not torch.equal(mixed, fp32_mhg)  # the MHG's GEMMs did run in bf16
    assert rel_error(mixed, want) < 0.05
    model.float()  # the whole model in fp32: no bf16 GEMM anywhere
    enc.__dict__["_ops_cache"] = {}
    with torch.no_grad():
        model(x)
    assert {ops.gemm_dtype for ops in enc._ops_cache.values()} == {None}


def test_info_is_readable():
    info = pyengine.load(small_mhformer(27).state_dict()).pyengine
    text = str(info)
    assert text.startswith("arch mhformer (inferred from keys") and "frames=27" in text
