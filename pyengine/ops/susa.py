"""``pyengine::susa`` / ``pyengine::susa_into``: fused H-wise and W-wise SUSA (SPEC.md §3) as registered ops.

One op serves both directions (``h_wise``). With rows r and stripe positions s (H-wise: r = h, s = w; W-wise:
r = w, s = h), per sample n and channel c:

    q[c, s]   = softmax_s(mean_w[c] * mean_r(x[c, r, s] * group_weight[r]) + mean_b[c])
    a[c, r]   = sum_s x[c, r, s] * q[c, s]
    gate[:, r]= sigmoid(LayerNorm_C(conv_w @ a[:, r] + conv_b))     (LN eps 1e-5; without LN: conv_w @ a + conv_b)
    out[out_index[c], h, w] = x[c, h, w] * gate[c, r]

``x`` may have any strides (NCHW, channels-last, or a channel slice of a larger tensor: a channel split costs
nothing), and ``out_index`` (int32 ``[C]``) says which channel of ``out`` each result channel goes to, so a concat
followed by a channel shuffle is only a different index table (see :func:`shuffle_index`). Every implementation
reads x twice (stripe pass, gating pass) and writes each output element once; all arithmetic is fp32.

* ``pyengine::susa`` (functional): returns ``[N, C, H, W]`` in x's memory format.
* ``pyengine::susa_into`` (mutates ``out``): writes into the given channels of an existing tensor.

A plain eager call of the wrappers runs the implementation without the custom-op dispatch (30-100 us per call,
as much as the kernel at X-HRNet's CPU sizes); compile, export, opcheck, modes and the profiler see the
registered ops (``pyengine/ops/_direct.py``).

Implementations (``impl``): ``"triton"`` (kernels/susa.py; CUDA tensors, or CPU under TRITON_INTERPRET=1),
``"cpp"`` (csrc/susa_cpu.cpp, OpenMP), ``"cuda"`` (csrc/susa_cuda.cu, when the extension was built with CUDA).
Inference only: there is no autograd formula.
"""
from typing import Optional

import torch

from ..backends import BackendUnavailableError, cpp_extension, device_guard, op_backend
from ._direct import direct_call_ok
from ._nchw import check_nchw, new_output

__all__ = ["susa", "susa_into", "susa_ref", "susa_op", "susa_into_op", "shuffle_index", "check_input",
           "prepare_params", "prepare", "run_prepared", "new_output"]

IMPLS = ("triton", "cpp", "cuda")
LN_EPS = 1e-5
# Stored lengths of the published group_weight vectors (SPEC.md §3): the largest H (H-wise) / W (W-wise).
MAX_H = 96
MAX_W = 72
MAX_PLANE = 96  # the other axis (W of H-wise, H of W-wise): the kernels' plane tile is at most 128 x 128


def shuffle_index(channels: int, groups: int, offset: int = 0, count: Optional[int] = None,
                  scale: int = 1, base: int = 0, device=None) -> torch.Tensor:
    """Output channels (int32) of concat positions ``offset .. offset + count - 1`` after a ShuffleNet channel
    shuffle of ``channels`` channels with ``groups`` groups (concat position k = i * (C/g) + j goes to j * g + i),
    mapped through ``base + scale * channel`` (to compose with an enclosing shuffle). ``groups=1``: no shuffle."""
    if channels % groups != 0:
        raise ValueError(f"shuffle_index: channels={channels} must be divisible by groups={groups}")
    count = channels - offset if count is None else count
    k = torch.arange(offset, offset + count, dtype=torch.int64)
    per_group = channels // groups
    out = (k % per_group) * groups + k // per_group
    index = (base + scale * out).to(torch.int32)
    return index if device is None else index.to(device)


def _run(x, group_weight, mean_w, mean_b, conv_w, conv_b, ln_w, ln_b, h_wise, out, out_index, impl):
    if impl == "triton":
        from pyengine.kernels import susa as tk
        with device_guard(x):
            tk.susa_into(x, group_weight, mean_w, mean_b, conv_w, conv_b, ln_w, ln_b, h_wise, out, out_index)
    elif impl == "cpp":
        cpp_extension().susa_cpu(x, group_weight, mean_w, mean_b, conv_w, conv_b, ln_w, ln_b, h_wise, out,
                                 out_index)
    elif impl == "cuda":
        ext = cpp_extension()
        if not hasattr(ext, "susa_cuda"):
            raise BackendUnavailableError("pyengine::susa: impl='cuda' needs pyengine._C built with CUDA (this "
                                          "torch has no CUDA, so the CUDA sources were not compiled)")
        with device_guard(x):
            ext.susa_cuda(x, group_weight, mean_w, mean_b, conv_w, conv_b, ln_w, ln_b, h_wise, out, out_index)
    else:
        raise BackendUnavailableError(f"pyengine::susa: impl={impl!r} is not available (available: {IMPLS})")


