"""The GPU box's one command (benchmarks/gpu_suite.sh -> gpu_suite.py) is checked on every CI run, since a GPU
lease is too short to debug a script in: bash syntax, a dry run whose time boxes fit one command, and a
collection run proving each pytest step selects exactly what it should."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/<folder>/ -> repo
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu_suite.sh")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import gpu_suite  # noqa: E402

DEVICE_LIMIT_S = 540  # the timeout the one command is run with (the device allows 600 s per command)


def run_script(*args, **env):
    return subprocess.run([SCRIPT, *args], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, **env})


@pytest.fixture(scope="module")
def collected():
    res = run_script("--collect", OUT="/tmp/gpu_suite_collect")
    assert res.returncode == 0, res.stderr[-3000:]
    steps, current = {}, None
    for line in res.stdout.splitlines():
        if line.startswith("== "):
            current = line[3:].split(":")[0]
            steps[current] = []
            assert "pytest exit 0" in line, line
        elif current and "::" in line:
            steps[current].append(line)
    return res.stdout, steps


def test_script_parses_and_rejects_bad_usage():
    assert subprocess.run(["bash", "-n", SCRIPT]).returncode == 0
    bad = run_script("nonsense")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_dry_run_fits_one_device_command(collected):
    text, _ = collected
    lines = [line for line in text.splitlines() if line.startswith("[gpu_suite")]
    order = ["environment", "build (background)", "gpu-tests:", "wait-build", "gpu-tests-ext", "validate",
             "sanitizer-memcheck", "sanitizer-racecheck", "bench:", "report", "bundle"]
    positions = [next(i for i, line in enumerate(lines) if f"] {name}" in line) for name in order]
    assert positions == sorted(positions), "steps out of priority order"
    for line in lines:
        if "time box" in line:
            assert "(time box" in line
    end = int(lines[-1].split("+")[1].split("s]")[0])
    budget = float(os.environ.get("GPU_SUITE_BUDGET_S", 510))
    assert end <= budget < DEVICE_LIMIT_S - 20, f"the plan ends at +{end}s, budget {budget}s"
    assert "compute-sanitizer --tool memcheck" in text and "--tool racecheck" in text
    assert "TORCH_CUDA_ARCH_LIST=9.0" in text


def test_gpu_test_steps_select_only_tests_that_need_cuda(collected):
    _, steps = collected
    free, ext = steps["gpu-tests"], steps["gpu-tests-ext"]
    assert free and ext and not set(free) & set(ext)
    files = {i.split("::")[0] for i in free}
    assert {"tests/gpu/test_engine_gpu.py", "tests/gpu/test_gpu_kernels.py"} <= files
    assert any("test_tpc_select_triton.py" in i for i in ext) and any("[cuda" in i or "cuda]" in i for i in ext)
    # every selected test skips here for want of a GPU: none of them is an interpreter (CPU) test
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "tests",
                          "-m", "gpu"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    summary = res.stdout.strip().splitlines()[-1]
    assert " passed" not in summary and " failed" not in summary and "skipped" in summary, summary
    assert f"{len(free) + len(ext)} skipped" in summary, summary


def test_bench_step_selects_exactly_the_headline_rows_peaks_first(collected):
    _, steps = collected
    assert steps["bench"] == gpu_suite.BENCH_FIRST  # every id exists (on the GPU's parametrization) and in order
    assert steps["bench"][:2] == gpu_suite.PEAKS
    rows = [i for i in steps["bench"] if "test_model[" in i]
    assert len(rows) == len(set(rows)) == 3 * (len(gpu_suite.FAST_ROWS) + len(gpu_suite.COMPILE_ROWS))
    first_compile = next(k for k, i in enumerate(rows) if "compile-" in i)
    assert all("compile-" in i for i in rows[first_compile:]), "compile rows (slow to build) must come last"


def test_second_stage_rows_exist():
    res = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          *gpu_suite.BENCH_SECOND], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         env={**os.environ, "PYENGINE_BENCH_DTYPE": "bfloat16"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert sum("::" in line for line in res.stdout.splitlines()) == len(gpu_suite.BENCH_SECOND)


def test_validation_and_sanitizer_scripts_plan_and_run_on_cpu(tmp_path):
    res = subprocess.run([sys.executable, "benchmarks/gpu_validate.py", "--out", str(tmp_path), "--dry-run"],
                         capture_output=True, text=True, cwd=ROOT)
    cases = [line for line in res.stdout.splitlines() if line.startswith("validate ")]
    assert res.returncode == 0 and len(cases) == 16  # 4 models x {triton, cuda} x {fp32, bf16}
    # the validation code path itself, on CPU at the small sizes (the cpp backend)
    res = subprocess.run([sys.executable, "benchmarks/gpu_validate.py", "--out", str(tmp_path), "--device", "cpu",
                          "--size", "small", "--backends", "cpp"], capture_output=True, text=True, cwd=ROOT,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    table = (tmp_path / "validation.md").read_text()
    assert table.count("| ok |") == 8 and "FAILED" not in table
