"""Which kernel runs each op, for a requested backend on a device — decided once, explicitly, and reported.

Backends of a whole model (``pyengine.load(..., backend=...)``):

* ``"triton"``: pyengine's Triton kernels for every op that has one (CUDA tensors; CPU tensors only under
  ``TRITON_INTERPRET=1``, which is how CI runs them); the SUSA units' depthwise 3x3 conv, which has none, runs on
  ATen's ``F.conv2d`` (cuDNN).
* ``"cuda"`` / ``"cpp"``: pyengine's hand-written CUDA / C++ kernels for the irregular ops that have them
  (DPC-kNN selection, SUSA, and on CPU the SUSA units' depthwise 3x3 conv), and ATen's own kernels (cuBLAS /
  oneDNN GEMMs, ``scaled_dot_product_attention``, ``layer_norm``, cuDNN's depthwise conv) for the dense ops, where
  a hand-written kernel of ours would not beat the vendor library.
  ``"cuda"`` needs CUDA tensors, ``"cpp"`` CPU tensors.
* ``"reference"``: the eager reference model itself.
* ``"auto"``: on CPU the ``"cpp"`` table, but for two measured choices: ``ln_linear``'s GEMM (ATen or oneDNN, once
  per dtype: :func:`cpu_gemm_choice`) and attention (C++ kernel, AMX kernel or SDPA, per call shape:
  :func:`cpu_attention_impl`);
  on CUDA the fastest implementation measured per op (see
  ``AUTO_CUDA``; entries not measured on a GPU yet are marked so in ``model.report()``).

An explicit backend that cannot run an op here raises ``BackendUnavailableError`` saying why; nothing falls back
silently, and ``model.report()`` lists the kernel of every op and why it was chosen.
"""
import dataclasses
import os

import torch
import torch.nn.functional as F

from .backends import BACKENDS, BackendUnavailableError, eager_inference, tracing
from .cpu_heap import keep_cpu_heap
# The op wrappers, imported once (each imports its Triton kernel module only when it launches one, so
# TRITON_INTERPRET may still be set after this import).
from .ops.attention import attention, attention_ref
from .ops.attention_amx import (DTYPE as AMX_DTYPE, MAX_HEAD_DIM as AMX_MAX_HEAD_DIM, amx_available, attention_amx,
                                attention_amx_out)
from .ops.dwconv3x3 import dwconv3x3_ref
from .ops.dwconv3x3 import run_prepared as dwconv3x3_prepared
from .ops.gather_tokens import gather_tokens
from .ops.group_layernorm import group_layernorm_runs
from .ops.layernorm import layernorm, layernorm_ref
from .ops.ln_linear import WeightCasts, ln_linear, ln_linear_aten, ln_linear_ref
from .ops.onednn_linear import (DTYPES as ONEDNN_DTYPES, PackedWeights, _time_once, onednn_available,
                                 onednn_bf16_missing, onednn_bf16_native, onednn_bf16_runs, onednn_linear_prepacked)
from .ops.susa import run_prepared as susa_prepared
from .ops.tpc_select import tpc_select

OPS = ("ln_linear", "layernorm", "attention", "tpc_select", "gather_tokens", "susa", "dwconv3x3")