def _run_new(x, group_weight, mean_w, mean_b, conv_w, conv_b, ln_w, ln_b, h_wise, impl):
    """:func:`_run` into a new ``[N, C, H, W]`` tensor in x's memory format (the body of ``pyengine::susa``)."""
    out = new_output(x, x.shape[1])
    index = torch.arange(x.shape[1], dtype=torch.int32, device=x.device)
    _run(x, group_weight, mean_w, mean_b, conv_w, conv_b, ln_w, ln_b, h_wise, out, index, impl)
    return out


@torch.library.custom_op("pyengine::susa", mutates_args=())
def susa_op(x: torch.Tensor, group_weight: torch.Tensor, mean_w: torch.Tensor, mean_b: torch.Tensor,
            conv_w: torch.Tensor, conv_b: torch.Tensor, ln_w: Optional[torch.Tensor], ln_b: Optional[torch.Tensor],
            h_wise: bool, impl: str) -> torch.Tensor:
    """Raw op (arguments already validated by :func:`susa`): params fp32 contiguous, ``conv_w [C, C]``."""
    return _run_new(x, group_weight, mean_w, mean_b, conv_w, conv_b, ln_w, ln_b, h_wise, impl)


@susa_op.register_fake
def _(x, group_weight, mean_w, mean_b, conv_w, conv_b, ln_w, ln_b, h_wise, impl):
    return new_output(x, x.shape[1])


@torch.library.custom_op("pyengine::susa_into", mutates_args=("out",))
def susa_into_op(x: torch.Tensor, group_weight: torch.Tensor, mean_w: torch.Tensor, mean_b: torch.Tensor,
                 conv_w: torch.Tensor, conv_b: torch.Tensor, ln_w: Optional[torch.Tensor],
                 ln_b: Optional[torch.Tensor], h_wise: bool, out: torch.Tensor, out_index: torch.Tensor,
                 impl: str) -> None:
    """Raw op (arguments already validated by :func:`susa_into`): writes channel c's result to
    ``out[:, out_index[c]]``."""
    _run(x, group_weight, mean_w, mean_b, conv_w, conv_b, ln_w, ln_b, h_wise, out, out_index, impl)


@susa_into_op.register_fake
def _(x, group_weight, mean_w, mean_b, conv_w, conv_b, ln_w, ln_b, h_wise, out, out_index, impl):
    return None


# ---------------------------------------------------------------------------------------------------------------
# Eager reference and the validating public wrappers
# ---------------------------------------------------------------------------------------------------------------

def susa_ref(x, group_weight, mean_w, mean_b, conv_w, conv_b, ln_w=None, ln_b=None, h_wise=True):
    """Readable eager SUSA in x's dtype (the spec of the op; ``conv_w [C, C]``, the rest flat ``[C]`` / ``[L]``)."""
    n, c, h, w = x.shape
    xr = x if h_wise else x.transpose(2, 3)  # [N, C, R, S]
    r = xr.shape[2]
    g = group_weight.reshape(-1)[:r].to(x.dtype)
    q = (xr * g[:, None]).mean(2) * mean_w.reshape(-1, 1).to(x.dtype) + mean_b.reshape(-1, 1).to(x.dtype)
    q = q.softmax(-1)  # [N, C, S]
    a = torch.einsum("ncrs,ncs->ncr", xr, q)
    z = torch.einsum("dc,ncr->ndr", conv_w.reshape(c, c).to(x.dtype), a) + conv_b.reshape(1, c, 1).to(x.dtype)
    if ln_w is not None:
        z = torch.nn.functional.layer_norm(z.transpose(1, 2), (c,), ln_w.reshape(-1).to(x.dtype),
                                           ln_b.reshape(-1).to(x.dtype), LN_EPS).transpose(1, 2).sigmoid()
    gate = z[:, :, :, None] if h_wise else z[:, :, None, :]
    return x * gate


