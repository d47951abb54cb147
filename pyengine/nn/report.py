"""``report()``: what runs where in a model — every fused part, the kernel each op runs on, and why (each reason
once). The metadata lives on the fused classes (``report_parts``: what each part does -> the ops it runs;
``report_glue``), the SUSA drop-ins included, so this module imports no model code: ``Fused.report`` and
``pyengine.report`` both call it."""
import dataclasses

import torch

from ..cpu_heap import heap_state
from ..cuda_graphs import graph_status


@dataclasses.dataclass
class ReportRow:
    module: str
    what: str
    kernels: str
    why: str


class Report(list):
    """``model.report()`` and ``pyengine.report(module)`` (the same type from both): one row per part of the model —
    the module, the kernel per op, what runs — then each distinct reason once (``why``). A list of ``ReportRow``
    that shows itself as the table (``str`` and ``repr``), so an interactive session prints text either way."""

    def __repr__(self):
        return self.__str__()

    def __str__(self):
        w = max([len(r.module) for r in self] + [6])
        k = max([len(r.kernels) for r in self] + [7])
        lines = [f"{'module':<{w}}  {'kernels':<{k}}  what"]
        lines += [f"{r.module:<{w}}  {r.kernels:<{k}}  {r.what}" for r in self]
        reasons = list(dict.fromkeys(part for r in self for part in r.why.split("\n") if part))
        if reasons:
            lines += ["", "why:"] + [f"  {reason}" for reason in reasons]
        return "\n".join(lines)


def _device_of(model):
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def report(model) -> Report:
    """What runs where, for a model returned by ``pyengine.load`` (or any module holding fused submodules)."""
    rows = Report()
    info = getattr(model, "pyengine", None)
    device = _device_of(model)
    # the model's compute dtype: auto's CPU GEMM is chosen per dtype (dispatch.cpu_gemm_choice)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    fused = [(n, m) for n, m in model.named_modules() if callable(getattr(m, "ops_for", None))]  # Fused modules
    if not fused:
        why = getattr(info, "backend_reason", None) or "no fused module: the eager reference runs"
        rows.append(ReportRow("(whole model)", type(model).__name__, "reference", f"reference: {why}"))
    kept = getattr(info, "fp32_modules", ())
    mixed = getattr(info, "fp32_bf16_gemms", False) and device.type == "cpu"  # kept fp32 parts' GEMMs in bf16
    for name, m in fused:
        in_kept = any(name == k or name.startswith(k + ".") for k in kept)
        gemm = torch.bfloat16 if mixed and in_kept else None
        choice = m.ops_for(torch.empty(0, device=device, dtype=dtype), gemm).choice
        own = [c for c in type(m).__mro__ if "report_parts" in c.__dict__ or "report_glue" in c.__dict__]
        for cls in own:
            for what, ops in cls.__dict__.get("report_parts", {}).items():
                kern = ", ".join(f"{op}={choice[op].impl}" for op in ops)
                why = "\n".join(f"{choice[op].impl}: {choice[op].describe()}" for op in ops)
                rows.append(ReportRow(name or "(model)", what, kern, why))
        glue = next((c.__dict__["report_glue"] for c in own if c.__dict__.get("report_glue")), None)
        if glue and not name:
            rows.append(ReportRow("(model)", "torch glue: " + glue, "torch", "torch: elementwise glue between fused "
                                                                              "launches"))
    if kept and all(p.dtype == torch.float32 for n in kept for p in model.get_submodule(n).parameters()):
        gemms = ", their GEMMs in bf16" if mixed else ""
        rows.append(ReportRow("(model)", f"precision: {', '.join(kept)} kept float32 in this {str(dtype)[6:]} "
                                         f"model{gemms}", "float32", f"float32: {info.fp32_why}"))
    if fused and device.type == "cpu" and heap_state() is not None:
        rows.append(ReportRow("(process)", "CPU heap between forwards", "malloc", f"malloc: {heap_state()}"))
    graphs = graph_status(model)
    if graphs is not None:
        rows.append(ReportRow("(model)", "latency mode: fixed-shape no-grad calls replay a CUDA graph",
                              "cuda-graph", f"cuda-graph: {graphs}"))
    return rows
