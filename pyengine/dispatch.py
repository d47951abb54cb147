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
* ``"auto"``: on CPU the ``"cpp"`` table; on CUDA the fastest implementation measured per op (see
  ``AUTO_CUDA``; entries not measured on a GPU yet are marked so in ``model.report()``).

An explicit backend that cannot run an op here raises ``BackendUnavailableError`` saying why; nothing falls back
silently, and ``model.report()`` lists the kernel of every op and why it was chosen.
"""
import dataclasses
import os
import time

import torch
import torch.nn.functional as F

from .backends import BACKENDS, BackendUnavailableError
# The op wrappers, imported once (each imports its Triton kernel module only when it launches one, so
# TRITON_INTERPRET may still be set after this import).
from .ops.attention import attention, attention_ref
from .ops.dwconv3x3 import dwconv3x3_ref
from .ops.dwconv3x3 import run_prepared as dwconv3x3_prepared
from .ops.gather_tokens import gather_tokens
from .ops.layernorm import layernorm, layernorm_ref
from .ops.ln_linear import ln_linear, ln_linear_aten, ln_linear_ref
from .ops.onednn_linear import (DTYPES as ONEDNN_DTYPES, PackedWeights, onednn_available, onednn_bf16_native,
                                 onednn_linear_prepacked)
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
    "aten": "ATen (vendor GEMM + layer_norm): dense GEMMs, no hand-written kernel of ours is faster",
    "sdpa": "torch scaled_dot_product_attention: fused attention from ATen",
    "index": "ATen advanced indexing (a gather is bandwidth-bound; one kernel already)",
    "reference": "eager reference composition",
    "onednn": "oneDNN inner product (bias / GELU / residual fused in its epilogue; bf16 weights prepacked at "
              "inference) + ATen layer_norm",
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
    else:
        choice = {op: Choice(op, impl, why(op, impl)) for op, impl in TABLE[backend].items()}
    if dtype == torch.float64 and choice["attention"].impl == "cpp":  # the C++ kernel computes in fp32
        choice["attention"] = Choice("attention", "sdpa", f"{WHY['sdpa']}; float64: pyengine's C++ attention "
                                                          "computes in fp32, so an fp64 model runs SDPA")
    return choice


# "auto"'s CPU GEMM, measured once per dtype and process: {dtype: Choice}. PYENGINE_CPU_GEMM=aten|onednn pins it
# (reproducible runs; the report says it was pinned).
_CPU_GEMM = {}
CPU_GEMM_SHAPE = (2048, 512, 512)  # M, K, N: the width of MHFormer / MixSTE blocks, a latency batch of tokens


def _time_gemm(fn, reps=5):
    fn()  # warm-up: oneDNN creates (and caches) its primitive on the first call
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def _emulated_note(dtype) -> str:
    return ("; this CPU has no native bf16 dot products (no AVX-512 BF16 / AMX): bf16 GEMMs are emulated"
            if dtype == torch.bfloat16 and not onednn_bf16_native() else "")


def cpu_gemm_choice(dtype) -> Choice:
    """The GEMM ``auto`` runs ``ln_linear`` with on this CPU at ``dtype``: ``"onednn"`` where oneDNN's inner
    product is measurably faster than ATen's ``F.linear`` (MKL's sgemm in fp32: slow on AMD CPUs), else
    ``"aten"``. Measured once per dtype and process on a ``CPU_GEMM_SHAPE`` GEMM, interleaved, best of 5."""
    if dtype in _CPU_GEMM:
        return _CPU_GEMM[dtype]
    pinned = os.environ.get("PYENGINE_CPU_GEMM")
    if pinned not in (None, "", "aten", "onednn"):
        raise ValueError(f"PYENGINE_CPU_GEMM: expected 'aten' or 'onednn' (or unset: measure), got {pinned!r}")
    if dtype not in ONEDNN_DTYPES or not onednn_available():
        reason = (f"oneDNN's inner product takes float32 / bfloat16, not {dtype}" if onednn_available()
                  else "this torch build has no (enabled) oneDNN")
        choice = Choice("ln_linear", "aten", f"{WHY['aten']}; auto on CPU ({reason})")
    elif pinned:
        choice = Choice("ln_linear", pinned, f"{WHY[pinned]}; auto on CPU, pinned by PYENGINE_CPU_GEMM={pinned}"
                        + _emulated_note(dtype))
    else:
        M, K, N = CPU_GEMM_SHAPE
        g = torch.Generator().manual_seed(0)
        x = torch.randn(M, K, generator=g).to(dtype)
        w = (torch.randn(N, K, generator=g) * K ** -0.5).to(dtype)
        b = torch.randn(N, generator=g).to(dtype)
        packs = PackedWeights()  # what inference runs: prepacked weights in bf16 (fp32: the dense weight)
        with torch.no_grad():
            t_aten, t_dnn = float("inf"), float("inf")
            for _ in range(2):  # interleaved, so machine noise hits both alike
                t_aten = min(t_aten, _time_gemm(lambda: F.linear(x, w, b)))
                t_dnn = min(t_dnn, _time_gemm(lambda: onednn_linear_prepacked(x, w, b, "none", None, packs)))
        flop = 2 * M * K * N
        # A tie keeps ATen, the reference's own kernel. (In bf16, ATen's F.linear is itself a oneDNN matmul: the two
        # measure within a few percent, whole models too, and neither is consistently more accurate.)
        impl = "onednn" if t_dnn < 0.95 * t_aten else "aten"
        choice = Choice("ln_linear", impl, f"{WHY[impl]}; auto on CPU, measured once: oneDNN "
                        f"{flop / t_dnn / 1e9:.0f} vs ATen F.linear {flop / t_aten / 1e9:.0f} GFLOP/s "
                        f"({M}x{K} @ {K}x{N}, {str(dtype).removeprefix('torch.')}, {torch.get_num_threads()} "
                        f"threads){_emulated_note(dtype)}")
    _CPU_GEMM[dtype] = choice
    return choice


def why(op: str, impl: str) -> str:
    """Why implementation ``impl`` runs ``op`` (``WHY_OP`` where the reason depends on the op, else ``WHY``)."""
    return WHY_OP.get((op, impl), WHY[impl])


def sdpa_attention(q, k, v):
    """``softmax(q k^T * D^-0.5) v`` over ``[B, G, N, H, D]`` views with torch's fused SDPA; returns
    ``[B, Nq, G, H, D]`` contiguous (the layout of ``pyengine::attention``)."""
    B, G, Nq, H, D = q.shape
    Nk = k.shape[2]
    if G == 1:  # [B, N, H, D] -> [B, H, N, D] are strided views SDPA reads in place: no input copies
        out = F.scaled_dot_product_attention(q[:, 0].transpose(1, 2), k[:, 0].transpose(1, 2),
                                             v[:, 0].transpose(1, 2), scale=D ** -0.5)  # [B, H, Nq, D]
        return out.transpose(1, 2).reshape(B, Nq, 1, H, D)
    qh = q.permute(0, 1, 3, 2, 4).expand(B, G, H, Nq, D).reshape(B * G, H, Nq, D)
    kh = k.permute(0, 1, 3, 2, 4).reshape(B * G, H, Nk, D)
    vh = v.permute(0, 1, 3, 2, 4).reshape(B * G, H, Nk, D)
    out = F.scaled_dot_product_attention(qh, kh, vh, scale=D ** -0.5)  # [B*G, H, Nq, D]
    return out.view(B, G, H, Nq, D).permute(0, 3, 1, 2, 4).contiguous()


class Ops:
    """The resolved kernels of one model on one device; modules call ops through this."""

    def __init__(self, backend: str, device, allow_tf32: bool = False, dtype=None):
        self.backend, self.device, self.allow_tf32 = backend, torch.device(device), allow_tf32
        self.choice = resolve(backend, device, dtype)
        self.onednn_packs = PackedWeights()  # this module's prepacked bf16 weights (ops/onednn_linear.py)
        self.impl = {op: c.impl for op, c in self.choice.items()}

    def ln_linear(self, x, weight, bias=None, **kw):
        impl = self.impl["ln_linear"]
        if impl in ("aten", "onednn"):
            return ln_linear_aten(x, weight, bias, gemm=impl, packs=self.onednn_packs if impl == "onednn" else None,
                                  **kw)
        if impl == "reference":
            return ln_linear_ref(x, weight, bias, **kw)
        return ln_linear(x, weight, bias, allow_tf32=self.allow_tf32, backend=impl, **kw)

    def layernorm(self, x, weight, bias, **kw):
        impl = self.impl["layernorm"]
        if impl in ("aten", "reference"):
            return layernorm_ref(x, weight, bias, **kw)
        return layernorm(x, weight, bias, backend=impl, **kw)

    def attention(self, q, k, v):
        impl = self.impl["attention"]
        if impl == "sdpa":
            return sdpa_attention(q, k, v)
        if impl == "reference":
            return attention_ref(q, k, v)
        return attention(q, k, v, allow_tf32=self.allow_tf32, backend=impl)

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
