"""Token pruning cluster (DPC-kNN) selection: the eager reference (SPEC.md §2, "TPC").

``dpc_knn_select(x, keep)`` returns, per sample, the indices of the ``keep`` most representative tokens of
``x [B, N, C]``, sorted ascending (time order). It follows the published ``cluster_dpc_knn`` with two deliberate,
documented differences that make it deterministic:

* Distances are exact: ``D_ij = sqrt(sum_c (x_ic - x_jc)^2) / sqrt(C)``, summed in a fixed order so that
  ``D_ij == D_ji`` bit for bit and ``D_ii == 0``. The published code uses ``torch.cdist``, whose matmul shortcut
  (more than 25 points) gives a non-zero self-distance and lets rounding decide density ties.
* The published code adds ``uniform(0, 1) * 1e-6`` noise to the density, at inference too, because two tokens
  that are each other's nearest neighbour have exactly equal density. ``tie_break`` replaces it:
  ``"index"`` (default): j is denser than i when ``rho_j > rho_i`` or (``rho_j == rho_i`` and ``j < i``);
  ``"strict"``: only ``rho_j > rho_i`` (the published comparison with zero noise).
  ``noise`` re-enables the published noise: a float scale (``1e-6`` = published, random) or an explicit tensor
  ``[B, N]`` added to the density (to reproduce one draw; use ``tie_break="strict"`` for the published comparison).

Selection: ``score = delta * rho``; the ``keep`` highest scores win, equal scores go to the lower index.
With ``center=c`` (seq2frame models) token ``c`` is excluded from the ranking, ``keep - 1`` others are chosen,
and ``c`` is added back, so the result still has ``keep`` indices.
"""
import torch

TIE_BREAKS = ("index", "strict")


def pairwise_distance(x: torch.Tensor, chunk: int = 64) -> torch.Tensor:
    """Exact, symmetric Euclidean distances ``[B, N, N]`` divided by ``sqrt(C)`` (row chunks bound memory)."""
    B, N, C = x.shape
    rows = []
    for start in range(0, N, chunk):
        diff = x[:, start:start + chunk, None, :] - x[:, None, :, :]  # (a - b)^2 == (b - a)^2 exactly
        rows.append(diff.square().sum(-1).sqrt())
    return torch.cat(rows, dim=1) / (C ** 0.5)


def density_noise(noise, shape, dtype, device):
    """The tensor added to the density, or None. A float is the published ``uniform(0, 1) * scale`` draw; a
    tensor must have the density's shape ``[B, N]``."""
    if noise is None:
        return None
    if not isinstance(noise, torch.Tensor):
        return torch.rand(shape, device=device, dtype=dtype) * float(noise)
    if noise.shape != shape:
        raise ValueError(f"noise: expected a tensor of shape {list(shape)} (B, N), got {list(noise.shape)}")
    return noise.to(device=device, dtype=dtype)


def dpc_knn_scores(x, k=2, tie_break="index", noise=None):
    """Return ``(score, rho, delta, dist)`` of the DPC-kNN clustering, all for the features ``x [B, N, C]``."""
    B, N, _ = x.shape
    dist = pairwise_distance(x)
    # Non-finite features (docs/tpc.md): a NaN distance (a NaN feature, inf - inf) counts as infinitely far, and a
    # token stays at distance 0 from itself, so every comparison below is on numbers (as in the kernels).
    dist = torch.where(dist.isnan(), float("inf"), dist)
    eye = torch.eye(N, dtype=torch.bool, device=dist.device)
    dist = torch.where(eye, 0.0, dist)  # (functional, not an in-place diagonal write: exports to ONNX)
    # k smallest distances of each row, the token itself included (distance 0).
    nearest = dist.topk(k, dim=-1, largest=False).values
    rho = (-(nearest ** 2).mean(dim=-1)).exp()
    noise = density_noise(noise, rho.shape, rho.dtype, rho.device)
    if noise is not None:
        rho = rho + noise
    # denser[b, i, j]: token j counts as denser than token i.
    denser = rho[:, None, :] > rho[:, :, None]
    if tie_break == "index":
        idx = torch.arange(N, device=x.device)
        lower = idx[None, :] < idx[:, None]  # j < i
        denser = denser | ((rho[:, None, :] == rho[:, :, None]) & lower)
    dist_max = dist.flatten(1).max(dim=-1).values[:, None, None]  # largest distance in the whole sample
    delta = torch.where(denser, dist, dist_max).min(dim=-1).values
    return delta * rho, rho, delta, dist


