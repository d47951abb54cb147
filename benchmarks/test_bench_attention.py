"""``pyengine::attention`` vs the eager composition and ``torch.nn.functional.scaled_dot_product_attention``, at
the attention shapes of the models (docs/attention.md).

Every row reads q / k / v as strided views of one fused QKV projection output ``[B*N, 3*G*H*D]`` (how the models
produce them) and returns ``[B, Nq, G, H, D]`` contiguous (what the grouped output projection reads), so the
eager and SDPA rows include their layout copies. ``triton`` rows run only on CUDA (on CPU the kernel would run
in the Triton interpreter, which is not a timing) and are skipped with that reason elsewhere.

Sizes: "full" (the published batch: 64 windows) on CUDA with timing on, else "small" (batch 2, same sequence
lengths and head dims; CI runs the small tier with ``--benchmark-disable``).
Run: ``.venv/bin/python -m pytest benchmarks/test_bench_attention.py`` (``--benchmark-json=r.json`` for report.py)."""
import pytest
import torch
import torch.nn.functional as F

from common import DEVICE, DTYPE, size, time_rows
from pyengine.ops.attention import attention, attention_ref

# name -> (windows B, batch per window, G, Nq, Nk, H, D, queries shared by the batch)
SHAPES = {
    "mhformer-shr-351": (64, 1, 3, 351, 351, 8, 64, False),  # SHR: three hypotheses in one launch
    "mhformer-shr-117": (64, 1, 3, 117, 117, 8, 64, False),  # after TPC pruning
    "mhformer-chi-351": (64, 1, 1, 351, 351, 8, 64, False),  # one CHI cross-attention
    "mhg-34-d3": (64, 1, 1, 34, 34, 9, 3, False),  # MHG encoders: 34 tokens, head dim F / 9
    "mhg-34-d9": (64, 1, 1, 34, 34, 9, 9, False),
    "mhg-34-d27": (64, 1, 1, 34, 34, 9, 27, False),
    "mhg-34-d39": (64, 1, 1, 34, 34, 9, 39, False),
    "mixste-spatial": (64, 243, 1, 17, 17, 8, 64, False),  # 17 joints, batch B*F
    "mixste-temporal": (64, 17, 1, 243, 243, 8, 64, False),  # 243 frames, batch B*17
    "hot-tra": (64, 1, 17, 243, 81, 8, 64, True),  # 243 learned queries over 81 kept tokens, G = 17 joints
}
SMALL_WINDOWS = 2
IMPLS = ("eager", "sdpa", "triton")
DTYPES = (DTYPE, torch.float32) if DTYPE != torch.float32 else (torch.float32,)


def make_inputs(shape, dtype, windows, copies=3, seed=0):
    """``copies`` distinct (q, k, v) triples, each views into one fused qkv buffer (for the shared-query case, q
    is a learned ``[Nq, H*D]`` table expanded over batch and groups, strides 0, as HoT's TRA uses it)."""
    _, per, G, Nq, Nk, H, D, shared = shape
    B = windows * per
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(copies):
        if shared:
            kv = torch.randn(B * Nk, 2 * G * H * D, generator=gen).to(device=DEVICE, dtype=dtype)
            k, v = kv.view(B, Nk, 2, G, H, D).permute(2, 0, 3, 1, 4, 5).unbind(0)
            table = torch.randn(Nq, H * D, generator=gen).to(device=DEVICE, dtype=dtype)
            q = table.view(1, 1, Nq, H, D).expand(B, G, -1, -1, -1)
        else:
            assert Nq == Nk
            qkv = torch.randn(B * Nq, 3 * G * H * D, generator=gen).to(device=DEVICE, dtype=dtype)
            q, k, v = qkv.view(B, Nq, 3, G, H, D).permute(2, 0, 3, 1, 4, 5).unbind(0)
        out.append((q, k, v))
    return out


def sdpa(q, k, v):
    q, k, v = (t.transpose(2, 3) for t in (q, k, v))  # [B, G, H, N, D]
    return F.scaled_dot_product_attention(q, k, v).permute(0, 3, 1, 2, 4).contiguous()


def runner(impl, dtype):
    if impl == "eager":
        return attention_ref
    if impl == "sdpa":
        return sdpa
    if not str(DEVICE).startswith("cuda"):
        pytest.skip("triton: the kernel is timed only on CUDA (on CPU it runs in the Triton interpreter)")
    return lambda q, k, v: attention(q, k, v)


@pytest.mark.parametrize("dtype", DTYPES, ids=[str(d).removeprefix("torch.") for d in DTYPES])
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_attention(benchmark, shape, impl, dtype):
    fn = runner(impl, dtype)
    windows = SHAPES[shape][0] if size(benchmark) == "full" else SMALL_WINDOWS
    inputs = make_inputs(SHAPES[shape], dtype, windows)
    q, k, v = inputs[0]
    B, G, Nq, H, D = q.shape
    Nk = k.shape[2]
    n_in = q[:1, :1].numel() if SHAPES[shape][7] else q.numel()
    elem = q.element_size()
    extra = {"impl": impl, "variant": impl, "dtype": str(dtype).removeprefix("torch."), "windows": windows,
             "flops": 4 * B * G * H * Nq * Nk * D,  # q k^T and p v
             "bytes": elem * (n_in + 2 * k.numel() + q.numel())}
    out = time_rows(benchmark, fn, inputs, group=f"attention {shape} {extra['dtype']}", extra=extra)
    assert out.shape == (B, Nq, G, H, D) and out.dtype == dtype
