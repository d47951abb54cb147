"""Compile kernels for the H100 (sm_90) on a machine without a GPU, and check their resources.

CI runs this for every Triton kernel configuration the launchers can pick (each kernel module lists them in
``sm90_cases()``, compiled without divisibility facts), for every variant a real launch of a headline model
produces (``pyengine/data/launch_variants.json``, recorded by :mod:`pyengine.launch_record`: the exact
signature, constexprs, ``tt.divisibility`` attributes and options the JIT would compile on an H100), and for every
``csrc/*.cu`` file: a compile error, any register spill, or shared memory above the H100's per-block limit fails
the build. The interpreter is lenient (odd tile shapes, exact fp32 dots); the
real compiler is not, so this is the check that the kernels will build on the chip.
"""
import dataclasses
import glob
import os
import re
import shutil
import subprocess
import tempfile

from pyengine.kernels import kernel_modules  # noqa: F401 (re-exported for the tests)
from pyengine.kernels._common import KernelCase  # noqa: F401 (the kernels list their cases with it)

# Max dynamic shared memory per block on H100 (sm_90) with the opt-in attribute: 227 KiB.
H100_SHARED_LIMIT = 227 * 1024
H100_REG_LIMIT = 255


@dataclasses.dataclass
class Resources:
    name: str
    registers: int
    spill_bytes: int
    shared_bytes: int
    divisible_args: int = 0  # kernel arguments compiled with tt.divisibility = 16 (Triton only)

    def problems(self):
        out = []
        if self.spill_bytes:
            out.append(f"{self.spill_bytes} bytes of register spills")
        if self.shared_bytes > H100_SHARED_LIMIT:
            out.append(f"shared memory {self.shared_bytes} B > H100 limit {H100_SHARED_LIMIT} B")
        if self.registers > H100_REG_LIMIT:
            out.append(f"{self.registers} registers > {H100_REG_LIMIT}")
        return out


_PTXAS_USED = re.compile(r"Used (\d+) registers")
_PTXAS_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_SMEM = re.compile(r"(\d+) bytes smem")


def _ptxas():
    import triton
    bundled = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    return bundled if os.path.exists(bundled) else shutil.which("ptxas")


def _parse_ptxas(text: str):
    regs = max((int(m) for m in _PTXAS_USED.findall(text)), default=0)
    spills = sum(int(a) + int(b) for a, b in _PTXAS_SPILL.findall(text))
    smem = max((int(m) for m in _PTXAS_SMEM.findall(text)), default=0)
    return regs, spills, smem


def compile_triton_sm90(case: KernelCase) -> Resources:
    """Compile one Triton configuration to an sm_90 cubin; registers and spills from ``ptxas -v`` on its PTX,
    shared memory from Triton's metadata (dynamic shared memory is what Triton allocates)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    attrs = {(case.fn.arg_names.index(name),): value for name, value in case.attrs.items()}
    src = ASTSource(fn=case.fn, signature=case.signature, constexprs=case.constexprs, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                              options={**case.options, "num_warps": case.num_warps, "num_stages": case.num_stages})
    ptx = compiled.asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        arch = "sm_90a" if ".target sm_90a" in ptx else "sm_90"
        res = subprocess.run([_ptxas(), "-v", f"--gpu-name={arch}", path, "-o", os.path.join(tmp, "k.cubin")],
                             capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"ptxas failed on {case.name}:\n{res.stderr}")
    regs, spills, smem = _parse_ptxas(res.stderr + res.stdout)
    return Resources(case.name, regs, spills, max(smem, int(compiled.metadata.shared)),
                     _divisible_args(compiled.asm["ttir"]))


def _divisible_args(ttir: str) -> int:
    """How many arguments of the public kernel carry ``tt.divisibility = 16`` in the TTIR (the proof that the
    recorded attributes reached the compiler)."""
    start = ttir.find("tt.func public")
    head = ttir[start:ttir.find(") attributes", start)]
    return head.count("tt.divisibility = 16")


def nvcc():
    return shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)


def compile_cuda_sm90(path: str, include_dirs=()) -> Resources:
    """``nvcc -cubin -arch=sm_90`` on one ``.cu`` file (raw-pointer kernels, no torch headers); the worst
    kernel's registers / spills / static shared memory."""
    exe = nvcc()
    if exe is None:
        raise RuntimeError("nvcc not found: the CUDA sources cannot be compile-checked")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [exe, "-cubin", "-arch=sm_90", "-O3", "-std=c++17", "-Xptxas", "-v", "-Werror", "all-warnings",
               path, "-o", os.path.join(tmp, "k.cubin")]
        for d in include_dirs:
            cmd += ["-I", d]
        res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"nvcc failed on {path}:\n{res.stderr}")
    regs, spills, smem = _parse_ptxas(res.stderr + res.stdout)
    return Resources(os.path.basename(path), regs, spills, smem)


