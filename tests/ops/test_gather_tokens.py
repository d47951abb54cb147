"""pyengine::gather_tokens (the kept-token gather after TPC, positional add fused): Triton (interpreter) and the
torch reference, against plain advanced indexing."""
import pytest
import torch

import pyengine
from pyengine.ops.gather_tokens import gather_tokens, gather_tokens_op
from pyengine.testing import rel_error


def eager(x, index, add=None):
    out = x[torch.arange(x.shape[0])[:, None], index]
    return out if add is None else out + add.repeat(1, x.shape[2] // add.shape[1])


def random_index(B, F, keep, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(F, generator=gen)[:keep].sort().values for _ in range(B)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_mhformer_hypotheses_in_one_buffer(dtype, backend):
    """TPC-MHFormer: the three hypotheses [B, F, C] side by side in one [B, F, 3C] buffer, gathered at once;
    also a single hypothesis as a strided view of that buffer."""
    B, F, C, keep = 2, 27, 40, 9
    buf = torch.randn(B, F, 3 * C).to(dtype)
    index = random_index(B, F, keep)
    got = gather_tokens(buf, index, backend=backend)
    assert got.dtype == dtype and got.shape == (B, keep, 3 * C) and got.is_contiguous()
    assert torch.equal(got, eager(buf, index))
    view = buf[:, :, C:2 * C]  # row stride 3C
    assert torch.equal(gather_tokens(view, index, backend=backend), eager(view, index))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_fused_positional_add(dtype, backend):
    """HoT-MixSTE: [B, F, J, C] gathered as [B, F, J*C] with pos_embed_token [keep, C] added to every joint
    (A = C divides R = J*C); and a full-width add [keep, R]. Eager rounds x + add once to the dtype: so does the
    kernel (fp32 add, one rounding), so the results are equal."""
    B, F, J, C, keep = 2, 30, 3, 16, 10
    x = torch.randn(B, F, J, C).to(dtype)
    index = random_index(B, F, keep, seed=1)
    pos = torch.randn(1, keep, C).to(dtype)
    got = gather_tokens(x.view(B, F, J * C), index, pos, backend=backend).view(B, keep, J, C)
    want = x[torch.arange(B)[:, None], index] + pos[:, :, None, :]
    assert torch.equal(got, want)
    full = torch.randn(keep, J * C).to(dtype)
    got = gather_tokens(x.view(B, F, J * C), index, full, backend=backend)
    assert torch.equal(got, eager(x.view(B, F, J * C), index, full))
    ref64 = eager(x.view(B, F, J * C).double(), index, full.double())
    assert rel_error(got, ref64) <= max(2 * rel_error(eager(x.view(B, F, J * C), index, full), ref64), 1e-7)


def test_wide_rows_and_repeated_indices():
    x = torch.randn(2, 7, 1300)  # two column blocks of 1024
    index = torch.tensor([[6, 6, 0], [3, 1, 3]])
    add = torch.randn(3, 1300)
    assert torch.equal(gather_tokens(x, index, add, backend="triton"), eager(x, index, add))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_bad_arguments(backend):
    x = torch.randn(2, 9, 8)
    index = torch.tensor([[0, 3], [1, 8]])
    with pytest.raises(ValueError, match=r"x: expected tokens of shape \[B, F, R\], got \[9, 8\]"):
        gather_tokens(x[0], index, backend=backend)
    with pytest.raises(TypeError, match=r"index: expected an int64 tensor .* got torch.int32"):
        gather_tokens(x, index.int(), backend=backend)
    with pytest.raises(ValueError, match=r"index: expected shape \[B=2, keep\], got \[1, 2\]"):
        gather_tokens(x, index[:1], backend=backend)
    with pytest.raises(ValueError, match=r"index: values must lie in \[0, F=9\), got range \[0, 9\]"):
        gather_tokens(x, index + torch.tensor([[0, 0], [0, 1]]), backend=backend)
    with pytest.raises(ValueError, match=r"index: values must lie .* got range \[-1, 8\]"):
        gather_tokens(x, index - torch.tensor([[1, 0], [0, 0]]), backend=backend)
    with pytest.raises(ValueError, match=r"add: expected shape \[keep=2, A\] with A dividing R=8, got \[2, 3\]"):
        gather_tokens(x, index, torch.randn(2, 3), backend=backend)
    with pytest.raises(TypeError, match=r"add: expected torch.float32 .* got torch.float64"):
        gather_tokens(x, index, torch.randn(2, 8, dtype=torch.float64), backend=backend)


def test_unavailable_backend():
    with pytest.raises(pyengine.BackendUnavailableError, match=r"backend='cuda' is not available"):
        gather_tokens(torch.randn(1, 3, 4), torch.zeros(1, 1, dtype=torch.int64), backend="cuda")


def test_gradients():
    x = torch.randn(2, 9, 8, dtype=torch.float64, requires_grad=True)
    add = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    index = torch.tensor([[0, 4, 4], [8, 2, 1]])
    torch.autograd.gradcheck(lambda x, a: gather_tokens_op(x, index, a, "reference"), (x, add))


def test_opcheck():
    x = torch.randn(2, 9, 24)
    index = torch.tensor([[0, 4, 8], [1, 2, 3]])
    for impl in ("reference", "triton"):
        torch.library.opcheck(gather_tokens_op, (x, index, torch.randn(3, 8), impl))
        torch.library.opcheck(gather_tokens_op, (x[:, :, 8:16], index, None, impl))


def test_torch_compile_and_export():
    x = torch.randn(2, 9, 24)
    index = torch.tensor([[0, 4, 8], [1, 2, 3]])
    add = torch.randn(3, 8)

    def f(x, index):
        return gather_tokens_op(x, index, add, "triton")

    want = eager(x, index, add)
    assert torch.equal(torch.compile(f, fullgraph=True, backend="aot_eager")(x, index), want)

    class Gather(torch.nn.Module):
        def forward(self, x, index):
            return f(x, index)

    assert torch.equal(torch.export.export(Gather(), (x, index)).module()(x, index), want)


@pytest.mark.gpu
def test_triton_on_gpu():
    buf = torch.randn(4, 351, 3 * 512, device="cuda", dtype=torch.bfloat16)
    index = random_index(4, 351, 117).cuda()
    pos = torch.randn(117, 512, device="cuda", dtype=torch.bfloat16)
    got = gather_tokens(buf, index, pos, backend="triton")
    assert torch.equal(got, gather_tokens(buf, index, pos, backend="reference"))
