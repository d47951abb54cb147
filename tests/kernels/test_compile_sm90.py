"""Every Triton kernel configuration a launcher can pick, every variant a real launch of a headline model
produces (recorded in pyengine/data/launch_variants.json, see pyengine/launch_record.py), and every CUDA source,
compiles for the H100 (sm_90) on this GPU-less machine with no register spills and shared memory within the
H100 limit.

The compiles run in one subprocess with ``TRITON_INTERPRET=0`` (this test process runs under the interpreter,
whose ``@triton.jit`` functions ``triton.compile`` cannot take); each case is then its own test."""
import os

import pytest

from pyengine.compile_check import (cuda_sources, glue_sources, kernel_modules, nvcc, recorded_cases,
                                     run_in_subprocess, syntax_check_glue, triton_cases)

RECORDED = {"triton:" + c.name: c for c in recorded_cases()}
NAMES = (["triton:" + c.name for c in triton_cases()] + list(RECORDED)
         + ["cuda:" + os.path.basename(p) for p in cuda_sources()])


@pytest.fixture(scope="module")
def results():
    if any(n.startswith("cuda:") for n in NAMES) and nvcc() is None:
        pytest.fail("nvcc is not installed: CUDA sources cannot be compile-checked (install the CUDA toolkit)")
    return run_in_subprocess()


@pytest.mark.parametrize("name", NAMES)
def test_compiles_for_sm90(results, name):
    r = results[name]
    assert r["error"] is None, f"{name}: {r['error']}"
    assert r["registers"] > 0, f"{name}: ptxas reported no register count (parse error?)"
    assert not r["problems"], f"{name}: {', '.join(r['problems'])} ({r})"
    if name in RECORDED:  # the recorded tt.divisibility attributes reached the compiled kernel
        assert r["divisible_args"] == len(RECORDED[name].attrs), f"{name}: {r}"


def test_recorded_variants_are_compiled():
    """Dozens of distinct real-launch variants (dtype x divisibility x constexprs), all with unique ids."""
    assert len(RECORDED) >= 50
    assert len(set(NAMES)) == len(NAMES)


def test_every_kernel_module_lists_its_configurations():
    """A Triton kernel module without sm90_cases() would escape the compile check."""
    missing = []
    for module in kernel_modules():
        jitted = [v for v in vars(module).values() if type(v).__name__ in ("JITFunction", "InterpretedFunction")]
        if jitted and not hasattr(module, "sm90_cases"):
            missing.append(module.__name__)
    assert not missing, f"kernel modules without sm90_cases(): {missing}"


GLUE = {os.path.basename(p): p for p in glue_sources()}


@pytest.mark.parametrize("name", sorted(GLUE))
def test_cuda_glue_compiles_with_the_cuda_path(name):
    """The torch-facing glue of each .cu kernel, with PYENGINE_WITH_CUDA (as setup.py builds it against a CUDA
    torch), compiles against the CPU wheel's headers: a wrong c10::cuda / ATen call fails here, not on a GPU box."""
    syntax_check_glue(GLUE[name])


def test_glue_check_sees_the_cuda_path():
    """The check compiles what sits under #ifdef PYENGINE_WITH_CUDA (an error planted there fails it) and every
    glue file guards its CUDA code with that macro."""
    assert GLUE, "no csrc/*_cuda_glue.cpp found"
    for path in GLUE.values():
        assert "#ifdef PYENGINE_WITH_CUDA" in open(path).read(), path
    planted = ("#ifdef PYENGINE_WITH_CUDA\n#include <c10/cuda/CUDAStream.h>\n"
               "void f() { auto s = c10::cuda::getCurrentCUDAStream(); s.no_such_member(); }\n#endif\n")
    with pytest.raises(RuntimeError, match="no_such_member"):
        syntax_check_glue(next(iter(GLUE.values())), extra_source=planted)
    syntax_check_glue(next(iter(GLUE.values())), extra_source=planted.replace(" s.no_such_member();", " (void)s;"))
