"""Helpers for validation: deterministic random weights, relative error, the kernel-vs-eager error rule
(``assert_close``), well-separated TPC inputs, host-sync recording."""
import torch
from torch import nn


@torch.no_grad()
def randomize_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and floating buffer a non-trivial deterministic value (in place).

    Default inits leave LayerNorm at (1, 0), positional embeddings and BatchNorm statistics at zero/one,
    which hides bugs (a missing pos_embed add or a swapped norm would still match); this perturbs them all.
    """
    gen = torch.Generator().manual_seed(seed)

    def randn(t):
        return torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t)

    for name, t in module.state_dict().items():
        if not t.is_floating_point():
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "running_var":
            t.copy_(0.5 + torch.rand(t.shape, generator=gen, dtype=torch.float64).to(t))
        elif leaf == "group_weight" or (leaf == "weight" and t.dim() == 1):  # norm scales, SUSA stripe weights
            t.copy_(1.0 + 0.2 * randn(t))
        elif leaf in ("bias", "running_mean") or t.dim() <= 1:
            t.copy_(0.1 * randn(t))
        elif "pos_embed" in leaf or leaf == "x_token":
            t.copy_(0.5 * randn(t))
        else:  # weight matrices: keep the layer's fan-in scale so activations stay O(1)
            fan_in = t[0].numel()
            t.copy_(randn(t) / fan_in ** 0.5)
    return module


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``max|actual - expected| / max|expected|`` computed in fp64 (0 when both are zero)."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    if a.shape != e.shape:
        raise ValueError(f"rel_error: shapes differ: {list(a.shape)} vs {list(e.shape)}")
    scale = e.abs().max().item()
    diff = (a - e).abs().max().item() if a.numel() else 0.0
    return diff / scale if scale > 0 else diff


# The flash-attention rule (as flash-linear-attention's ``assert_close``): a kernel's relative error against the
# fp64 result may be at most ``factor`` (2) times the error of the same-precision eager composition, and is never
# held below ``factor * floor``: the bound is ``factor * max(eager_err, floor)``. Floors by dtype:
FLOOR = {torch.float32: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def error_bound(eager_err: float, dtype: torch.dtype = None, *, factor: float = 2.0, floor: float = None,
                margin: float = 0.0) -> float:
    """``factor * max(eager_err, floor) + margin``; ``floor`` defaults to ``FLOOR[dtype]``. (``max(2 e, f)`` is
    ``2 max(e, f / 2)`` exactly: a test written that way passes ``floor=f / 2``. ``margin`` is an additive slack,
    for a rule written ``2 e + f``: ``floor=0, margin=f``.)"""
    if floor is None:
        floor = FLOOR[dtype]
    return factor * max(eager_err, floor) + margin


def assert_close(name: str, actual: torch.Tensor, expected: torch.Tensor, eager, *, factor: float = 2.0,
                 floor: float = None, margin: float = 0.0, dtype: torch.dtype = None) -> float:
    """Assert ``rel_error(actual, expected) <= error_bound(eager error, ...)``: ``expected`` is the fp64 result,
    ``eager`` the same-precision eager output (a tensor, compared with ``expected``) or its error (a float).
    ``floor`` defaults to ``FLOOR[dtype]``, ``dtype`` to ``actual.dtype``. Returns the error."""
    err = rel_error(actual, expected)
    eager_err = eager if isinstance(eager, float) else rel_error(eager, expected)
    if floor is None:
        floor = FLOOR[dtype or actual.dtype]
    bound = error_bound(eager_err, factor=factor, floor=floor, margin=margin)
    assert err <= bound, (f"{name}: error {err:.3g} > bound {bound:.3g} (eager error {eager_err:.3g}; "
                          f"bound = {factor:g} * max(eager, floor {floor:.3g}) + {margin:.3g})")
    return err


def separated_features(B: int, N: int, C: int, keep: int, seed: int, dtype: torch.dtype = torch.float32, *,
                       min_gap: float = 1e-5, draw_dtype: torch.dtype = torch.float32,
                       gap_scale: str = "score") -> torch.Tensor:
    """Random features ``[B, N, C]`` (drawn in ``draw_dtype`` from ``seed``, returned in ``dtype``) whose fp64
    DPC-kNN scores around the selection boundary (ranks ``keep - 2 .. keep``, which covers a centre excluded from
    the ranking) differ by a margin, so that rounding cannot change which tokens are kept. Each gap must exceed
    ``min_gap`` times the higher score of its pair (``gap_scale="score"``) or the largest |score| of the batch
    (``"max"``). Redraws up to 200 times."""
    from pyengine.models.tpc import dpc_knn_scores

    if gap_scale not in ("score", "max"):
        raise ValueError(f"separated_features: gap_scale must be 'score' or 'max', got {gap_scale!r}")
    gen = torch.Generator().manual_seed(seed)
    lo, hi = max(0, keep - 2), min(N - 1, keep)
    for _ in range(200):
        x = torch.randn(B, N, C, generator=gen, dtype=draw_dtype).to(dtype)
        s = dpc_knn_scores(x.double())[0].sort(dim=-1, descending=True).values
        if lo >= hi:
            return x
        gaps = s[:, lo:hi] - s[:, lo + 1:hi + 1]
        if gap_scale == "max" and gaps.min() > min_gap * s.abs().max():
            return x
        if gap_scale == "score" and (gaps > min_gap * s[:, lo:hi].abs()).all():
            return x
    raise AssertionError("could not draw well-separated scores; adjust the test sizes")


def fused_qkv_views(buf: torch.Tensor, B: int, N: int, G: int, H: int, D: int, layout: str = "qkv-major"):
    """q, k, v ``[B, G, N, H, D]`` as strided views of one fused projection output ``buf [B*N, 3*G*H*D]``, the way
    the models produce them: columns ordered (qkv, group, head, dim) ("qkv-major") or (group, qkv, head, dim)."""
    if layout == "qkv-major":
        return buf.view(B, N, 3, G, H, D).permute(2, 0, 3, 1, 4, 5).unbind(0)
    if layout == "group-major":
        return buf.view(B, N, G, 3, H, D).permute(3, 0, 2, 1, 4, 5).unbind(0)
    raise ValueError(f"layout: expected 'qkv-major' or 'group-major', got {layout!r}")


def dispatched_ops(fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` under a dispatch mode; returns ``(result, names of the ops the mode saw)``
    (e.g. ``"pyengine.susa.default"``): how tests check which path a wrapper took."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Log(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    with Log() as log:
        result = fn(*args, **kwargs)
    return result, log.ops


# Tensor calls that wait for the device or read tensor values on the host: each one breaks CUDA-graph capture
# (and torch.export / ONNX tracing) when it runs in a model's forward. ``__bool__`` is every data-dependent
# Python ``if``; ``nonzero`` / ``unique`` / ``masked_select`` have data-dependent output shapes.
HOST_SYNC_CALLS = frozenset({
    "item", "tolist", "cpu", "numpy", "nonzero", "argwhere", "unique", "unique_consecutive", "masked_select",
    "equal", "allclose", "__bool__", "__int__", "__float__", "__index__", "__complex__", "_local_scalar_dense",
})


class HostSyncRecorder:
    """``with HostSyncRecorder() as rec: model(x)`` records every host-synchronising tensor call (see
    ``HOST_SYNC_CALLS``, plus ``.to(cpu)`` of a tensor on another device) as ``"name at file:line"``, the line
    being the first caller outside torch. Calls made by Triton's interpreter itself (it moves tensors to numpy
    to emulate a GPU) are not the model's and are ignored."""

    def __init__(self):
        import os
        import triton
        import torch.overrides

        self.calls = []
        recorder = self
        skip = (os.path.dirname(torch.__file__), os.path.dirname(triton.__file__))

        class _Mode(torch.overrides.TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                name = getattr(func, "__name__", str(func))
                if name == "__get__":  # property reads (shape, dtype, ...): never a sync
                    return func(*args, **kwargs)
                sync = name in HOST_SYNC_CALLS
                if name == "to" and args and isinstance(args[0], torch.Tensor) and args[0].device.type != "cpu":
                    target = next((a for a in list(args[1:]) + [kwargs.get("device")]
                                   if isinstance(a, (str, torch.device))), None)
                    sync = target is not None and torch.device(target).type == "cpu"
                if sync:
                    where = recorder._caller(skip)
                    if where is not None:
                        recorder.calls.append(f"{name} at {where}")
                return func(*args, **kwargs)

        self._mode = _Mode()

    @staticmethod
    def _caller(skip):
        import sys
        frame = sys._getframe(2)
        while frame is not None:
            path = frame.f_code.co_filename
            if path.startswith(skip[1]):  # inside Triton: the interpreter emulating a launch
                return None
            if not path.startswith(skip[0]) and path != __file__:
                return f"{path}:{frame.f_lineno}"
            frame = frame.f_back
        return "?"

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


CPU_KERNEL_WIDTHS = ("avx512", "avx2", "baseline")  # csrc/cpu_vec.h's KernelChoice sets, widest first


def same_bits_at_every_cpu_width(switch, run) -> list:
    """Assert that a C++ CPU kernel gives the same bits at every vector width this CPU runs. ``switch`` is the
    kernel's ``pyengine._C.*_kernels(use)`` entry point (``use=""`` names the width in use, a width name switches to
    it, raising ``RuntimeError`` "... does not run ..." where this CPU cannot); ``run()`` returns a tensor or a list
    of tensors. Checks that the width in use is the widest this CPU runs, compares every other width's results with
    it (``torch.equal``) and switches back; returns the widths compared, widest first."""
    start = switch("")
    widths = []
    try:
        for width in CPU_KERNEL_WIDTHS:
            try:
                switch(width)
            except RuntimeError as e:
                if "does not run" not in str(e):
                    raise
                continue
            widths.append(width)
        assert widths and widths[-1] == "baseline", f"the baseline kernels must run anywhere, got {widths}"
        assert start == widths[0], f"the kernel ran {start!r}, not the widest this CPU runs ({widths[0]!r})"
        want = None
        for width in widths:
            switch(width)
            got = run()
            got = list(got) if isinstance(got, (list, tuple)) else [got]
            if want is None:
                want = got
                continue
            for i, (g, w) in enumerate(zip(got, want)):
                assert torch.equal(g, w), f"result {i}: the {width} kernels differ from the {widths[0]} ones"
    finally:
        switch(start)
    return widths
