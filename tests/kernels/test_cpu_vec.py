"""csrc/cpu_vec.h's fp16 rows: the _Float16 (F16C) path and the fallback for compilers without _Float16 (GCC < 12
on x86, emulated here by undefining __FLT16_MAX__) both build and convert bit-identically to c10::Half."""
import os
import shutil
import subprocess

import pytest
import torch
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/<folder>/ -> repo
PROGRAM = r"""
#include "cpu_vec.h"
#include <cstdio>
#include <vector>
int main() {
  // every fp16 bit pattern -> float -> fp16, and a sweep of floats (ties, subnormals, overflow) -> fp16
  std::vector<c10::Half> h(65536);
  for (int i = 0; i < 65536; ++i) h[i] = c10::Half(static_cast<uint16_t>(i), c10::Half::from_bits());
  std::vector<float> f(65536);
  half_row_to_float(h.data(), 65536, f.data());
  unsigned long long hash = 1469598103934665603ull;
  for (int i = 0; i < 65536; ++i) {
    uint32_t bits; std::memcpy(&bits, &f[i], 4);
    if (f[i] == f[i]) hash = (hash ^ bits) * 1099511628211ull;  // NaN payloads may differ: count NaN-ness only
    else hash = (hash ^ 0x7fc00000u) * 1099511628211ull;
  }
  std::vector<float> g(200001);
  for (int i = 0; i < 200001; ++i) g[i] = (i - 100000) * 0.7331f * (i % 7 == 0 ? 1e-4f : 1.0f) + (i % 11 == 0 ? 65519.9f : 0.f);
  std::vector<c10::Half> o(g.size());
  float_row_to_half(g.data(), g.size(), o.data());
  for (size_t i = 0; i < g.size(); ++i) {
    if (o[i].x != c10::Half(g[i]).x) { std::printf("mismatch at %zu\n", i); return 1; }
    hash = (hash ^ o[i].x) * 1099511628211ull;
  }
  std::printf("%llu\n", hash);
  return 0;
}
"""


def _build_and_run(tmp_path, extra):
    src = tmp_path / "t.cpp"
    src.write_text(PROGRAM)
    exe = tmp_path / ("t" + "".join(extra).replace("-", "_"))
    inc = [f"-I{d}" for d in cpp_extension.include_paths()] + [f"-I{os.path.join(ROOT, 'csrc')}"]
    libdir = os.path.join(os.path.dirname(torch.__file__), "lib")
    cmd = ["g++", "-O2", "-std=c++17", "-ffp-contract=off", *extra, *inc, str(src), "-o", str(exe),
           f"-L{libdir}", "-lc10", f"-Wl,-rpath,{libdir}"]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout.strip()


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs g++")
def test_fp16_rows_fallback_equals_float16_path(tmp_path):
    native = _build_and_run(tmp_path, [])
    fallback = _build_and_run(tmp_path, ["-U__FLT16_MAX__"])
    assert native == fallback
