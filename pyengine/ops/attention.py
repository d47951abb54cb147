"""``pyengine::attention``: multi-head attention over grouped, strided q / k / v (the attention core of every model).

Per (b, g, h): ``out = softmax((q @ k^T) * D**-0.5) @ v`` with the scale multiplying the product (as published).
q ``[B, G, Nq, H, D]``, k / v ``[B, G, Nk, H, D]``, any strides with a unit last-dim stride (views into a fused
QKV projection; batch stride 0 for queries shared by every sample); the result is a new contiguous
``[B, Nq, G, H, D]`` tensor (= ``[B*Nq, G*H*D]``, ready for a grouped output projection) in q's dtype.

Implementations, chosen by ``backend``:

* ``"reference"``: :func:`attention_ref`, plain torch (the spec; differentiable by torch autograd).
* ``"triton"``: the flash-style kernel in :mod:`pyengine.kernels.attention`, through the registered op
  ``pyengine::attention`` (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``). Its backward recomputes
  the attention with :func:`attention_ref` under torch autograd (no fused backward kernel: the engine runs
  inference; training through the op is correct but costs the eager memory).
* ``"cpp"``: ``csrc/attention_cpu.cpp`` (OpenMP over (b, g, h) and query blocks, AVX-512 / AVX2 clones), through
  the registered op ``pyengine::attention_cpp``, for CPU tensors: float32 / bfloat16 / float16, fp32 math (one
  rounding to the input dtype at the end). Its backward recomputes with :func:`attention_ref` like the Triton op's.
"""
import torch

from ..backends import BackendUnavailableError, cpp_extension, device_guard, op_backend

