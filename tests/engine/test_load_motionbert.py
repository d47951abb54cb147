"""pyengine.load for MotionBERT / HoT-MotionBERT (SPEC.md §6-7): bare state_dicts, train.py's model_pos files (with
the numpy-scalar min_loss, read without running pickled code), MMPose's {'meta', 'state_dict'} files; the fused
model equals the reference; hyperparameters from shapes; clear errors."""
import numpy as np
import pytest
import torch

import pyengine
from pyengine.models import HoTMotionBERT, MotionBERT
from pyengine.motionbert_ckpt import to_mmpose
from pyengine.testing import randomize_, rel_error

CFG = dict(dim_feat=32, dim_rep=24, depth=2, num_heads=4, mlp_ratio=2, maxlen=16)
HOT = dict(CFG, token_num=6, layer_index=1)


@pytest.fixture(scope="module", params=["motionbert", "hot_motionbert"])
def ref(request):
    cls, cfg = (MotionBERT, CFG) if request.param == "motionbert" else (HoTMotionBERT, HOT)
    return randomize_(cls(**cfg), seed=2).eval()


def check(model, ref, arch):
    assert model.pyengine.arch == arch and type(model) is pyengine.engine.FUSED[arch]
    x = torch.randn(2, 16, 17, 3, generator=torch.Generator().manual_seed(0))
    x[..., 2] = x[..., 2].sigmoid()
    with torch.no_grad():
        assert rel_error(model(x), ref.double()(x.double())) < 1e-5
    ref.float()


def test_bare_state_dict(ref):
    m = pyengine.load(ref.state_dict(), num_heads=4, backend="cpp")
    check(m, ref, ref.arch)
    assert m.pyengine.config["dim_feat"] == 32 and m.pyengine.config["mlp_ratio"] == 2


def test_train_py_checkpoint_with_numpy_min_loss(ref, tmp_path):
    path = tmp_path / "best_epoch.bin"
    torch.save({"epoch": 7, "lr": 1e-4, "min_loss": np.float64(38.5),
                "model_pos": {"module." + k: v for k, v in ref.state_dict().items()}}, path)
    m = pyengine.load(path, num_heads=4, backend="cpp")
    check(m, ref, ref.arch)
    notes = " ".join(m.pyengine.notes)
    assert "numpy scalars" in notes and "min_loss" in notes and "module." in notes


def test_mmpose_checkpoint(ref, tmp_path):
    if ref.arch != "motionbert":
        pytest.skip("MMPose ships DSTformer only")
    path = tmp_path / "motionbert_mmpose.pth"
    torch.save({"meta": {"dataset_meta": {"flip_indices": np.arange(17)}}, "state_dict": to_mmpose(ref.state_dict())},
               path)
    m = pyengine.load(path, num_heads=4, backend="cpp")
    check(m, ref, "motionbert")
    assert m.pyengine.format == "mmpose-motionbert" and "MMPose" in " ".join(m.pyengine.notes)


def test_contradicting_config_and_a_mis_shaped_key(ref):
    with pytest.raises(pyengine.CheckpointError, match=r"dim_feat=64 contradicts the checkpoint"):
        pyengine.load(ref.state_dict(), dim_feat=64, num_heads=4)
    sd = dict(ref.state_dict())
    sd["pos_embed"] = torch.zeros(1, 17, 48)
    with pytest.raises(pyengine.CheckpointError, match="pos_embed"):
        pyengine.load(sd, num_heads=4)
