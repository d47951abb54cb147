"""pyengine::tpc_select, Triton (under the interpreter here) and CUDA (GPU only) implementations, against the
eager DPC-kNN reference and the C++ implementation."""
import pytest
import torch

import pyengine
from pyengine.models.tpc import dpc_knn_select
from pyengine.ops.tpc_select import tpc_select_op
from pyengine.testing import separated_features  # boundary scores 1e-5 apart (relative), far above fp32 rounding


def select(x, keep, backend, **kw):
    return pyengine.tpc_select(x, keep, backend=backend, **kw)


# Every keep x centre combination at F = 27 and 81, odd F = 35, a few at the published F = 243 and 351.
CASES = [(N, keep_of, with_center) for N in (27, 81) for keep_of in ("one", "third", "all_but_one")
         for with_center in (False, True)]
CASES += [(35, "third", True), (243, "one", True), (243, "third", False), (243, "all_but_one", True),
          (351, "third", True)]


@pytest.mark.parametrize("N,keep_of,with_center", CASES)
def test_triton_matches_reference_and_cpp(N, keep_of, with_center):
    keep = {"one": 1, "third": N // 3, "all_but_one": N - 1}[keep_of]
    center = (N - 1) // 2 if with_center else None
    B, C = (1, 5) if N > 81 else (2, 20)  # C=20: 16 lanes + 4 tail channels (both distance paths)
    x = separated_features(B, N, C, keep, seed=N + keep)
    want = dpc_knn_select(x, keep, center=center)
    got = select(x, keep, "triton", center=center)
    assert got.dtype == torch.int64 and got.shape == (B, keep)
    assert torch.equal(got, want)
    assert torch.equal(got, select(x, keep, "cpp", center=center))


def test_half_precision_features_select_like_their_float32_values():
    x = separated_features(2, 40, 16, 13, seed=5)
    for dtype in (torch.float16, torch.bfloat16):
        xh = x.to(dtype)
        assert torch.equal(select(xh, 13, "triton"), dpc_knn_select(xh.float(), 13))


def test_strided_input():
    x = separated_features(2, 30, 20, 10, seed=6)
    wide = torch.cat([x, torch.randn(2, 30, 7)], dim=-1)[..., :20]  # row stride 27, unit channel stride
    assert torch.equal(select(wide, 10, "triton"), dpc_knn_select(x, 10))


@pytest.mark.parametrize("tie_break", ["index", "strict"])
def test_ties_follow_the_documented_rule(tie_break):
    const = torch.ones(2, 27, 8)
    for keep, center in [(5, None), (5, 13), (1, 13), (26, None)]:
        want = dpc_knn_select(const, keep, center=center, tie_break=tie_break)
        assert torch.equal(select(const, keep, "triton", center=center, tie_break=tie_break), want)
        assert torch.equal(select(const, keep, "cpp", center=center, tie_break=tie_break), want)
    # all distances 0, so every score is 0: the lowest indices win
    assert select(const, 5, "triton", tie_break=tie_break).tolist() == [[0, 1, 2, 3, 4]] * 2
    base = torch.randn(3, 20, 6, generator=torch.Generator().manual_seed(4))
    dup = base.repeat_interleave(2, dim=1)  # every frame twice: exact zero distances, tied densities
    want = dpc_knn_select(dup, 13, tie_break=tie_break)
    assert torch.equal(select(dup, 13, "triton", tie_break=tie_break), want)
    assert torch.equal(select(dup, 13, "cpp", tie_break=tie_break), want)
    pairs = torch.tensor([[[0.0], [0.1], [10.0], [10.1], [20.0], [20.1]]]).repeat(2, 1, 1)
    assert torch.equal(select(pairs, 3, "triton", tie_break=tie_break), dpc_knn_select(pairs, 3, tie_break=tie_break))


def test_densest_token_uses_the_sample_maximum_distance():
    """Three tight pairs on a triangle and a token near its centre (last). The densest token's delta is the
    largest distance of the whole sample; every other pair's delta exceeds the distances to the last token, so
    a fallback taken from any subset of D (the C++ once used one unsorted row element) changes the ranking."""
    x = torch.tensor([[[0.0, 0.0], [0.5, 0.0], [10.0, 0.0], [10.5, 0.0], [5.0, 8.66], [5.5, 8.66], [5.2, 2.9]]])
    want = dpc_knn_select(x, 2)
    assert want.tolist() == [[0, 4]]
    assert torch.equal(select(x, 2, "triton"), want)
    assert torch.equal(select(x, 2, "cpp"), want)


def test_noise_tensor_and_scale():
    x = torch.randn(2, 31, 8)
    noise = torch.rand(2, 31) * 1e-6
    want = dpc_knn_select(x, 9, noise=noise, tie_break="strict")
    assert torch.equal(select(x, 9, "triton", noise=noise, tie_break="strict"), want)
    const = torch.ones(1, 27, 4)  # noise decides everything on constant features
    noise = torch.rand(1, 27)
    assert torch.equal(select(const, 6, "triton", noise=noise, tie_break="strict"),
                       dpc_knn_select(const, 6, noise=noise, tie_break="strict"))
    torch.manual_seed(3)
    a = select(x, 9, "triton", noise=1e-6, tie_break="strict")
    torch.manual_seed(3)
    assert torch.equal(a, dpc_knn_select(x, 9, noise=1e-6, tie_break="strict"))


def test_k_other_than_two():
    x = separated_features(2, 40, 16, 10, seed=9)
    for k in (1, 3, 5):
        assert torch.equal(select(x, 10, "triton", k=k), dpc_knn_select(x, 10, k=k))


@pytest.mark.parametrize("backend", ["reference", "cpp", "triton", "cuda"])
def test_bad_arguments_raise_on_every_backend(backend):
    x = torch.randn(2, 9, 3)
    with pytest.raises(ValueError, match=r"keep: expected an integer in \[1, N=9\], got 10"):
        select(x, 10, backend)
    with pytest.raises(ValueError, match=r"keep: .* got 0"):
        select(x, 0, backend)
    with pytest.raises(ValueError, match=r"x: expected token features of shape \[B, N, C\], got \[9, 3\]"):
        select(x[0], 2, backend)
    with pytest.raises(ValueError, match=r"center: expected None or a token index in \[0, 9\), got 9"):
        select(x, 2, backend, center=9)
    if backend != "cuda":  # (a CPU tensor here: the cuda backend refuses it, see below)
        bad = x.clone()
        bad[1, 3, 0] = float("nan")  # not an error (no value check in the forward): the reference's NaN rule
        assert torch.equal(select(bad, 2, backend), dpc_knn_select(bad, 2))


def test_unavailable_backends_say_why():
    x = torch.randn(2, 9, 3)
    with pytest.raises(pyengine.BackendUnavailableError, match=r"backend='cuda' runs on CUDA tensors"):
        select(x, 2, "cuda")
    with pytest.raises(pyengine.BackendUnavailableError, match=r"takes float32/float16/bfloat16 .* float64"):
        select(x.double(), 2, "triton")
    with pytest.raises(pyengine.BackendUnavailableError, match=r"at most 1024 tokens, got N=1025"):
        select(torch.randn(1, 1025, 1), 2, "triton")
    with pytest.raises(pyengine.BackendUnavailableError, match=r"backend='bogus' is not available"):
        select(x, 2, "bogus")


def test_opcheck():
    x = torch.randn(2, 27, 8)
    torch.library.opcheck(tpc_select_op, (x, 9, 2, 13, True, None, "triton"))
    torch.library.opcheck(tpc_select_op, (x, 5, 2, -1, False, torch.rand(2, 27), "triton"))


def test_torch_compile_and_export():
    def f(x):
        return tpc_select_op(x, 9, 2, 13, True, None, "triton")

    x = torch.randn(2, 27, 8)
    want = dpc_knn_select(x, 9, center=13)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), want)

    class Select(torch.nn.Module):
        def forward(self, x):
            return f(x)

    exported = torch.export.export(Select(), (x,))
    assert torch.equal(exported.module()(x), want)