# ---------------------------------------------------------------------------------------------------------------
# The CUDA glue (csrc/*_cuda_glue.cpp, the torch-facing side of the .cu kernels) is compiled only by a CUDA torch,
# which CI does not have; `g++ -fsyntax-only` with the CUDA path enabled checks it against the CPU wheel's headers
# (which include c10/cuda and ATen/cuda) plus the CUDA toolkit's. The CPU wheel lacks the two headers CMake
# generates for a CUDA build; these stand-ins hold what a CUDA build's copies define (the glue needs only the
# first today; ATen/cuda/CUDAContext.h users would need the second).
# ---------------------------------------------------------------------------------------------------------------
GENERATED_CUDA_HEADERS = {
    "c10/cuda/impl/cuda_cmake_macros.h": "#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n",
    "ATen/cuda/CUDAConfig.h": ("#pragma once\n#define AT_CUDNN_ENABLED() 0\n#define AT_CUSPARSELT_ENABLED() 0\n"
                               "#define AT_HIPSPARSELT_ENABLED() 0\n#define AT_ROCM_ENABLED() 0\n"
                               "#define AT_MAGMA_ENABLED() 0\n#define NVCC_FLAGS_EXTRA \"\"\n"),
}
# The macros the glue files test: setup.py defines PYENGINE_WITH_CUDA when it builds the .cu kernels.
GLUE_DEFINES = ("PYENGINE_WITH_CUDA",)


def glue_sources(root=None):
    root = root or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
    return sorted(glob.glob(os.path.join(root, "**", "*_cuda_glue.cpp"), recursive=True))


def cuda_include_dirs():
    """The toolkit's include directories, as nvcc itself reports them (``nvcc --dryrun``; nvcc may be a
    wrapper script, so its path says nothing)."""
    exe = nvcc()
    if exe is None:
        raise RuntimeError("nvcc not found: the CUDA glue cannot be syntax-checked (install the CUDA toolkit)")
    res = subprocess.run([exe, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                         capture_output=True, text=True)
    dirs = [d for d in re.findall(r'-I"?([^"\s]+)', res.stderr + res.stdout)
            if os.path.exists(os.path.join(d, "cuda_runtime_api.h"))]
    if not dirs:
        raise RuntimeError(f"nvcc --dryrun named no include directory with cuda_runtime_api.h:\n{res.stderr}")
    return list(dict.fromkeys(dirs))


def syntax_check_glue(path: str, extra_source: str = None) -> None:
    """``g++ -std=c++17 -fsyntax-only -Wall -Wextra -Werror -DPYENGINE_WITH_CUDA`` on one glue file against the
    CPU torch wheel's headers, the generated-header stand-ins and the CUDA headers (all ``-isystem``: warnings
    count in the glue only). Raises ``RuntimeError`` with the compiler's output on any error or warning.
    ``extra_source``: compile this text instead of the file (tests plant errors with it)."""
    import sysconfig

    from torch.utils.cpp_extension import include_paths
    gxx = shutil.which("g++")
    if gxx is None:
        raise RuntimeError("g++ not found: the CUDA glue cannot be syntax-checked")
    with tempfile.TemporaryDirectory() as tmp:
        for rel, text in GENERATED_CUDA_HEADERS.items():
            os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
            with open(os.path.join(tmp, rel), "w") as f:
                f.write(text)
        src = path
        if extra_source is not None:
            src = os.path.join(tmp, os.path.basename(path))
            with open(src, "w") as f:
                f.write(extra_source)
        cmd = [gxx, "-std=c++17", "-fsyntax-only", "-Wall", "-Wextra", "-Werror", "-I", os.path.dirname(path)]
        cmd += [f"-D{m}" for m in GLUE_DEFINES]
        for d in [tmp, *include_paths(), *cuda_include_dirs(), sysconfig.get_paths()["include"]]:
            cmd += ["-isystem", d]
        res = subprocess.run(cmd + [src], capture_output=True, text=True)
    if res.returncode != 0 or res.stderr.strip():
        raise RuntimeError(f"g++ -fsyntax-only failed on {os.path.basename(path)}:\n{res.stderr[-6000:]}")


def triton_cases():
    """Every ``KernelCase`` listed by the kernel modules in ``pyengine.kernels`` (their ``sm90_cases()``)."""
    return [case for module in kernel_modules() if hasattr(module, "sm90_cases") for case in module.sm90_cases()]


def recorded_name(variant) -> str:
    """A stable test id for a recorded variant: kernel, a digest of the variant, and the first forward using it
    (``recorded:ln_linear_kernel-3f2a9c1e@mhformer-351/bf16/b2``)."""
    import hashlib
    import json
    short = variant["kernel"].split(":")[-1].lstrip("_")
    body = {k: v for k, v in variant.items() if k != "used_by"}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]
    return f"recorded:{short}-{digest}@{variant['used_by'][0]}"


