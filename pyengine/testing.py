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