def check_select_args(x, keep, k, center, tie_break):
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        shape = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected token features of shape [B, N, C], got {shape}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
    B, N, C = x.shape
    if N < 1 or C < 1:
        raise ValueError(f"x: expected at least one token and one channel, got shape {list(x.shape)}")
    if not isinstance(keep, int) or isinstance(keep, bool) or not 1 <= keep <= N:
        raise ValueError(f"keep: expected an integer in [1, N={N}], got {keep!r}")
    if not isinstance(k, int) or not 1 <= k <= N:
        raise ValueError(f"k: expected an integer in [1, N={N}], got {k!r}")
    if center is not None and (not isinstance(center, int) or not 0 <= center < N):
        raise ValueError(f"center: expected None or a token index in [0, {N}), got {center!r}")
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break: expected one of {TIE_BREAKS}, got {tie_break!r}")
    # No value check here: this runs inside the models' forward, where reading values on the host would break
    # CUDA-graph capture and export. NaN / Inf features have a defined selection (docs/tpc.md); inputs are
    # value-checked where they enter (pyengine.lift, Lifter, the file readers, the CLI).


@torch.no_grad()
def dpc_knn_select(x, keep, k=2, center=None, tie_break="index", noise=None):
    """Indices ``[B, keep]`` (int64, ascending) of the tokens DPC-kNN keeps. See the module docstring."""
    check_select_args(x, keep, k, center, tie_break)
    score, *_ = dpc_knn_scores(x, k=k, tie_break=tie_break, noise=noise)
    B, N = score.shape
    n_rank = keep if center is None else keep - 1
    # A NaN score (inf * 0: a token with non-finite features) ranks as -inf, below every number (docs/tpc.md).
    score = torch.where(score.isnan(), float("-inf"), score)
    # Rank by counting, as the kernels do (and what a stable sort on the negated score gives): token i's rank is
    # the number of tokens before it, i.e. with a higher score, or an equal one (-inf included) at a lower index.
    # The centre (seq2frame models) takes no part in the ranking and is added back. Elementwise ops, a sum, a
    # cumsum and a scatter only: no sort, so the selection exports to ONNX.
    idx = torch.arange(N, device=score.device)
    s_i, s_j = score[:, :, None], score[:, None, :]
    before = (s_j > s_i) | ((s_j == s_i) & (idx[None, :] < idx[:, None]))  # [B, i, j]: j ranks before i
    if center is not None:
        before = before & (idx != center)[None, None, :]
    kept = before.sum(dim=-1) < n_rank
    if center is not None:
        kept = (kept & (idx != center)) | (idx == center)
    # The kept indices in ascending order: kept token i goes to slot (kept tokens before it); others to a spare slot.
    slot = torch.where(kept, torch.cumsum(kept.long(), dim=-1) - 1, keep)
    out = torch.zeros(B, keep + 1, dtype=torch.long, device=score.device)
    return out.scatter(1, slot, idx.expand(B, N).contiguous())[:, :keep]


def check_tpc_config(token_num, frames, layer_index, first_block, last_block, tie_break, depth_name):
    """Constructor checks shared by the TPC / HoT models: pruning runs before block ``layer_index``."""
    if not 1 <= token_num <= frames:
        raise ValueError(f"token_num: expected 1 <= token_num <= frames={frames}, got {token_num}")
    if not first_block <= layer_index <= last_block:
        raise ValueError(f"layer_index: expected a block index in [{first_block}, {last_block}] ({depth_name}), "
                         f"got {layer_index}")
    if tie_break not in TIE_BREAKS:
        raise ValueError(f"tie_break: expected one of {TIE_BREAKS}, got {tie_break!r}")


def check_index(index, batch, keep, n_tokens, name="index", device=None):
    """Validate the metadata of an externally supplied selection ``[B, keep]`` of token indices (type, shape,
    device): the forward's check, which never reads values (no host sync). The values are checked by
    :func:`check_index_values` where an index enters from outside (an out-of-range index in the forward raises
    in torch's indexing on CPU, is a device-side assert with ATen on CUDA, and gathers NaN rows with Triton)."""
    if not isinstance(index, torch.Tensor) or index.dtype not in (torch.int64, torch.int32):
        got = index.dtype if isinstance(index, torch.Tensor) else type(index).__name__
        raise TypeError(f"{name}: expected an int64 tensor of shape [{batch}, {keep}], got {got}")
    if list(index.shape) != [batch, keep]:
        raise ValueError(f"{name}: expected shape [B={batch}, token_num={keep}], got {list(index.shape)}")
    if device is not None and index.device != torch.device(device):
        raise ValueError(f"{name}: expected a tensor on the model's device {device}, got {index.device}")


def check_index_values(index, n_tokens, name="index"):
    """The value check of a selection: every index in ``[0, n_tokens)`` (reads the values: a host sync)."""
    if index.numel() and (index.min() < 0 or index.max() >= n_tokens):
        raise ValueError(f"{name}: indices must lie in [0, {n_tokens}), got range "
                         f"[{int(index.min())}, {int(index.max())}]")
