"""Build the csrc/*.cu kernels against the CUDA-on-CPU emulator (cuda_emu.h) and call them from Python.

``build(variant)`` rewrites each ``.cu`` (rewrite.py), compiles it with g++ -std=c++20 together with the emulated
glue (emu_kernels.cpp), the emulator's self-test kernels (selftest.cu) and, for the sanitizer variants, the
standalone driver (sanitize_main.cpp). The result is cached in ``$TMPDIR/pyengine-cuda-emu/<variant>-<hash>``,
keyed by the sources, the flags and the compiler, so a test session builds each variant once.

* ``"plain"``: a shared library, loaded with ctypes (:class:`Emulated`);
* ``"tsan"`` / ``"asan"``: an executable built with ``-fsanitize=thread`` / ``-fsanitize=address,undefined``
  (sanitizer runtimes cannot be loaded into a running Python, hence a separate program).
"""
import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CU_SOURCES = [os.path.join(ROOT, "csrc", "tpc_select_cuda.cu"), os.path.join(ROOT, "csrc", "susa_cuda.cu"),
              os.path.join(HERE, "selftest.cu")]
CPP_SOURCES = [os.path.join(HERE, "emu_kernels.cpp")]
HEADERS = [os.path.join(HERE, "cuda_emu.h"), os.path.join(HERE, "rewrite.py")] + [
    os.path.join(HERE, "include", h) for h in sorted(os.listdir(os.path.join(HERE, "include")))]
DRIVER = os.path.join(HERE, "sanitize_main.cpp")

CXX = os.environ.get("CXX", "g++")
BASE_FLAGS = ["-std=c++20", "-ffp-contract=off", "-pthread", "-fPIC", "-Wall", "-Wno-unknown-pragmas",
              "-I", os.path.join(HERE, "include"), "-I", HERE]
