"""DPC-kNN token selection (SPEC.md §2, TPC): determinism, centre handling, ties, and a brute-force check."""
import itertools
import math

import pytest
import torch

from pyengine.models.tpc import dpc_knn_scores, dpc_knn_select, pairwise_distance
from pyengine.testing import separated_features


def brute_force_select(x, keep, k=2, center=None, tie_break="index"):
    """Scalar-loop fp64 DPC-kNN, written straight from SPEC.md, for one sample ``x [N, C]``."""
    x = x.double().tolist()
    N, C = len(x), len(x[0])
    D = [[math.sqrt(sum((a - b) ** 2 for a, b in zip(x[i], x[j]))) / math.sqrt(C) for j in range(N)]
         for i in range(N)]
    rho = [math.exp(-sum(d * d for d in sorted(row)[:k]) / k) for row in D]
    dmax = max(max(row) for row in D)

    def denser(j, i):
        return rho[j] > rho[i] or (tie_break == "index" and rho[j] == rho[i] and j < i)

    delta = [min([D[i][j] for j in range(N) if denser(j, i)], default=dmax) for i in range(N)]
    score = [delta[i] * rho[i] for i in range(N)]
    candidates = [i for i in range(N) if i != center]
    ranked = sorted(candidates, key=lambda i: (-score[i], i))
    chosen = ranked[: keep - (center is not None)] + ([center] if center is not None else [])
    return sorted(chosen), score


def well_separated(B, N, C, seed, keep):
    """fp64 features whose boundary scores differ by 1e-4 of the largest score (pyengine.testing's
    ``separated_features``, drawn in fp64), so fp32 rounding cannot change which tokens are kept."""
    return separated_features(B, N, C, keep, seed, torch.float64, min_gap=1e-4, draw_dtype=torch.float64,
                              gap_scale="max")


