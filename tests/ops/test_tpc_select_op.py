"""pyengine::tpc_select (C++ CPU implementation) against the eager DPC-kNN reference."""
import pytest
import torch

import pyengine
from pyengine.models.tpc import dpc_knn_select
from pyengine.ops.tpc_select import tpc_select_op
from pyengine.testing import separated_features  # boundary scores 1e-5 apart (relative), far above fp32 rounding


@pytest.mark.parametrize("N", [27, 35, 81, 243, 351])
@pytest.mark.parametrize("keep_of", ["one", "third", "all_but_one"])
@pytest.mark.parametrize("with_center", [False, True])
def test_cpp_matches_reference(N, keep_of, with_center):
    keep = {"one": 1, "third": N // 3, "all_but_one": N - 1}[keep_of]
    center = (N - 1) // 2 if with_center else None
    x = separated_features(2, N, 24, keep, seed=N + keep)
    want = dpc_knn_select(x, keep, center=center)
    got = pyengine.tpc_select(x, keep, center=center, backend="cpp")
    assert got.dtype == torch.int64 and torch.equal(got, want)


def test_cpp_float64_and_half_inputs():
    x = separated_features(3, 81, 32, 27, seed=1, dtype=torch.float64)
    assert torch.equal(pyengine.tpc_select(x, 27), dpc_knn_select(x, 27))
    xh = separated_features(3, 81, 32, 27, seed=2).to(torch.bfloat16)
    assert torch.equal(pyengine.tpc_select(xh, 27), dpc_knn_select(xh.float(), 27))


@pytest.mark.parametrize("tie_break", ["index", "strict"])
def test_ties_match_the_reference_rule(tie_break):
    const = torch.ones(2, 27, 8)
    for keep, center in [(5, None), (5, 13), (1, 13)]:
        assert torch.equal(pyengine.tpc_select(const, keep, center=center, tie_break=tie_break),
                           dpc_knn_select(const, keep, center=center, tie_break=tie_break))
    base = torch.randn(3, 20, 6, generator=torch.Generator().manual_seed(4))
    dup = base.repeat_interleave(2, dim=1)  # every frame twice: exact zero distances, tied densities
    assert torch.equal(pyengine.tpc_select(dup, 13, tie_break=tie_break), dpc_knn_select(dup, 13, tie_break=tie_break))
    pairs = torch.tensor([[[0.0], [0.1], [10.0], [10.1], [20.0], [20.1]]]).repeat(2, 1, 1)
    assert torch.equal(pyengine.tpc_select(pairs, 3, tie_break=tie_break),
                       dpc_knn_select(pairs, 3, tie_break=tie_break))


def test_noise_tensor_and_scale():
    x = torch.randn(2, 31, 8)
    noise = torch.rand(2, 31) * 1e-6
    assert torch.equal(pyengine.tpc_select(x, 9, noise=noise, tie_break="strict"),
                       dpc_knn_select(x, 9, noise=noise, tie_break="strict"))
    torch.manual_seed(3)
    a = pyengine.tpc_select(x, 9, noise=1e-6, tie_break="strict")
    torch.manual_seed(3)
    assert torch.equal(a, dpc_knn_select(x, 9, noise=1e-6, tie_break="strict"))


def test_k_other_than_two():
    x = separated_features(2, 40, 16, 10, seed=9)
    for k in (1, 3, 5):
        assert torch.equal(pyengine.tpc_select(x, 10, k=k), dpc_knn_select(x, 10, k=k))


def test_bad_arguments_raise_before_the_kernel():
    x = torch.randn(2, 9, 3)
    with pytest.raises(ValueError, match=r"keep: expected an integer in \[1, N=9\], got 10"):
        pyengine.tpc_select(x, 10)
    with pytest.raises(ValueError, match=r"keep: .* got 0"):
        pyengine.tpc_select(x, 0)
    with pytest.raises(ValueError, match=r"x: expected token features of shape \[B, N, C\]"):
        pyengine.tpc_select(x[0], 2)
    bad = x.clone()
    bad[1, 3, 0] = float("nan")  # not an error (no value check in the forward): the reference's NaN rule
    assert torch.equal(pyengine.tpc_select(bad, 2), pyengine.tpc_select(bad, 2, backend="reference"))
    with pytest.raises(ValueError, match=r"noise: expected a tensor of shape \[2, 9\]"):
        pyengine.tpc_select(x, 2, noise=torch.zeros(9))
    with pytest.raises(pyengine.BackendUnavailableError, match=r"backend='bogus' is not available"):
        pyengine.tpc_select(x, 2, backend="bogus")


def test_opcheck():
    x = torch.randn(2, 27, 8)
    torch.library.opcheck(tpc_select_op, (x, 9, 2, 13, True, None, "cpp"))
    torch.library.opcheck(tpc_select_op, (x.double(), 5, 2, -1, False, torch.rand(2, 27, dtype=torch.float64),
                                          "cpp"))


def test_torch_compile_and_export():
    def f(x):
        return tpc_select_op(x, 9, 2, 13, True, None, "cpp")

    x = torch.randn(2, 27, 8)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), dpc_knn_select(x, 9, center=13))

    class Select(torch.nn.Module):
        def forward(self, x):
            return f(x)

    exported = torch.export.export(Select(), (x,))
    assert torch.equal(exported.module()(x), dpc_knn_select(x, 9, center=13))