def _param(t, name, numel, shape_txt):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"susa: {name} must be a torch.Tensor {shape_txt}, got {type(t).__name__}")
    if t.numel() != numel:
        raise ValueError(f"susa: {name} must have {numel} elements {shape_txt}, got shape {list(t.shape)}")
    return t.detach().reshape(-1).float().contiguous() if t.dim() != 2 else t.detach().float().contiguous()


def check_input(x, group_weight, direction):
    """Validate ``x`` (and that ``group_weight`` covers its rows) for one call; returns ``h_wise``."""
    if direction not in ("h", "w"):
        raise ValueError(f"susa: direction must be 'h' (a gate per row) or 'w' (a gate per column), got {direction!r}")
    h_wise = direction == "h"
    check_nchw(x, "susa")
    h, w = x.shape[2:]
    if h_wise and h > MAX_H:
        raise ValueError(f"susa: x height H={h} exceeds the limit H <= {MAX_H} for H-wise SUSA (length of the "
                         f"stored group_weight)")
    if not h_wise and w > MAX_W:
        raise ValueError(f"susa: x width W={w} exceeds the limit W <= {MAX_W} for W-wise SUSA (length of the "
                         f"stored group_weight)")
    if h > MAX_PLANE or w > MAX_PLANE:
        raise ValueError(f"susa: x is {h}x{w} (H x W); the fused kernels hold one H x W plane in a tile and take "
                         f"H, W <= {MAX_PLANE}")
    r = h if h_wise else w
    if not isinstance(group_weight, torch.Tensor) or group_weight.numel() < r:
        got = list(group_weight.shape) if isinstance(group_weight, torch.Tensor) else type(group_weight).__name__
        raise ValueError(f"susa: group_weight must hold at least {'H' if h_wise else 'W'}={r} values, got {got}")
    return h_wise


def prepare_params(c, group_weight, mean_w, mean_b, conv_w, conv_b, ln_w, ln_b):
    """Validate the parameters of a SUSA over ``c`` channels and return them as the fused op takes them: fp32,
    contiguous, detached, ``conv_w [c, c]``, the rest flat. The drop-in modules cache this per parameter version."""
    if not isinstance(group_weight, torch.Tensor):
        raise TypeError(f"susa: group_weight must be a torch.Tensor, got {type(group_weight).__name__}")
    gw = group_weight.detach().reshape(-1).float().contiguous()
    mw = _param(mean_w, "mean_w", c, f"(the depthwise 1x1 conv weight, [{c}, 1, 1, 1])")
    mb = _param(mean_b, "mean_b", c, f"([{c}])")
    cw = _param(conv_w, "conv_w", c * c, f"(the 1x1 conv weight, [{c}, {c}, 1, 1])").reshape(c, c)
    cb = _param(conv_b, "conv_b", c, f"([{c}])")
    if (ln_w is None) != (ln_b is None):
        raise ValueError("susa: ln_w and ln_b must both be given (LayerNorm on) or both be None (LN off)")
    lw = None if ln_w is None else _param(ln_w, "ln_w", c, f"([{c}])")
    lb = None if ln_b is None else _param(ln_b, "ln_b", c, f"([{c}])")
    params = (gw, mw, mb, cw, cb, lw, lb)
    devices = {t.device for t in params if t is not None}
    if len(devices) > 1:
        raise ValueError(f"susa: the parameters are on several devices {sorted(map(str, devices))}")
    return params


def _check_param_device(params, x):
    if params[0].device != x.device:
        raise ValueError(f"susa: the parameters are on {params[0].device}, expected x's device {x.device}")


def prepare(x, group_weight, mean_w, mean_b, conv_w, conv_b, ln_w, ln_b, direction):
    """Validate x and the parameters (clear errors) and return ``(h_wise, params)``, params fp32 contiguous; the
    parameters' device is checked against x's by :func:`run_prepared`."""
    h_wise = check_input(x, group_weight, direction)
    return h_wise, prepare_params(x.shape[1], group_weight, mean_w, mean_b, conv_w, conv_b, ln_w, ln_b)