VARIANT_FLAGS = {
    "plain": ["-O2"],
    "tsan": ["-O1", "-g1", "-fsanitize=thread"],  # -g1: line tables for the reports, faster to build than -g
    "asan": ["-O1", "-g1", "-fno-omit-frame-pointer", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"],
}
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


class BuildError(RuntimeError):
    pass


def cxx20_available():
    """``(ok, why)``: whether the compiler takes -std=c++20 with the <semaphore> header the emulator needs."""
    if shutil.which(CXX) is None:
        return False, f"{CXX} not found"
    probe = ("#include <semaphore>\n#if __cplusplus < 202002L || !defined(__cpp_lib_semaphore)\n#error no C++20\n"
             "#endif\nint main() { std::counting_semaphore<> s(0); s.release(); return 0; }\n")
    res = subprocess.run([CXX, "-std=c++20", "-x", "c++", "-fsyntax-only", "-"], input=probe, capture_output=True,
                         text=True)
    return res.returncode == 0, res.stderr.strip()[-300:] or f"{CXX} -std=c++20 rejects a <semaphore> probe"


def _key(variant):
    h = hashlib.sha256()
    for path in CU_SOURCES + CPP_SOURCES + HEADERS + [DRIVER]:
        with open(path, "rb") as f:
            h.update(path.encode() + b"\0" + f.read())
    h.update(" ".join([CXX] + BASE_FLAGS + VARIANT_FLAGS[variant]).encode())
    h.update(subprocess.run([CXX, "--version"], capture_output=True, text=True).stdout.encode())
    return h.hexdigest()[:16]


def build(variant="plain", extra_sources=None):
    """Path of the built library (plain) or executable (tsan / asan); builds it if not cached.

    ``extra_sources`` ({name: text}) replaces .cu sources by name (basename) with the given text, e.g. a mutated
    kernel; such builds are not cached."""
    flags = BASE_FLAGS + VARIANT_FLAGS[variant]
    cache = os.path.join(tempfile.gettempdir(), "pyengine-cuda-emu")
    target_name = "libcudaemu.so" if variant == "plain" else "emu_sanitize"
    final = None
    if not extra_sources:
        final = os.path.join(cache, f"{variant}-{_key(variant)}")
        if os.path.exists(os.path.join(final, target_name)):
            return os.path.join(final, target_name)
    os.makedirs(cache, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f"{variant}-build-", dir=cache)
    sys.path.insert(0, HERE)
    try:
        import rewrite
    finally:
        sys.path.pop(0)
    jobs = []
    objects = []
    for src in CU_SOURCES:
        name = os.path.basename(src)
        text = (extra_sources or {}).get(name)
        if text is None:
            with open(src) as f:
                text = f.read()
        out_cpp = os.path.join(work, name.replace(".cu", ".emu.cpp"))
        try:
            rewritten = rewrite.rewrite(text, src)
        except ValueError as exc:
            raise BuildError(f"rewrite of {src} failed: {exc}") from None
        with open(out_cpp, "w") as f:
            f.write(rewritten)
        jobs.append(out_cpp)
    jobs += CPP_SOURCES + ([DRIVER] if variant != "plain" else [])
    procs = []
    for src in jobs:
        obj = os.path.join(work, os.path.basename(src) + ".o")
        objects.append(obj)
        procs.append((src, subprocess.Popen([CXX, *flags, "-c", src, "-o", obj], stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True)))
    errors = []
    for src, p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            errors.append(f"{src}:\n{out[-6000:]}")
    if errors:
        raise BuildError("emulated CUDA build failed:\n" + "\n".join(errors))
    target = os.path.join(work, target_name)
    link = [CXX, *flags, *objects, "-o", target] + (["-shared"] if variant == "plain" else [])
    res = subprocess.run(link, capture_output=True, text=True)
    if res.returncode != 0:
        raise BuildError(f"emulated CUDA link failed:\n{res.stdout}{res.stderr}")
    if final is None:
        return target
    try:
        os.rename(work, final)
    except OSError:  # another process built it first
        shutil.rmtree(work, ignore_errors=True)
    return os.path.join(final, target_name)


class KernelError(RuntimeError):
    """An emulated launch failed (launch limits, a barrier misuse, a deadlock): the emulator's message."""


def _ptr(t):
    return ctypes.c_void_p(0 if t is None else t.data_ptr())


class Emulated:
    """The emulated CUDA kernels on CPU tensors (pointers into host memory)."""

    def __init__(self, path):
        self.path = path
        self.lib = ctypes.CDLL(path)
        self.lib.emu_message.restype = ctypes.c_char_p
        i, ll = ctypes.c_int, ctypes.c_longlong
        self.lib.emu_tpc_select.argtypes = [ctypes.c_void_p] * 3 + [i, ctypes.c_void_p] + [i] * 7
        self.lib.emu_susa.argtypes = [i] + [ctypes.c_void_p] * 11 + [ll] * 5 + [ctypes.c_void_p] * 2 + [i, i]
        self.lib.emu_selftest.argtypes = [i, ctypes.c_void_p]
        for fn in ("emu_float_to_half", "emu_half_to_float", "emu_float_to_bf16"):
            getattr(self.lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ll]

    def _check(self, err, what):
        msg = self.lib.emu_message().decode()
        if err != 0 or msg:
            raise KernelError(f"{what}: CUDA error {err}: {msg}")

    def tpc_select(self, x, keep, k, center, index_ties, noise=None, scratch_batch=None):
        """``csrc/tpc_select_cuda.cu``'s launcher on ``x [B, F, C]`` float32 (CPU). Returns int64 ``[B, keep]``."""
        x = x.contiguous()
        B, F, C = x.shape
        scratch_batch = scratch_batch or max(B, 1)
        # poisoned output with guard words around it: an unwritten slot or an out-of-bounds write shows
        buf = torch.full((B * keep + 16,), -7, dtype=torch.int64)
        out = buf[8:8 + B * keep]
        scratch = torch.full((scratch_batch, F, F), float("nan"))
        if noise is not None:
            noise = noise.to(torch.float32).contiguous()
        err = self.lib.emu_tpc_select(_ptr(x), _ptr(noise), _ptr(scratch), scratch_batch, _ptr(out), B, F, C, keep, k,
                                      center, int(index_ties))
        self._check(err, "tpc_select_cuda_launch")
        if (buf[:8] != -7).any() or (buf[8 + B * keep:] != -7).any():
            raise KernelError("tpc_select_cuda_launch wrote outside its output")
        return out.view(B, keep).clone()

    def susa(self, x, params, h_wise, out, out_index):
        """``csrc/susa_cuda.cu``'s launcher: ``params`` from ``pyengine.ops.susa.prepare_params`` (fp32
        contiguous), writes ``out[:, out_index[c]]`` (any strides), returns out."""
        gw, mw, mb, cw, cb, lw, lb = params
        N, C, H, W = x.shape
        R = H if h_wise else W
        scratch = torch.full((N, C, R), float("nan"))
        xs = (ctypes.c_longlong * 4)(*x.stride())
        os_ = (ctypes.c_longlong * 4)(*out.stride())
        channels_last = x.stride(1) < x.stride(3)  # as csrc/susa_cuda_glue.cpp
        err = self.lib.emu_susa(DTYPE_CODE[x.dtype], _ptr(x), _ptr(out), _ptr(out_index), _ptr(gw), _ptr(mw),
                                _ptr(mb), _ptr(cw), _ptr(cb), _ptr(lw), _ptr(lb), _ptr(scratch), N, C, out.shape[1],
                                H, W, ctypes.cast(xs, ctypes.c_void_p), ctypes.cast(os_, ctypes.c_void_p),
                                int(h_wise), int(channels_last))
        self._check(err, "susa_cuda_launch")
        return out

    def selftest(self, which):
        """Run self-test kernel ``which`` (selftest.cu); returns its output (1024 floats) or raises KernelError."""
        out = torch.zeros(1024)
        err = self.lib.emu_selftest(which, _ptr(out))
        self._check(err, f"selftest {which}")
        return out

    def float_to_half_bits(self, x):
        x = x.contiguous()
        out = torch.empty(x.shape, dtype=torch.int16)
        self.lib.emu_float_to_half(_ptr(x), _ptr(out), x.numel())
        return out

    def half_bits_to_float(self, bits):
        bits = bits.contiguous()
        out = torch.empty(bits.shape, dtype=torch.float32)
        self.lib.emu_half_to_float(_ptr(bits), _ptr(out), bits.numel())
        return out

    def float_to_bf16_bits(self, x):
        x = x.contiguous()
        out = torch.empty(x.shape, dtype=torch.int16)
        self.lib.emu_float_to_bf16(_ptr(x), _ptr(out), x.numel())
        return out