# op -> backend -> implementation. "aten" / "sdpa" / "index" are torch's own kernels (see module docstring).
TABLE = {
    "triton": {"ln_linear": "triton", "layernorm": "triton", "attention": "triton", "tpc_select": "triton",
               "gather_tokens": "triton", "susa": "triton", "dwconv3x3": "aten"},
    "cuda": {"ln_linear": "aten", "layernorm": "aten", "attention": "sdpa", "tpc_select": "cuda",
             "gather_tokens": "index", "susa": "cuda", "dwconv3x3": "aten"},
    "cpp": {"ln_linear": "aten", "layernorm": "aten", "attention": "cpp", "tpc_select": "cpp",
            "gather_tokens": "index", "susa": "cpp", "dwconv3x3": "cpp"},
    "reference": {op: "reference" for op in OPS},
}
WHY = {
    "triton": "pyengine Triton kernel",
    "cuda": "pyengine CUDA kernel",
    "cpp": "pyengine C++ kernel (OpenMP)",
    "aten": "ATen (vendor GEMM; the LayerNorm prologue on pyengine's C++ kernel at CPU inference, else layer_norm): "
            "dense GEMMs, no hand-written kernel of ours is faster",
    "sdpa": "torch scaled_dot_product_attention: fused attention from ATen",
    "index": "ATen advanced indexing (a gather is bandwidth-bound; one kernel already)",
    "reference": "eager reference composition",
    "onednn": "oneDNN inner product (bias / GELU / residual fused in its epilogue; bf16 weights prepacked at "
              "inference where that measures faster) + pyengine's C++ LayerNorm (ATen layer_norm under autograd)",
    "fastest": "per call shape, the fastest of pyengine's C++ kernel, its AMX kernel (bf16, CPUs with AMX) and torch "
               "SDPA on this CPU, timed at the first call of each shape (interleaved, best of 3; a tie keeps SDPA) "
               "and cached for the process",
}
# Reasons that depend on the op as well as the implementation.
WHY_OP = {("dwconv3x3", "aten"): "ATen F.conv2d, depthwise (cuDNN on CUDA), with BatchNorm folded into it: no "
                                 "pyengine GPU kernel for it"}
# Per-op choice of "auto" on CUDA. No GPU measurements are recorded yet (benchmarks/results/ has none), so these
# are the design choice, labelled as such in report(); replace with measured winners when results exist.
AUTO_CUDA = {"ln_linear": "triton", "layernorm": "triton", "attention": "triton", "tpc_select": "triton",
             "gather_tokens": "triton", "susa": "triton", "dwconv3x3": "aten"}
AUTO_CUDA_MEASURED = False


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _device_type(device) -> str:
    return torch.device(device).type


