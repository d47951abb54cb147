"""The architecture registry (``pyengine.arch.SPECS``): every architecture fact lives in one ``ArchSpec``, and adding
an architecture touches only the registry and its classes. A toy seq2seq lifter (an eager reference and a fused
drop-in, defined here) is registered, and then loads from a bare state_dict (recognised by its keys, its width
read from the shapes), runs fused on the C++ backend, shows in ``report()``, goes through ``pyengine verify``'s
checks and ``pyengine.lift`` — with no other file changed."""
import pytest
import torch
from torch import nn

import pyengine
from pyengine import arch as archs
from pyengine.nn._common import Fused
from pyengine.testing import randomize_, rel_error


class ToyLifter(nn.Module):
    """2D -> 3D per joint: LayerNorm then a linear over (x, y) plus a learned per-frame offset."""

    arch = "toy_lifter"

    def __init__(self, frames=9, n_joints=17, channel=8):
        super().__init__()
        self.frames, self.n_joints, self.channel = frames, n_joints, channel
        self.toy_embed = nn.Linear(2, channel)
        self.toy_norm = nn.LayerNorm(channel)
        self.toy_head = nn.Linear(channel, 3)
        self.toy_frame_offset = nn.Parameter(torch.zeros(1, frames, 1, channel))

    def forward(self, x):
        h = self.toy_embed(x) + self.toy_frame_offset
        return self.toy_head(self.toy_norm(h))


class FusedToyLifter(Fused, ToyLifter):
    """The same on pyengine's ops: embedding GEMM, then LN + head as one ln_linear launch."""

    report_parts = {"embedding; LN + head (one launch)": ("ln_linear",)}

    def __init__(self, *args, backend="auto", allow_tf32=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.set_backend(backend, allow_tf32)

    def forward(self, x):
        B, F, J, _ = x.shape
        ops = self.ops_for(x)
        h = ops.ln_linear(x.reshape(-1, 2), self.toy_embed.weight[None], self.toy_embed.bias[None])
        h = (h.view(B, F, J, -1) + self.toy_frame_offset).view(B * F * J, -1)
        out = ops.ln_linear(h, self.toy_head.weight[None], self.toy_head.bias[None], ln_weight=self.toy_norm.weight[None],
                            ln_bias=self.toy_norm.bias[None], eps=self.toy_norm.eps)
        return out.view(B, F, J, 3)


def _signature(sd):
    if "toy_embed.weight" in sd:
        return "key 'toy_embed.weight' (the toy lifter)"


def _infer(sd, arch):
    return {"channel": (sd["toy_embed.weight"].shape[0], "toy_embed.weight rows"),
            "frames": (sd["toy_frame_offset"].shape[1], "toy_frame_offset length")}


@pytest.fixture
def toy():
    spec = archs.register(archs.ArchSpec(
        "toy_lifter", ToyLifter, f"{__name__}:FusedToyLifter", _infer, _signature, io="seq2seq",
        watched=((r"toy_head", "head"),)))
    yield spec
    archs.unregister("toy_lifter")


def test_a_registered_architecture_works_everywhere(toy, tmp_path):
    ref = randomize_(ToyLifter(frames=9, channel=8), seed=3).eval()
    model = pyengine.load(ref.state_dict(), backend="cpp")  # recognised by its keys, width from the shapes
    assert model.pyengine.arch == "toy_lifter" and type(model) is FusedToyLifter
    assert model.pyengine.config["channel"] == 8 and model.pyengine.config["frames"] == 9
    x = torch.randn(2, 9, 17, 2)
    with torch.no_grad():
        assert rel_error(model(x), ref.double()(x.double())) < 1e-5
    assert "ln_linear=aten" in str(model.report())
    assert "toy_lifter" in pyengine.engine.FUSED
    from pyengine import verify
    rows, meta = verify.run(checkpoint=None, arch="toy_lifter", backend="cpp", frames=9, channel=8)
    assert meta["arch"] == "toy_lifter" and all(r.ok for r in rows)
    kp = torch.randn(40, 17, 2).numpy() * 0.2
    out = pyengine.lift(model, kp, flip=False)
    assert out.shape == (40, 17, 3)


def test_register_refuses_duplicates_and_unknown_bases(toy):
    with pytest.raises(ValueError, match="registered already"):
        archs.register(toy)
    with pytest.raises(ValueError, match="base 'nope' is not registered"):
        archs.register(archs.ArchSpec("toy2", ToyLifter, None, _infer, base="nope"))


def test_every_spec_is_consistent():
    from pyengine import bench
    for name, spec in archs.SPECS.items():
        assert spec.reference.arch == name, name
        if spec.fused is not None:
            assert issubclass(spec.fused_class(), spec.reference), name
        for case in spec.bench_cases:
            assert bench.CASES[case][0] == name, (name, case)
        assert (spec.signature is None) == (spec.base is not None), f"{name}: a family root needs a signature"
    for case, (arch, _, _) in bench.CASES.items():
        assert case in archs.SPECS[arch].bench_cases, f"bench case {case} is not listed by its arch's spec"