def run_prepared(x, params, h_wise, *, backend="auto", out=None, out_index=None):
    """The fused op on an x checked by :func:`check_input` and parameters from :func:`prepare_params` (the
    drop-in modules' per-call path, through ``pyengine.dispatch.Ops.susa``: their out / out_index are built
    internally and known to be valid). ``out=None``: returns a new tensor; otherwise writes channel c to
    ``out[:, out_index[c]]`` and returns out. :func:`new_output` allocates an ``out`` in x's memory format."""
    backend = op_backend("susa", backend, x)
    _check_param_device(params, x)
    _check_backend(backend, x)
    if backend == "reference":
        if out is None:
            return susa_ref(x, *params, h_wise=h_wise)
        out[:, out_index.long()] = susa_ref(x, *params, h_wise=h_wise).to(out.dtype)
        return out
    if not direct_call_ok(x):  # traced, exported, under a mode or the profiler: the registered ops
        if out is None:
            return susa_op(x, *params, h_wise, backend)
        susa_into_op(x, *params, h_wise, out, out_index, backend)
        return out
    # A plain eager call: the same implementation without the custom-op dispatch (pyengine/ops/_direct.py).
    if out is None:
        return _run_new(x, *params, h_wise, backend)
    torch.autograd.graph.increment_version(out)  # what the registered mutating op does for out
    _run(x, *params, h_wise, out, out_index, backend)
    return out


def _check_backend(backend, x):
    if backend not in ("reference",) + IMPLS:
        raise BackendUnavailableError(f"susa: backend={backend!r} is not available (available: 'reference', "
                                      f"{', '.join(repr(i) for i in IMPLS)})")
    if backend == "cpp" and x.device.type != "cpu":
        raise BackendUnavailableError(f"susa: backend='cpp' runs on CPU tensors, got x on {x.device}")
    if backend == "cuda" and x.device.type != "cuda":
        raise BackendUnavailableError(f"susa: backend='cuda' runs on CUDA tensors, got x on {x.device}")


def susa(x, group_weight, mean_w, mean_b, conv_w, conv_b, ln_w=None, ln_b=None, *, direction="h",
         backend="auto"):
    """Fused SUSA: ``direction="h"`` (H-wise, a gate per row) or ``"w"`` (W-wise, a gate per column);
    ``ln_w=ln_b=None`` is the LN-disabled variant. Returns ``[N, C, H, W]`` in x's dtype and memory format.
    ``backend``: "cpp", "triton", "cuda", "reference" or "auto" (the default: "cpp" on CPU, "triton" on CUDA;
    ``pyengine.backends.op_backend``)."""
    h_wise, p = prepare(x, group_weight, mean_w, mean_b, conv_w, conv_b, ln_w, ln_b, direction)
    return run_prepared(x, p, h_wise, backend=backend)


def susa_into(x, group_weight, mean_w, mean_b, conv_w, conv_b, ln_w=None, ln_b=None, *, out, out_index,
              direction="h", backend="auto"):
    """Like :func:`susa`, but writes result channel c into ``out[:, out_index[c]]`` (``out`` ``[N, C_out, H, W]``
    of x's dtype and device, any strides; ``out_index`` int32 ``[C]`` of distinct channels). Returns ``out``."""
    h_wise, p = prepare(x, group_weight, mean_w, mean_b, conv_w, conv_b, ln_w, ln_b, direction)
    backend = op_backend("susa", backend, x)
    _check_backend(backend, x)
    n, c, h, w = x.shape
    if not isinstance(out, torch.Tensor) or out.dim() != 4 or out.shape[0] != n or tuple(out.shape[2:]) != (h, w):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"susa_into: out must be [N={n}, C_out, H={h}, W={w}], got {got}")
    if out.dtype != x.dtype or out.device != x.device:
        raise ValueError(f"susa_into: out must have x's dtype {x.dtype} and device {x.device}, got {out.dtype} "
                         f"on {out.device}")
    if (not isinstance(out_index, torch.Tensor) or out_index.dtype != torch.int32 or out_index.shape != (c,)
            or out_index.device != x.device):
        got = (f"{out_index.dtype} {list(out_index.shape)} on {out_index.device}"
               if isinstance(out_index, torch.Tensor) else type(out_index).__name__)
        raise ValueError(f"susa_into: out_index must be an int32 tensor [{c}] on {x.device}, got {got}")
    # A value check (a host sync), on every device: susa_into is where an index enters from outside. Not while
    # tracing or capturing a CUDA graph; the drop-in modules build their indices and call run_prepared instead.
    capturing = out_index.is_cuda and torch.cuda.is_current_stream_capturing()
    if not torch.compiler.is_compiling() and not capturing:
        lo, hi = int(out_index.min()), int(out_index.max())
        if lo < 0 or hi >= out.shape[1]:
            raise ValueError(f"susa_into: out_index values must lie in [0, {out.shape[1]}) (out's channels), got "
                             f"[{lo}, {hi}]")
    return run_prepared(x, p, h_wise, backend=backend, out=out, out_index=out_index.contiguous())