BACKENDS = ("reference", "triton", "cpp")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The spec: q ``[B, G, Nq, H, D]``, k / v ``[B, G, Nk, H, D]`` -> ``[B, Nq, G, H, D]`` contiguous."""
    q, k, v = (t.transpose(2, 3) for t in (q, k, v))  # [B, G, H, N, D]
    scale = q.shape[-1] ** -0.5
    attn = (q @ k.transpose(-2, -1)) * scale
    out = attn.softmax(dim=-1) @ v  # [B, G, H, Nq, D]
    return out.permute(0, 3, 1, 2, 4).contiguous()


def check_attention_args(q, k, v) -> None:
    """Raise ``TypeError`` / ``ValueError`` naming the argument, the expected and the actual."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"attention: {name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != 5:
            raise ValueError(f"attention: {name}: expected a 5-d tensor [B, G, N, H, D], got shape {list(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"attention: {name}: expected a floating-point tensor, got {t.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"attention: {name}: expected dtype {q.dtype} (q's), got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"attention: {name}: expected device {q.device} (q's), got {t.device}")
    B, G, _, H, D = q.shape
    for name, t in (("k", k), ("v", v)):
        for axis, label, want in ((0, "B", B), (1, "G", G), (3, "H", H), (4, "D", D)):
            if t.shape[axis] != want:
                raise ValueError(f"attention: {name}: expected {label}={want} (q is {list(q.shape)} "
                                 f"[B, G, Nq, H, D]), got {list(t.shape)}")
    if v.shape[2] != k.shape[2]:
        raise ValueError(f"attention: v: expected Nk={k.shape[2]} keys (k is {list(k.shape)}), got {list(v.shape)}")
    if k.shape[2] == 0:
        raise ValueError(f"attention: k: expected at least one key (Nk >= 1), got {list(k.shape)}")


def check_unit_head_stride(q, k, v) -> None:
    """Both kernels read the head dim contiguously (any other strides)."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.shape[-1] > 1 and t.stride(-1) != 1:
            raise ValueError(f"attention: {name}: expected a unit stride on the last (head) dim, got strides "
                             f"{list(t.stride())}")


def _check_kernel_args(q, k, v) -> None:
    """What the Triton kernel additionally needs (a missing capability, not a wrong argument)."""
    if q.dtype not in DTYPES and not (q.dtype == torch.float64 and q.device.type == "cpu"):
        raise BackendUnavailableError(
            f"attention: backend='triton' takes float32 / float16 / bfloat16 (float64 only on CPU under the "
            f"interpreter), got q of dtype {q.dtype} on {q.device}; use backend='reference'")
    from ..kernels.attention import MAX_HEAD_DIM
    if q.shape[-1] > MAX_HEAD_DIM:
        raise BackendUnavailableError(f"attention: backend='triton' supports head dims up to {MAX_HEAD_DIM}, "
                                      f"got D={q.shape[-1]}; use backend='reference'")
    check_unit_head_stride(q, k, v)


@torch.library.custom_op("pyengine::attention", mutates_args=())
def attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allow_tf32: bool) -> torch.Tensor:
    """Raw op (Triton kernel): q ``[B, G, Nq, H, D]``, k / v ``[B, G, Nk, H, D]`` -> ``[B, Nq, G, H, D]``."""
    check_attention_args(q, k, v)
    _check_kernel_args(q, k, v)
    from ..kernels.attention import attention_fwd
    with device_guard(q):
        return attention_fwd(q, k, v, allow_tf32=allow_tf32)


@attention_op.register_fake
def _(q, k, v, allow_tf32):
    B, G, Nq, H, D = q.shape
    return q.new_empty((B, Nq, G, H, D))


def _setup_context(ctx, inputs, output):
    q, k, v, _ = inputs
    ctx.save_for_backward(q, k, v)


def _backward(ctx, grad_out):
    # Recompute through the eager reference (no fused backward kernel; see the module docstring).
    q, k, v = ctx.saved_tensors
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        out = attention_ref(*leaves)
        grads = torch.autograd.grad(out, leaves, grad_out)
    return grads[0], grads[1], grads[2], None


attention_op.register_autograd(_backward, setup_context=_setup_context)


def _cpp_extension():
    ext = cpp_extension()
    if not hasattr(ext, "attention_cpu"):
        raise BackendUnavailableError("attention: backend='cpp' needs pyengine._C with attention_cpu (this build "
                                      "predates csrc/attention_cpu.cpp); rebuild it with `pip install "
                                      "--no-build-isolation -e .`")
    return ext


def _check_cpp_args(q, k, v) -> None:
    """What the C++ kernel additionally needs (CPU tensors, a kernel dtype, unit head-dim strides)."""
    if q.device.type != "cpu":
        raise BackendUnavailableError(f"attention: backend='cpp' runs on CPU tensors, got q on {q.device}; "
                                      "use backend='triton' (or 'auto') on CUDA")
    if q.dtype not in DTYPES:
        raise BackendUnavailableError(f"attention: backend='cpp' takes float32 / float16 / bfloat16, got q of "
                                      f"dtype {q.dtype}; use backend='reference'")
    check_unit_head_stride(q, k, v)


@torch.library.custom_op("pyengine::attention_cpp", mutates_args=())
def attention_cpp_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Raw op (C++ kernel, CPU): q ``[B, G, Nq, H, D]``, k / v ``[B, G, Nk, H, D]`` -> ``[B, Nq, G, H, D]``."""
    check_attention_args(q, k, v)
    _check_cpp_args(q, k, v)
    return _cpp_extension().attention_cpu(q, k, v)


@attention_cpp_op.register_fake
def _(q, k, v):
    B, G, Nq, H, D = q.shape
    return q.new_empty((B, Nq, G, H, D))


def _setup_context_cpp(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward_cpp(ctx, grad_out):
    q, k, v = ctx.saved_tensors
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
        out = attention_ref(*leaves)
        return tuple(torch.autograd.grad(out, leaves, grad_out))


attention_cpp_op.register_autograd(_backward_cpp, setup_context=_setup_context_cpp)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, allow_tf32: bool = False,
              backend: str = "auto") -> torch.Tensor:
    """``softmax((q @ k^T) * D**-0.5) @ v`` per (batch, group, head); see the module docstring for layouts.

    ``allow_tf32`` lets fp32 inputs use TF32 tensor-core dots (the default is exact fp32, ``"ieee"``).
    ``backend``: ``"triton"``, ``"cpp"`` (CPU tensors), ``"reference"`` or ``"auto"`` (the default: Triton on CUDA
    or under the interpreter, else the reference; ``pyengine.backends.op_backend``); any other raises
    ``BackendUnavailableError``."""
    backend = op_backend("attention", backend, q)
    if backend not in BACKENDS:
        raise BackendUnavailableError(f"attention: backend={backend!r} is not available (available: {BACKENDS})")
    check_attention_args(q, k, v)
    if backend == "reference":
        return attention_ref(q, k, v)
    if backend == "cpp":
        _check_cpp_args(q, k, v)
        _cpp_extension()
        return attention_cpp_op(q, k, v)
    from ..kernels._common import check_triton_device
    check_triton_device(q, k, v, op="attention")
    _check_kernel_args(q, k, v)
    return attention_op(q, k, v, bool(allow_tf32))
