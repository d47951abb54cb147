"""``pyengine::gather_tokens``: gather the kept tokens after TPC pruning, with HoT's positional add fused.

``gather_tokens(x [B, F, R], index [B, keep], add=None) -> [B, keep, R]``::

    out[b, t, :] = x[b, index[b, t], :] + add[t, :]      (add repeated along the row when narrower)

* ``x`` may be any strided view with unit last stride: the three TPC-MHFormer hypotheses live side by side in
  one ``[B, F, 3C]`` buffer and are gathered in one launch; a MixSTE activation ``[B, F, J, C]`` is gathered as
  its ``[B, F, J*C]`` view.
* ``add [keep, A]`` (x's dtype, ``A`` divides ``R``): HoT-MixSTE's ``pos_embed_token [1, keep, C]`` passed as
  ``[keep, C]`` is added to each of the J joints, fused into the gather (no extra pass over the result).

Implementations (``backend``): ``"reference"`` (torch indexing, any device: the CPU implementation),
``"triton"`` (``kernels/gather_tokens.py``). The op has an autograd formula (scatter-add into ``x``, sum over
the batch and the repeats for ``add``), so it can be used in training.
"""
from typing import Optional

import torch

from ..backends import BackendUnavailableError, check_compiled_dtype, device_guard, op_backend

BACKENDS = ("reference", "triton")
GPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # the sm_90-compiled variants (kernels/gather_tokens.py)


def gather_tokens_ref(x, index, add=None):
    """The eager reference: advanced indexing, then the broadcast add."""
    B, _, R = x.shape
    out = x[torch.arange(B, device=x.device)[:, None], index]
    if add is not None:
        keep, A = add.shape
        out = (out.view(B, keep, R // A, A) + add[None, :, None, :]).view(B, keep, R)
    return out


@torch.library.custom_op("pyengine::gather_tokens", mutates_args=())
def gather_tokens_op(x: torch.Tensor, index: torch.Tensor, add: Optional[torch.Tensor], impl: str) -> torch.Tensor:
    """Raw op: arguments already validated by :func:`gather_tokens` (``index`` int64 contiguous in ``[0, F)``,
    ``add`` None or contiguous ``[keep, A]`` of x's dtype with ``R % A == 0``). Returns a new ``[B, keep, R]``."""
    if impl == "reference":
        return gather_tokens_ref(x, index, add)  # advanced indexing: a new tensor, never a view of x
    if impl == "triton":
        from ..kernels.gather_tokens import gather_tokens_triton  # imported late: triton reads TRITON_INTERPRET
        check_compiled_dtype(x, "pyengine::gather_tokens", GPU_DTYPES)
        with device_guard(x):
            return gather_tokens_triton(x, index, add)
    raise BackendUnavailableError(f"pyengine::gather_tokens: impl={impl!r} is not available (available: {BACKENDS})")


@gather_tokens_op.register_fake
def _(x, index, add, impl):
    return x.new_empty((x.shape[0], index.shape[1], x.shape[2]))


def _setup_context(ctx, inputs, output):
    x, index, add, _ = inputs
    ctx.x_shape = x.shape
    ctx.save_for_backward(index)
    ctx.add_shape = None if add is None else add.shape


def _backward(ctx, grad):
    (index,) = ctx.saved_tensors
    B, F, R = ctx.x_shape
    grad_x = grad_add = None
    if ctx.needs_input_grad[0]:
        grad_x = grad.new_zeros((B, F, R))
        grad_x.index_put_((torch.arange(B, device=grad.device)[:, None], index), grad, accumulate=True)
    if ctx.add_shape is not None and ctx.needs_input_grad[2]:
        keep, A = ctx.add_shape
        grad_add = grad.reshape(B, keep, R // A, A).sum(dim=(0, 2))
    return grad_x, None, grad_add, None


gather_tokens_op.register_autograd(_backward, setup_context=_setup_context)


def gather_tokens(x, index, add=None, *, backend="auto", check_values=True):
    """``[B, keep, R]`` rows of ``x [B, F, R]`` picked by ``index [B, keep]`` (int64, values in ``[0, F)``), plus
    ``add [keep, A]`` (``A`` dividing ``R``, repeated along the row) when given. See the module docstring.

    ``check_values=False`` skips the range check of ``index`` (it reads the values on the host, which CUDA-graph
    capture forbids): the fused models pass it for the indices they select themselves. An out-of-range index is
    then never read out of bounds: the Triton kernel masks it and writes NaN rows.

    ``backend``: ``"triton"``, ``"reference"`` or ``"auto"`` (the default: Triton on CUDA or under the interpreter,
    else the reference; ``pyengine.backends.op_backend``)."""
    backend = op_backend("gather_tokens", backend, x)
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        got = list(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x: expected tokens of shape [B, F, R], got {got}")
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
    B, F, R = x.shape
    if not isinstance(index, torch.Tensor) or index.dtype != torch.int64:
        got = index.dtype if isinstance(index, torch.Tensor) else type(index).__name__
        raise TypeError(f"index: expected an int64 tensor of shape [B={B}, keep], got {got}")
    if index.dim() != 2 or index.shape[0] != B:
        raise ValueError(f"index: expected shape [B={B}, keep], got {list(index.shape)}")
    if index.device != x.device:
        raise ValueError(f"index: expected a tensor on x's device {x.device}, got {index.device}")
    if check_values and index.numel() and (int(index.min()) < 0 or int(index.max()) >= F):
        raise ValueError(f"index: values must lie in [0, F={F}), got range [{int(index.min())}, {int(index.max())}]")
    keep = index.shape[1]
    if add is not None:
        if not isinstance(add, torch.Tensor):
            raise TypeError(f"add: expected None or a tensor [keep={keep}, A], got {type(add).__name__}")
        if add.dim() == 3 and add.shape[0] == 1:
            add = add[0]  # a [1, keep, A] embedding parameter
        if add.dim() != 2 or add.shape[0] != keep or add.shape[1] < 1 or R % add.shape[1]:
            raise ValueError(f"add: expected shape [keep={keep}, A] with A dividing R={R}, got {list(add.shape)}")
        if add.dtype != x.dtype or add.device != x.device:
            raise TypeError(f"add: expected {x.dtype} on {x.device} (x's), got {add.dtype} on {add.device}")
        add = add.contiguous()
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"gather_tokens: backend={backend!r} is not available "
                                      f"(available: {', '.join(repr(b) for b in BACKENDS)})")
    if backend == "triton":
        from ..kernels._common import check_triton_device
        check_triton_device(x, op="gather_tokens")
        if x.stride(2) != 1:
            x = x.contiguous()  # the kernel reads rows with unit stride
    return gather_tokens_op(x, index.contiguous(), add, backend)
