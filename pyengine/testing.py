"""Helpers for validation: deterministic random weights, relative error, fp64 reference copies."""
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
