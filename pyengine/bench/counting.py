"""Counting FLOPs and compulsory bytes of one model call (docs/benchmarks.md, "Counting").

FLOPs follow SPEC.md §1: 2 x MACs of every linear layer (incl. 1x1 convs) and attention product, counted by
torch.utils.flop_counter on the eager model (checked against SPEC's numbers in tests/bench/test_bench.py). Bytes are the
compulsory traffic: weights + input + output, each read/written once; so GB/s is a lower bound on the DRAM
bandwidth a row used (the real traffic adds activations).
"""
import torch

from .cases import build_model, input_shape, make_inputs, model_class

LINEAR_OPS = ("aten.addmm", "aten.mm", "aten.convolution")


@torch.no_grad()
def count_flops(model, x):
    """``{"total", "linear", "attention"}`` FLOPs of one call ``model(x)`` (any batch, device, dtype)."""
    from torch.utils.flop_counter import FlopCounterMode

    # The module tracker inside FlopCounterMode trips over expanded parameters that require grad (HoT's x_token).
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in saved:
        p.requires_grad_(False)
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)
    per_op = {str(k): v for k, v in counter.get_flop_counts().get("Global", {}).items()}
    linear = sum(v for k, v in per_op.items() if k in LINEAR_OPS)
    total = counter.get_total_flops()
    return {"total": total, "linear": linear, "attention": total - linear}


def tensor_bytes(obj):
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(tensor_bytes(o) for o in obj)
    return 0


def count_bytes(model, x, out, dtype=None):
    """Compulsory bytes of one call: parameters and buffers (at ``dtype`` if given) + input + output."""
    weights = sum(t.numel() * (torch.empty((), dtype=dtype).element_size() if dtype and t.is_floating_point()
                               else t.element_size())
                  for t in (*model.parameters(), *model.buffers()))
    return weights + tensor_bytes(x) + tensor_bytes(out)


_FLOPS = {}


def model_flops(arch, config):
    """FLOPs of one window (batch 1) of ``arch(**config)``: counted on the meta device (no compute), or on CPU
    for the TPC models, whose token selection needs real values."""
    key = (arch, tuple(sorted(config.items())))
    if key not in _FLOPS:
        try:
            with torch.device("meta"):
                model = model_class(arch)(**config).eval()
                x = torch.empty(input_shape(model, 1))
            _FLOPS[key] = count_flops(model, x)
        except RuntimeError:  # data-dependent (Tensor.item) on meta tensors
            model = build_model(arch, config)
            _FLOPS[key] = count_flops(model, make_inputs(model, 1, torch.float32, "cpu", copies=1)[0])
    return _FLOPS[key]


def case_counts(arch, config, batch, dtype):
    """FLOPs (total, linear, attention) and compulsory bytes of one call at ``batch`` windows (FLOPs scale
    linearly with the batch; the weights are read once per call)."""
    flops = {k: v * batch for k, v in model_flops(arch, config).items()}
    model = build_model(arch, config)
    x = torch.empty(input_shape(model, batch), dtype=dtype, device="meta")
    out_frames = model.token_num if arch in ("tpc_mhformer", "tpc_mixste") else model.frames
    out = torch.empty(batch, out_frames, model.n_joints, 3, dtype=dtype, device="meta")
    return flops, count_bytes(model, x, out, dtype)