@pytest.mark.gpu
@pytest.mark.cuda_ext
@pytest.mark.parametrize("N,C,keep,center", [(27, 20, 9, None), (81, 64, 27, 40), (243, 100, 81, None),
                                             (351, 1536, 117, 175), (1024, 33, 300, None)])
def test_cuda_matches_reference_and_triton(N, C, keep, center):
    x = separated_features(2, N, C, keep, seed=N).cuda()
    got = select(x, keep, "cuda", center=center)
    assert got.is_cuda and got.dtype == torch.int64
    assert torch.equal(got.cpu(), dpc_knn_select(x.cpu(), keep, center=center))
    assert torch.equal(got, select(x, keep, "triton", center=center))
    assert torch.equal(got.cpu(), select(x.cpu(), keep, "cpp", center=center))


@pytest.mark.gpu
@pytest.mark.cuda_ext
@pytest.mark.parametrize("tie_break", ["index", "strict"])
def test_cuda_ties_noise_and_half_inputs(tie_break):
    dup = torch.randn(3, 20, 6).repeat_interleave(2, dim=1).cuda()
    assert torch.equal(select(dup, 13, "cuda", tie_break=tie_break).cpu(),
                       dpc_knn_select(dup.cpu(), 13, tie_break=tie_break))
    const = torch.ones(2, 27, 8, device="cuda")
    assert torch.equal(select(const, 5, "cuda", center=13, tie_break=tie_break).cpu(),
                       dpc_knn_select(const.cpu(), 5, center=13, tie_break=tie_break))
    x = torch.randn(2, 31, 8, device="cuda")
    noise = torch.rand(2, 31, device="cuda") * 1e-6
    assert torch.equal(select(x, 9, "cuda", noise=noise, tie_break=tie_break),
                       select(x, 9, "triton", noise=noise, tie_break=tie_break))
    xb = x.bfloat16()
    assert torch.equal(select(xb, 9, "cuda"), select(xb, 9, "triton"))
    torch.library.opcheck(tpc_select_op, (x, 9, 2, 15, True, None, "cuda"))