def test_distances_are_exact_and_symmetric():
    x = torch.randn(3, 40, 17)
    d = pairwise_distance(x, chunk=7)
    assert torch.equal(d, d.transpose(1, 2)), "D must be symmetric bit for bit"
    assert torch.equal(torch.diagonal(d, dim1=1, dim2=2), torch.zeros(3, 40))
    expected = torch.cdist(x.double(), x.double(), compute_mode="donot_use_mm_for_euclid_dist") / 17 ** 0.5
    assert torch.allclose(d.double(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("N,C,keep,center", [(9, 4, 3, None), (11, 6, 4, 5), (13, 3, 1, None), (13, 3, 1, 6),
                                               (15, 5, 14, 7), (17, 8, 17, None)])
def test_matches_brute_force(N, C, keep, center):
    x = well_separated(2, N, C, seed=N * 100 + keep, keep=keep)
    got = dpc_knn_select(x, keep, center=center)
    for b in range(2):
        want, _ = brute_force_select(x[b], keep, center=center)
        assert got[b].tolist() == want
    # fp32 agrees with fp64 when the scores are well separated
    assert torch.equal(dpc_knn_select(x.float(), keep, center=center), got)


def test_output_sorted_unique_int64_and_deterministic():
    x = torch.randn(4, 31, 8)
    a = dpc_knn_select(x, 10)
    b = dpc_knn_select(x.clone(), 10)
    assert a.dtype == torch.int64 and a.shape == (4, 10)
    assert torch.equal(a, b)
    assert (a[:, 1:] > a[:, :-1]).all(), "indices must be strictly ascending (sorted, no duplicates)"


def test_center_is_excluded_from_ranking_and_added_back():
    x = well_separated(3, 21, 6, seed=7, keep=5)
    c = 10
    with_c = dpc_knn_select(x, 5, center=c)
    assert (with_c == c).sum(dim=1).eq(1).all(), "the centre appears exactly once"
    # the other four are the top-4 of the ranking with the centre removed
    score = dpc_knn_scores(x)[0]
    score[:, c] = -math.inf
    top4 = score.topk(4, dim=-1).indices
    for b in range(3):
        assert sorted(top4[b].tolist() + [c]) == with_c[b].tolist()


def test_center_only_when_keep_is_one():
    x = torch.randn(2, 9, 3)
    assert dpc_knn_select(x, 1, center=4).tolist() == [[4], [4]]


def test_mutual_nearest_neighbours_tie_rules():
    # Two tight pairs far apart: each pair's members are each other's nearest neighbour -> equal density.
    x = torch.tensor([[[0.0], [0.1], [10.0], [10.1]]], dtype=torch.float64)
    score_i, rho, delta_i, dist = dpc_knn_scores(x, tie_break="index")
    assert rho[0, 0] == rho[0, 1] and rho[0, 2] == rho[0, 3], "mutual neighbours must tie exactly"
    # "index": within a tied pair the lower index is denser, so the higher index gets the pair distance.
    assert delta_i[0, 1] == dist[0, 1, 0] and delta_i[0, 3] == dist[0, 3, 2]
    # "strict": neither member of a tied pair is denser than the other.
    _, _, delta_s, _ = dpc_knn_scores(x, tie_break="strict")
    dmax = dist.max()
    assert delta_s[0, 1] == dmax and delta_s[0, 0] == dmax


def test_constant_input_selects_lowest_indices():
    # All tokens identical: every rho is 1 and every distance 0; ties resolve to the lowest indices.
    x = torch.ones(2, 12, 5)
    assert dpc_knn_select(x, 4).tolist() == [[0, 1, 2, 3]] * 2
    assert dpc_knn_select(x, 4, center=5).tolist() == [[0, 1, 2, 5]] * 2
    assert dpc_knn_select(x, 4, tie_break="strict").tolist() == [[0, 1, 2, 3]] * 2


def test_duplicated_frames_are_deterministic():
    base = torch.randn(1, 6, 4, generator=torch.Generator().manual_seed(3))
    x = base.repeat_interleave(2, dim=1)  # every frame twice
    a = dpc_knn_select(x, 5)
    assert torch.equal(a, dpc_knn_select(x.clone(), 5))
    want, _ = brute_force_select(x[0], 5)
    assert a[0].tolist() == want


def test_explicit_noise_tensor_reproduces_a_draw():
    x = torch.tensor([[[0.0], [0.1], [10.0], [10.1]]], dtype=torch.float64)
    # Noise that makes token 1 denser than 0 and token 3 denser than 2 flips the index rule's choice.
    noise = torch.tensor([[0.0, 1e-6, 0.0, 1e-6]], dtype=torch.float64)
    _, rho, delta, dist = dpc_knn_scores(x, tie_break="strict", noise=noise)
    assert delta[0, 0] == dist[0, 0, 1] and delta[0, 2] == dist[0, 2, 3]
    a = dpc_knn_select(x, 2, noise=noise, tie_break="strict")
    b = dpc_knn_select(x, 2, noise=noise, tie_break="strict")
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"noise: expected a tensor of shape \[1, 4\]"):
        dpc_knn_select(x, 2, noise=torch.zeros(4))


def test_float_noise_scale_equals_the_same_explicit_draw():
    # Noise decides which member of each mutual-nearest pair is denser, so it may change the selection; a
    # float scale must equal the explicit tensor of the same draw (published: rand * 1e-6 added to rho).
    x = torch.randn(2, 15, 4, dtype=torch.float64)
    torch.manual_seed(1)
    noisy = dpc_knn_select(x, 5, noise=1e-6, tie_break="strict")
    torch.manual_seed(1)
    draw = torch.rand(2, 15, dtype=torch.float64) * 1e-6
    assert torch.equal(noisy, dpc_knn_select(x, 5, noise=draw, tie_break="strict"))


@pytest.mark.parametrize("kwargs,match", [
    (dict(keep=0), r"keep: expected an integer in \[1, N=9\], got 0"),
    (dict(keep=10), r"keep: expected an integer in \[1, N=9\], got 10"),
    (dict(keep=3, center=9), r"center: expected None or a token index in \[0, 9\)"),
    (dict(keep=3, tie_break="noise"), r"tie_break: expected one of"),
    (dict(keep=3, k=0), r"k: expected an integer"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dpc_knn_select(torch.randn(2, 9, 3), **kwargs)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"x: expected token features of shape \[B, N, C\], got \[9, 3\]"):
        dpc_knn_select(torch.randn(9, 3), 2)
    # Non-finite features are not an error in the forward (no host sync there; values are checked where data
    # enters): docs/tpc.md's rule — NaN distances are +inf, a NaN score ranks last, ties go to the lower index.
    x = torch.randn(1, 9, 3)
    x[0, 4, 1] = float("nan")
    got = dpc_knn_select(x, 8)
    assert torch.equal(got, torch.tensor([[0, 1, 2, 3, 5, 6, 7, 8]]))  # the NaN frame is the one left out
    assert torch.equal(dpc_knn_select(torch.full((1, 9, 3), float("nan")), 3), torch.tensor([[0, 1, 2]]))
    with pytest.raises(TypeError, match="floating-point"):
        dpc_knn_select(torch.ones(1, 9, 3, dtype=torch.int64), 2)


def test_published_rule_with_exact_distances_on_random_inputs():
    """The published computation (noise off, strict '>'), re-written with exact distances, ranks the same."""
    x = well_separated(3, 27, 16, seed=5, keep=9)
    B, N, C = x.shape
    dist = pairwise_distance(x)
    rho = (-(dist.topk(2, dim=-1, largest=False).values ** 2).mean(-1)).exp()
    mask = (rho[:, None, :] > rho[:, :, None]).double()
    dist_max = dist.flatten(1).max(-1).values[:, None, None]
    delta = (dist * mask + dist_max * (1 - mask)).min(-1).values
    index = (delta * rho).topk(9, dim=-1).indices.sort(-1).values
    assert torch.equal(dpc_knn_select(x, 9, tie_break="strict"), index)
