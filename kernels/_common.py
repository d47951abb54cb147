"""Small helpers shared by the Triton kernels.

* ``INTERPRETING``: True under ``TRITON_INTERPRET=1`` (CI). Kernels take it as a constexpr to upcast bf16/fp16
  tiles to fp32 right after ``tl.load`` (the interpreter computes bf16 arithmetic and bf16 ``tl.dot`` wrongly).
* Kernels do not use ``@triton.autotune``: each launcher picks its configuration with a small, documented
  heuristic over the shape, and lists every configuration it can pick in ``sm90_cases()`` so that CI compiles
  all of them for the H100 (see :mod:`pyengine.compile_check`). Deterministic choices also keep CUDA-graph
  capture free of autotuning runs.
"""
import dataclasses
import os
from typing import Any, Callable, Dict

import torch
import triton

INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") == "1"

# torch dtype -> Triton signature type (for the sm_90 compile cases)
SIG = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}

SHIPPED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def next_pow2(n: int, minimum: int = 1) -> int:
    return max(minimum, triton.next_power_of_2(int(n)))


def check_triton_device(*tensors, op: str) -> None:
    """Triton kernels run on CUDA tensors, or on CPU tensors under the interpreter; say so otherwise."""
    for t in tensors:
        if t is None:
            continue
        if t.device.type == "cuda":
            continue
        if t.device.type == "cpu" and INTERPRETING:
            continue
        from pyengine.backends import BackendUnavailableError
        raise BackendUnavailableError(
            f"{op}: the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), got a tensor on "
            f"{t.device}")


@dataclasses.dataclass
class KernelCase:
    """One compiled configuration of a Triton kernel: the signature (``{"x_ptr": "*fp16", "n": "i32",
    "BLOCK": "constexpr"}``), the constexpr values, the launch options, and the specialisation attributes
    (``{"x_ptr": [["tt.divisibility", 16]]}``, as a real launch on aligned arguments gets) plus any other
    compile options the launcher passes (``{"enable_fp_fusion": False}``)."""
    name: str
    fn: Callable
    signature: Dict[str, str]
    constexprs: Dict[str, Any]
    num_warps: int = 4
    num_stages: int = 3
    attrs: Dict[str, Any] = dataclasses.field(default_factory=dict)
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)