def recorded_cases(path=None):
    """A ``KernelCase`` per variant recorded from real launches of the headline models (see
    :mod:`pyengine.launch_record`). Each kernel is resolved by ``module:function`` name."""
    import importlib

    from pyengine.launch_record import VARIANTS_PATH, decode_value, load_file
    cases = []
    for variant in load_file(path or VARIANTS_PATH)["variants"]:
        module_name, fn_name = variant["kernel"].split(":")
        fn = getattr(importlib.import_module(module_name), fn_name)
        opts = dict(variant["options"])
        cases.append(KernelCase(recorded_name(variant), fn, variant["signature"],
                                {k: decode_value(v) for k, v in variant["constexprs"].items()},
                                num_warps=opts.pop("num_warps"), num_stages=opts.pop("num_stages"),
                                attrs=variant["attrs"], options=opts))
    return cases


def cuda_sources(root=None):
    root = root or os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
    return sorted(glob.glob(os.path.join(root, "**", "*.cu"), recursive=True))


def check_all(json_out=None):
    """Compile every Triton case and CUDA source; ``{name: {"registers", "spill_bytes", "shared_bytes",
    "problems", "error"}}``. Must run with ``TRITON_INTERPRET=0`` (see ``main``)."""
    results = {}
    for case in triton_cases() + recorded_cases():
        try:
            res = compile_triton_sm90(case)
            results["triton:" + case.name] = {**dataclasses.asdict(res), "problems": res.problems(), "error": None}
        except Exception as exc:  # reported per case by the test
            results["triton:" + case.name] = {"error": f"{type(exc).__name__}: {exc}"}
    for path in cuda_sources():
        try:
            res = compile_cuda_sm90(path)
            results["cuda:" + os.path.basename(path)] = {**dataclasses.asdict(res), "problems": res.problems(),
                                                          "error": None}
        except Exception as exc:
            results["cuda:" + os.path.basename(path)] = {"error": f"{type(exc).__name__}: {exc}"}
    return results


def run_in_subprocess():
    """``check_all`` in a fresh interpreter with ``TRITON_INTERPRET=0``: under the interpreter (CI's test
    process), ``@triton.jit`` gives interpreted functions, which ``triton.compile`` cannot take."""
    import json
    import sys
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    res = subprocess.run([sys.executable, "-m", "pyengine.compile_check"], capture_output=True, text=True, env=env)
    if res.returncode != 0:
        raise RuntimeError(f"compile check subprocess failed:\n{res.stderr[-4000:]}")
    return json.loads(res.stdout)


def main():
    """``python -m pyengine.compile_check``: JSON of every kernel's sm_90 resources on stdout."""
    import json
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise SystemExit("run with TRITON_INTERPRET=0: the interpreter's kernels cannot be compiled")
    print(json.dumps(check_all(), indent=1))


if __name__ == "__main__":
    main()
