"""The accuracy contract shared by ``pyengine verify``, ``load(..., validate=True)`` and ``pyengine.export``: the
tolerance rule and the eager twin every check compares against (one copy, below load / engine / verify)."""
import torch

from . import arch as archs

# A result's relative error against the fp64 reference may be EAGER_FACTOR times the error of the eager
# reference run at the same precision (flash-attention's rule), but never less than the dtype's floor.
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 1e-1, torch.float64: 1e-10}
EAGER_FACTOR = 2.0


def tolerance(dtype, eager_error, factor=None, floor=None):
    """``max(floor of dtype, factor x eager_error)``; ``factor`` / ``floor`` default to the module's values."""
    return max(TOLERANCE[dtype] if floor is None else floor, (EAGER_FACTOR if factor is None else factor) * eager_error)


def eager_twin(model, dtype=torch.float32, device=None):
    """The eager reference of a ``pyengine.load`` result: same architecture, configuration and weights, at
    ``dtype`` on ``device`` (default: the model's), in eval mode."""
    info = model.pyengine
    twin = archs.construct(info.arch, dict(info.config))
    twin.load_state_dict(model.state_dict())
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    return twin.to(device=device, dtype=dtype).eval()
