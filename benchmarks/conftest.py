"""Benchmark-suite hooks (docs/benchmarks.md).

* Every benchmark is skipped, with a note, once the stage's time budget (PYENGINE_BENCH_DEADLINE) runs out.
* Skipped rows and their reasons (e.g. a backend that has not landed) are recorded in the JSON
  (``pyengine_skipped``), with the versions, device and command (``pyengine_versions``, ``pyengine_command``).
* With PYENGINE_BENCH_PARTIAL=path, each finished or skipped benchmark is appended to that JSON-lines file as
  it happens, so a stage killed by its time limit still leaves its results (report.py reads such files).
* glibc's allocator is pinned (see ``_pin_glibc_malloc``) so CPU rows do not time page faults.
"""
import ctypes
import ctypes.util
import json
import os
import platform
import subprocess
import sys
from importlib import metadata

import pytest
import torch

from common import DEVICE, check_budget, device_name

_SKIPPED = []


def _pin_glibc_malloc():
    """Fix glibc's mmap and trim thresholds for the benchmark process.

    By default both move with the allocation history: after a free, a multi-MB tensor may come from a fresh mmap,
    or the freed top of the heap is returned to the kernel, so the next call page-faults all of its memory back
    in. Which of these happens depends on what ran before, and flips between runs: we saw one eager SUSA row go
    from 1.4 ms to 5.9 ms (1888 page faults per call) purely by test order. With the thresholds fixed, tensors up
    to 32 MiB are reused from the heap and nothing is trimmed, for eager and pyengine rows alike."""
    path = ctypes.util.find_library("c")
    if platform.system() != "Linux" or path is None:
        return
    libc = ctypes.CDLL(path)
    if not hasattr(libc, "mallopt"):  # not glibc (e.g. musl)
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)  # glibc's maximum
    libc.mallopt(m_trim_threshold, 1 << 30)


_pin_glibc_malloc()


@pytest.fixture(autouse=True)
def _time_budget():
    check_budget()


def _append_partial(record):
    path = os.environ.get("PYENGINE_BENCH_PARTIAL")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")


def _skip_reason(report):
    longrepr = report.longrepr
    reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and call.when in ("setup", "call"):
        record = {"name": item.name, "fullname": item.nodeid, "skipped": _skip_reason(report)}
        _SKIPPED.append(record)
        _append_partial(record)
    elif call.when == "call" and report.passed:
        fixture = getattr(item, "funcargs", {}).get("benchmark")
        stats = getattr(fixture, "stats", None)
        if stats is not None:
            _append_partial(stats.as_dict(include_data=False))


def versions():
    cuda = torch.version.cuda or "none"
    parts = [f"torch {torch.__version__}", f"triton {metadata.version('triton')}", f"CUDA {cuda}",
             f"device {device_name(DEVICE)}"]
    if DEVICE == "cuda":
        try:
            driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                    capture_output=True, text=True, timeout=20).stdout.strip()
            parts.append(f"driver {driver}")
        except (OSError, subprocess.SubprocessError):
            pass
    parts.append(f"TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', 'unset')}")
    return ", ".join(parts)


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["pyengine_versions"] = versions()
    output_json["pyengine_command"] = " ".join([os.path.basename(sys.executable), "-m", "pytest", *sys.argv[1:]])
    output_json["pyengine_device"] = f"{device_name(DEVICE)} ({platform.node()})"
    output_json["pyengine_skipped"] = _SKIPPED
    if os.environ.get("PYENGINE_COMMIT"):  # set by gpu_suite.sh: the box's copy of the tree may have no .git
        output_json["pyengine_commit"] = os.environ["PYENGINE_COMMIT"]