def check_backend(backend: str, device) -> None:
    """Raise unless ``backend`` can run on ``device`` at all."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    dev = _device_type(device)
    if backend == "cpp" and dev != "cpu":
        raise BackendUnavailableError(f"backend='cpp' runs on CPU tensors; the model is on {device}")
    if backend == "cuda":
        if dev != "cuda":
            raise BackendUnavailableError(f"backend='cuda' runs on CUDA tensors; the model is on {device}")
        from .backends import cpp_extension
        if not hasattr(cpp_extension(), "tpc_select_cuda"):
            raise BackendUnavailableError(
                "backend='cuda': pyengine._C was built without CUDA kernels (a CPU-only torch at build time); "
                "rebuild with a CUDA torch: pip install --no-build-isolation -e .")
    if backend == "triton" and dev != "cuda" and not interpreting():
        raise BackendUnavailableError(
            f"backend='triton' needs CUDA tensors (the model is on {device}); on CPU, Triton kernels run only "
            "under the interpreter (TRITON_INTERPRET=1, set before importing pyengine), which is for testing")


@dataclasses.dataclass
class Choice:
    op: str
    impl: str
    why: str
    detail: object = None  # () -> str: what was measured so far, appended to `why` by report() (a live view)

    def describe(self) -> str:
        return self.why + (self.detail() if self.detail is not None else "")


def resolve(backend: str, device, dtype=None) -> dict:
    """``{op: Choice}`` for every op, for ``backend`` on ``device`` (``"auto"`` resolved here; on CPU its GEMM
    depends on the model's ``dtype``, default float32: :func:`cpu_gemm_choice`; a float64 model's CPU attention is
    SDPA, the C++ kernel being fp32 math)."""
    check_backend(backend, device)
    dev = _device_type(device)
    if backend == "auto":
        if dev == "cuda":
            tag = "measured fastest on CUDA" if AUTO_CUDA_MEASURED else "auto on CUDA (not yet GPU-measured)"
            return {op: Choice(op, impl, f"{why(op, impl)}; {tag}") for op, impl in AUTO_CUDA.items()}
        choice = {op: Choice(op, impl, f"{why(op, impl)}; auto on CPU") for op, impl in TABLE["cpp"].items()}
        choice["ln_linear"] = cpu_gemm_choice(torch.float32 if dtype is None else dtype)
        choice["attention"] = cpu_attention_choice()
    else:
        choice = {op: Choice(op, impl, why(op, impl)) for op, impl in TABLE[backend].items()}
    if dtype == torch.float64 and choice["attention"].impl in ("cpp", "fastest"):  # the C++ kernel: fp32 math
        choice["attention"] = Choice("attention", "sdpa", f"{WHY['sdpa']}; float64: pyengine's C++ attention "
                                                          "computes in fp32, so an fp64 model runs SDPA")
    return choice


# "auto"'s CPU GEMM, measured once per dtype and process: {dtype: Choice}. PYENGINE_CPU_GEMM=aten|onednn pins it
# (reproducible runs; the report says it was pinned).
_CPU_GEMM = {}
# The GEMMs of one pre-norm transformer block at the width of MHFormer / MixSTE (512), over a latency batch of
# tokens: one 512 x 512 GEMM alone was a near tie in bf16 that flipped between processes, while oneDNN's fused
# epilogues and prepacked weights win the block clearly (and the models with it).
CPU_GEMM_ROWS, CPU_GEMM_WIDTH = 2048, 512


def _time_gemm(fn, reps=5):
    fn()  # warm-up: oneDNN creates (and caches) its primitive on the first call
    return min(_time_once(fn) for _ in range(reps))


def _emulated_note(dtype) -> str:
    return ("; this CPU has no native bf16 dot products (no AVX-512 BF16 / AMX): bf16 GEMMs are emulated"
            if dtype == torch.bfloat16 and not onednn_bf16_native() else "")


def cpu_gemm_choice(dtype) -> Choice:
    """The GEMM ``auto`` runs ``ln_linear`` with on this CPU at ``dtype``: ``"onednn"`` where oneDNN's inner
    product is measurably faster than ATen's ``F.linear`` (MKL's sgemm in fp32: slow on AMD CPUs), else
    ``"aten"``. Measured once per dtype and process on one block's GEMMs (``CPU_GEMM_ROWS`` x ``CPU_GEMM_WIDTH``),
    each composed as ``ln_linear`` runs it, interleaved, best of 6."""
    if dtype in _CPU_GEMM:
        return _CPU_GEMM[dtype]
    pinned = os.environ.get("PYENGINE_CPU_GEMM")
    if pinned not in (None, "", "aten", "onednn"):
        raise ValueError(f"PYENGINE_CPU_GEMM: expected 'aten' or 'onednn' (or unset: measure), got {pinned!r}")
    if dtype not in ONEDNN_DTYPES or not onednn_available():
        reason = (f"oneDNN's inner product takes float32 / bfloat16, not {dtype}" if onednn_available()
                  else "this torch build has no (enabled) oneDNN")
        choice = Choice("ln_linear", "aten", f"{WHY['aten']}; auto on CPU ({reason})")
    elif dtype == torch.bfloat16 and not onednn_bf16_runs():
        if pinned == "onednn":
            raise BackendUnavailableError(f"PYENGINE_CPU_GEMM=onednn: oneDNN cannot run bfloat16 GEMMs here: "
                                          f"{onednn_bf16_missing()}; unset it or use float32")
        choice = Choice("ln_linear", "aten", f"{WHY['aten']}; auto on CPU ({onednn_bf16_missing()}; ATen's "
                        "bf16 GEMM runs, slowly: no bf16 dot products on this CPU)")
    elif pinned:
        choice = Choice("ln_linear", pinned, f"{WHY[pinned]}; auto on CPU, pinned by PYENGINE_CPU_GEMM={pinned}"
                        + _emulated_note(dtype))
    else:
        M, C = CPU_GEMM_ROWS, CPU_GEMM_WIDTH
        g = torch.Generator().manual_seed(0)

        def rand(*shape, scale=1.0):
            return (torch.randn(*shape, generator=g) * scale).to(dtype)

        # one pre-norm block's GEMMs as ln_linear runs them: QKV, fc1 + GELU, fc2 + residual (proj is like fc2)
        gemms = [(rand(M, k), rand(n, k, scale=k ** -0.5), rand(n), act, rand(M, n) if res else None)
                 for k, n, act, res in ((C, 3 * C, "none", False), (C, 2 * C, "gelu", False), (2 * C, C, "none", True))]
        packs = PackedWeights()  # what inference runs: in bf16, weights prepacked where that is faster

        def block(gemm):  # exactly as ln_linear runs them
            for a, w, b, act, r in gemms:
                ln_linear_aten(a, w[None], b[None], activation=act, residual=r, gemm=gemm, packs=packs)

        with torch.no_grad():
            t_aten, t_dnn = float("inf"), float("inf")
            for _ in range(2):  # interleaved, so machine noise hits both alike
                t_aten = min(t_aten, _time_gemm(lambda: block("aten"), reps=3))
                t_dnn = min(t_dnn, _time_gemm(lambda: block("onednn"), reps=3))
        flop = 2 * M * C * C * (3 + 2 + 2)
        # A tie keeps ATen, the reference's own kernel.
        impl = "onednn" if t_dnn < 0.95 * t_aten else "aten"
        choice = Choice("ln_linear", impl, f"{WHY[impl]}; auto on CPU, measured once: oneDNN "
                        f"{flop / t_dnn / 1e9:.0f} vs ATen F.linear {flop / t_aten / 1e9:.0f} GFLOP/s (a block's "
                        f"QKV, fc1 + GELU, fc2 + residual at {M} rows x {C}, {str(dtype).removeprefix('torch.')}, "
                        f"{torch.get_num_threads()} threads){_emulated_note(dtype)}")
    _CPU_GEMM[dtype] = choice
    return choice


# "auto"'s CPU attention, measured per call signature and process: {key: (impl, {kernel: ms})}.
# PYENGINE_CPU_ATTENTION=cpp|sdpa pins it (reproducible runs).
_CPU_ATTENTION = {}


def cpu_attention_choice() -> Choice:
    """``auto``'s attention on CPU: ``"fastest"`` (:func:`cpu_attention_impl`, per call shape), or the kernel
    ``PYENGINE_CPU_ATTENTION`` pins. No kernel wins everywhere: measured on an AMX Xeon, the AMX kernel is the
    fastest in bf16 at head dim 64, SDPA beats the C++ kernel in bf16 (its GEMMs run on AMX, the C++ kernel widens
    bf16 to fp32), the C++ kernel wins on small heads (MHFormer's MHG: 9 channels per head)."""
    pinned = os.environ.get("PYENGINE_CPU_ATTENTION")
    if pinned not in (None, "", "cpp", "sdpa"):
        raise ValueError(f"PYENGINE_CPU_ATTENTION: expected 'cpp' or 'sdpa' (or unset: measure), got {pinned!r}")
    if pinned:
        return Choice("attention", pinned, f"{WHY[pinned]}; auto on CPU, pinned by PYENGINE_CPU_ATTENTION={pinned}")
    amx = "" if amx_available() else " (no AMX kernel here: this CPU / build runs no AMX-BF16 tiles)"
    return Choice("attention", "fastest", f"{WHY['fastest']}; auto on CPU{amx}", detail=_attention_measured)


def _attention_measured() -> str:
    if not _CPU_ATTENTION:
        return "; nothing measured yet in this process"
    names = {"sdpa": "SDPA", "cpp": "cpp", "amx": "amx"}
    seen = [f"q {list(k[0])} {str(k[3]).removeprefix('torch.')}: {impl} ("
            + ", ".join(f"{names[n]} {ms:.2f} ms" for n, ms in times.items()) + ")"
            for k, (impl, times) in _CPU_ATTENTION.items()]
    return "; measured in this process: " + ", ".join(seen)


def _is_real(t) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor
    return t.device.type == "cpu" and not isinstance(t, FakeTensor)


def cpu_attention_kernels(q) -> dict:
    """The CPU attention kernels that can run q (and its k / v): ``{name: fn(q, k, v)}``. The AMX kernel takes
    bf16 with head dims up to its maximum, on CPUs with AMX."""
    kernels = {"sdpa": lambda q, k, v: sdpa_attention(q, k, v),
               "cpp": lambda q, k, v: attention(q, k, v, backend="cpp")}
    if q.dtype == AMX_DTYPE and q.shape[-1] <= AMX_MAX_HEAD_DIM and amx_available():
        kernels["amx"] = lambda q, k, v: attention_amx(q, k, v)
    return kernels


def cpu_attention_impl(q, k, v) -> str:
    """``"sdpa"``, ``"cpp"`` or ``"amx"`` for these CPU inputs: every kernel that can run them
    (:func:`cpu_attention_kernels`) timed at the first call of this (shapes, strides, dtype, threads) signature,
    cached for the process. While compiling, exporting or on fake tensors nothing can be timed: SDPA, torch's own
    op, is what gets traced."""
    if tracing() or not _is_real(q):
        return "sdpa"
    key = (tuple(q.shape), tuple(k.shape), (q.stride(), k.stride(), v.stride()), q.dtype, torch.get_num_threads())
    hit = _CPU_ATTENTION.get(key)
    if hit is None:
        kernels = cpu_attention_kernels(q)
        best = {name: float("inf") for name in kernels}
        with torch.no_grad():
            for _ in range(3):  # interleaved, so machine noise hits all alike; the first round also warms up
                for name, fn in kernels.items():
                    best[name] = min(best[name], _time_once(lambda: fn(q, k, v)))
        fastest = min(best, key=best.get)
        if best[fastest] >= 0.95 * best["sdpa"]:  # a tie keeps SDPA, torch's own kernel
            fastest = "sdpa"
        hit = _CPU_ATTENTION[key] = (fastest, {name: t * 1e3 for name, t in best.items()})
    return hit[0]


def why(op: str, impl: str) -> str:
    """Why implementation ``impl`` runs ``op`` (``WHY_OP`` where the reason depends on the op, else ``WHY``)."""
    return WHY_OP.get((op, impl), WHY[impl])


def sdpa_attention(q, k, v):
    """``softmax(q k^T * D^-0.5) v`` over ``[B, G, N, H, D]`` views with torch's fused SDPA; returns
    ``[B, Nq, G, H, D]`` contiguous (the layout of ``pyengine::attention``). q may have one group for all."""
    B, Gq, Nq, H, D = q.shape
    G = k.shape[1]

    def heads(t, g):  # [B, N, H, D] -> [B, H, N, D]: a strided view SDPA reads in place, no input copy
        return t[:, g].transpose(1, 2)

    if G == 1:
        out = F.scaled_dot_product_attention(heads(q, 0), heads(k, 0), heads(v, 0), scale=D ** -0.5)
        return out.transpose(1, 2).reshape(B, Nq, 1, H, D)
    if B == 1 and Gq == G:  # batch 1 (MixSTE's temporal attention: joints are the groups): G is the SDPA batch
        out = F.scaled_dot_product_attention(q[0].transpose(1, 2), k[0].transpose(1, 2), v[0].transpose(1, 2),
                                             scale=D ** -0.5)  # [G, H, Nq, D]
        return out.permute(2, 0, 1, 3).unsqueeze(0).contiguous()
    # One SDPA per group on strided views: merging B and G into one batch axis would copy q, k and v first
    # (measured 1.7x slower on MHFormer's grouped SHR attention, fp32); only the output is written once.
    out = q.new_empty(B, Nq, G, H, D)
    for g in range(G):
        o = F.scaled_dot_product_attention(heads(q, 0 if Gq == 1 else g), heads(k, g), heads(v, g), scale=D ** -0.5)
        out[:, :, g].copy_(o.transpose(1, 2))
    return out


class Ops:
    """The resolved kernels of one model on one device; modules call ops through this."""

    def __init__(self, backend: str, device, allow_tf32: bool = False, dtype=None, gemm_dtype=None):
        self.backend, self.device, self.allow_tf32 = backend, torch.device(device), allow_tf32
        self.choice = resolve(backend, device, dtype)
        # Mixed precision (a float32 part of a bf16 model: arch.ArchSpec.fp32_modules_bf16_gemms): its GEMMs run in
        # gemm_dtype, LayerNorm, residuals and everything else in dtype. Only the ATen / oneDNN GEMM path does this.
        self.gemm_dtype = None
        if gemm_dtype is not None and gemm_dtype != dtype and self.choice["ln_linear"].impl in ("aten", "onednn"):
            self.gemm_dtype = gemm_dtype
            if backend == "auto" and self.device.type == "cpu":
                self.choice["ln_linear"] = cpu_gemm_choice(gemm_dtype)
            c = self.choice["ln_linear"]
            self.choice["ln_linear"] = Choice(c.op, c.impl, f"{c.why}; mixed precision: GEMM operands rounded to "
                                              f"{str(gemm_dtype).removeprefix('torch.')} (weights cast once), "
                                              f"LayerNorm and residuals in {str(dtype).removeprefix('torch.')}",
                                              c.detail)
        self.weight_casts = WeightCasts()  # the weights in gemm_dtype (ops/ln_linear.py)
        if self.device.type == "cpu" and backend != "reference":
            keep_cpu_heap()  # activations reused between forwards, not page-faulted afresh (pyengine/cpu_heap.py)
        self.onednn_packs = PackedWeights()  # this module's prepacked bf16 weights (ops/onednn_linear.py)
        self.impl = {op: c.impl for op, c in self.choice.items()}
        self.block_plans = {}  # nn._common.block_forward's resolved GEMM operands per block (CPU inference)
        # ATen's resolved path only without mixed precision (ln_linear_aten's ATen mixed path has more branches)
        self.resolved_blocks = (self.device.type == "cpu" and group_layernorm_runs(torch.empty(0, dtype=dtype or
                                                                                              torch.float32))
                                and (self.impl["ln_linear"] == "onednn"
                                     or (self.impl["ln_linear"] == "aten" and self.gemm_dtype is None)))

    def gemm_operands(self, weight, bias, a):
        """``(weight, bias)`` as the oneDNN GEMM of the rows ``a`` takes them at inference (what ``ln_linear_aten``
        passes it): cast to a's dtype where they differ (once per weight version, mixed precision) and the weight
        prepacked where that measured faster (once)."""
        if weight.dtype != a.dtype:
            weight = self.weight_casts.get(weight, a.dtype)
            bias = None if bias is None else self.weight_casts.get(bias, a.dtype)
        if PackedWeights.usable(a, weight):
            weight = self.onednn_packs.get(weight, a, bias)
        return weight, bias

    def ln_linear(self, x, weight, bias=None, out=None, **kw):
        """``pyengine::ln_linear`` on this backend; ``out`` (inference only): the result written into it (any row
        stride; it may be the residual itself), in place on the ATen / oneDNN path, else a copy."""
        impl = self.impl["ln_linear"]
        if impl in ("aten", "onednn"):
            return ln_linear_aten(x, weight, bias, gemm=impl, packs=self.onednn_packs if impl == "onednn" else None,
                                  compute_dtype=self.gemm_dtype, casts=self.weight_casts, out=out, **kw)
        if impl == "reference":
            y = ln_linear_ref(x, weight, bias, **kw)
        else:
            y = ln_linear(x, weight, bias, allow_tf32=self.allow_tf32, backend=impl, **kw)
        return y if out is None else out.copy_(y)

    def ln_linear_groups(self, x, weight, bias=None, **kw):
        """:meth:`ln_linear`'s G group outputs ``[M, N]`` as a list, not concatenated (ATen / oneDNN: no concat is
        made; other kernels: views of their one output)."""
        impl = self.impl["ln_linear"]
        if impl in ("aten", "onednn"):
            return ln_linear_aten(x, weight, bias, gemm=impl, packs=self.onednn_packs if impl == "onednn" else None,
                                  split=True, compute_dtype=self.gemm_dtype, casts=self.weight_casts, **kw)
        return list(self.ln_linear(x, weight, bias, **kw).split(weight.shape[1], dim=1))

    def layernorm(self, x, weight, bias, **kw):
        impl = self.impl["layernorm"]
        if impl in ("aten", "reference"):
            return layernorm_ref(x, weight, bias, **kw)
        return layernorm(x, weight, bias, backend=impl, **kw)

    def attention(self, q, k, v, out=None):
        """``[B, Nq, G, H, D]``; with ``out`` (that shape, any strides, e.g. one group's slice of a bigger buffer)
        the result is written into it and ``out`` returned: in place by the AMX kernel at inference, else a copy."""
        impl = self.impl["attention"]
        if impl == "fastest":
            impl = cpu_attention_impl(q, k, v)
        if impl == "amx" and out is not None and eager_inference(q, k, v, out):
            return attention_amx_out(q, k, v, out)
        if impl == "sdpa":
            o = sdpa_attention(q, k, v)
        elif impl == "amx":
            o = attention_amx(q, k, v)
        elif impl == "reference":
            o = attention_ref(q, k, v)
        else:
            o = attention(q, k, v, allow_tf32=self.allow_tf32, backend=impl)
        return o if out is None else out.copy_(o)

    def tpc_select(self, x, keep, center=None, tie_break="index", noise=None):
        return tpc_select(x, keep, center=center, tie_break=tie_break, noise=noise, backend=self.impl["tpc_select"])

    def gather_tokens(self, x, index, add=None):
        impl = self.impl["gather_tokens"]
        if impl in ("index", "reference"):
            batch = torch.arange(x.shape[0], device=x.device).unsqueeze(-1)
            out = x[batch, index]
            return out if add is None else out + add
        return gather_tokens(x, index, add, backend=impl, check_values=False)  # no host sync in the forward

    def susa(self, x, params, h_wise, out=None, out_index=None):
        """``pyengine::susa`` on x with parameters from ``ops.susa.prepare_params`` (the SUSA drop-ins' path; with
        ``out`` / ``out_index``, result channel c goes to ``out[:, out_index[c]]``)."""
        return susa_prepared(x, params, h_wise, backend=self.impl["susa"], out=out, out_index=out_index)

    def dwconv3x3(self, x, weight, bias):
        """Depthwise 3x3 conv (stride 1, padding 1) with fp32 ``weight [C, 9]``, ``bias [C]`` (e.g. from
        ``ops.dwconv3x3.fold_batchnorm``): the C++ op, or ATen's ``F.conv2d`` ("aten"; cuDNN on CUDA)."""
        impl = self.impl["dwconv3x3"]
        if impl in ("aten", "reference"):
            return dwconv3x3_ref(x, weight, bias)
        return dwconv3x3_prepared(x, weight, bias, backend=impl)
