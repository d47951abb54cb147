"""pyengine::ln_linear vs its eager composition (F.layer_norm -> F.linear -> F.gelu -> add) at MHFormer shapes.

* ``eager``: the composition a user writes today (:func:`pyengine.ops.ln_linear.ln_linear_ref`);
* ``triton``: the fused kernel (``pyengine.ops.ln_linear.ln_linear``), CUDA only -- skipped with a reason
  elsewhere (under the interpreter it measures Python, not the kernel).

Shapes (F = 351, B = 8, so M = B*F = 2808 rows, C = 512, d_hid = 1024; MHG rows M = B*34, K = F):
SHR QKV (G=3, LN, K=C, N=3C), mixing-MLP fc1 (G=1, LN over 3C, N=1024, GELU), fc2 (+ residual), MHG qkv.
Run: ``.venv/bin/python -m pytest benchmarks/test_bench_ln_linear.py`` (CI: ``--benchmark-disable``)."""
import os

import pytest
import torch

from pyengine.ops.ln_linear import ln_linear, ln_linear_ref

B, F, C, HID = 8, 351, 512, 1024
M = B * F
SHAPES = {  # name: (M, K_x, G, N, K, ln, activation, residual)
    "shr_qkv": (M, 3 * C, 3, 3 * C, C, True, "none", False),
    "mlp_fc1": (M, 3 * C, 1, HID, 3 * C, True, "gelu", False),
    "mlp_fc2": (M, HID, 1, 3 * C, HID, False, "none", True),
    "mhg_qkv_f351": (B * 34, F, 1, 3 * F, F, True, "none", False),
}
ON_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if ON_CUDA else "cpu"
DTYPE = torch.float16 if ON_CUDA else torch.float32


def make_args(shape):
    m, kx, g, n, k, ln, act, res = SHAPES[shape]
    kw = dict(dtype=DTYPE, device=DEVICE)
    args = dict(x=torch.randn(m, kx, **kw), weight=torch.randn(g, n, k, **kw) / k ** 0.5,
                bias=0.1 * torch.randn(g, n, **kw), activation=act)
    if ln:
        args.update(ln_weight=1 + 0.1 * torch.randn(g, k, **kw), ln_bias=0.1 * torch.randn(g, k, **kw))
    if res:
        args["residual"] = torch.randn(m, g * n, **kw)
    return args


IMPLS = {
    "eager": lambda a: ln_linear_ref(**a),
    "triton": lambda a: ln_linear(**a, backend="triton"),
}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_ln_linear(benchmark, impl, shape):
    if impl == "triton" and not ON_CUDA:
        pytest.skip("the Triton kernel needs a CUDA GPU (under TRITON_INTERPRET=1 it would time the interpreter)")
    if impl == "triton" and os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("TRITON_INTERPRET=1 is set (conftest default): run with TRITON_INTERPRET=0 on a GPU machine")
    benchmark.group = f"ln_linear {shape} {DTYPE}"
    args = make_args(shape)
    fn = IMPLS[impl]

    def run():
        y = fn(args)
        if ON_CUDA:
            torch.cuda.synchronize()
        return y

    run()  # warm-up: compiles the kernel
    y = benchmark(run)
    m, _, g, n = SHAPES[shape][:4]
    assert y.shape == (m, g * n)
