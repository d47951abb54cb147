"""The GPU box's one command (called by benchmarks/gpu_suite.sh): everything a first GPU run needs, in priority
order, each step time-boxed so later steps still run, every result written as it comes.

    benchmarks/gpu_suite.sh [first|second] [--dry-run | --collect]     (default: first)

A GPU lease is about 15 minutes in all, machine start included; one command runs at most 10 minutes and every
command starts on a bare machine. So ``first`` fits one command (GPU_SUITE_BUDGET_S, default 510 s; call it with
a timeout of about 540 s):

1. environment (GPU, driver, versions, commit) -> environment.txt; the extension ``pyengine._C`` starts building
   in the background (nvcc + ninja, TORCH_CUDA_ARCH_LIST=9.0) into a scratch dir, copied in when complete;
2. GPU tests that need no extension (``pytest -m "gpu and not cuda_ext"``: every Triton kernel against its
   reference, CUDA graphs, TPC/HoT models on the GPU) while it builds; then, once it is built, the ones that do
   (``-m "gpu and cuda_ext"``: the CUDA kernels and the ``cuda`` backend);
3. full-size validation (benchmarks/gpu_validate.py): MHFormer-351, TPC-MHFormer, MixSTE-243, HoT-MixSTE-243
   with ``validate=True`` on ``triton`` and ``cuda``, fp32 and bf16, against fp64 eager;
4. compute-sanitizer memcheck and racecheck on the kernels' smallest calls (benchmarks/gpu_sanitize.py; the
   caching allocator as it is, no graphs, no compile);
5. the headline benchmark rows by exact id (``BENCH_FIRST``), peaks first, interleaved in one pytest run;
6. the report (report.md + bench.json + speedup.png) from whatever finished.

``second`` (an optional later command): torch.compile max-autotune rows and the remaining model rows.
$OUT gets at most 8 files: suite.log (every step's command, time box, exit and log tail, written as it goes),
environment.txt, validation.md, report.md, bench.json, speedup.png, logs.tar.gz (all logs, JUnit XML, JSON
lines). ``--dry-run`` prints the plan with each time box; ``--collect`` additionally runs ``pytest
--collect-only`` for every pytest step and prints the selected node ids (CI checks both, see
tests/gpu/test_gpu_suite.py).
"""
import argparse
import dataclasses
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable

PEAKS = ["benchmarks/test_bench_peaks.py::test_peak[matmul]", "benchmarks/test_bench_peaks.py::test_peak[copy]"]
HEADLINE = [("mhformer-351", "b2"), ("mhformer-351", "throughput"), ("hot_mixste-243", "throughput")]
FAST_ROWS = ["eager-fp32", "eager-bf16", "pyengine-triton-bf16", "pyengine-cuda-bf16", "pyengine-triton-fp32",
             "pyengine-cuda-fp32"]
COMPILE_ROWS = ["compile-default-bf16", "compile-reduce-overhead-bf16"]


def model_row(case, regime, row):
    return f"benchmarks/test_bench_models.py::test_model[{case}-{regime}-{row}]"


# First call: peaks, then every fast row of the three headline cases, then their compile rows (slow to build:
# benchmarks/common.check_budget skips one that no longer fits).
BENCH_FIRST = PEAKS + [model_row(c, r, row) for c, r in HEADLINE for row in FAST_ROWS] + \
    [model_row(c, r, row) for c, r in HEADLINE for row in COMPILE_ROWS]
SECOND_CASES = [("mhformer-351", "b1"), ("tpc_mhformer-351", "b2"), ("tpc_mhformer-351", "throughput"),
                ("mixste-243", "b2"), ("mixste-243", "throughput"), ("hot_mixste-243", "b2")]
BENCH_SECOND = PEAKS + [model_row(c, r, row) for c, r in SECOND_CASES for row in FAST_ROWS] + \
    [model_row(c, r, "compile-max-autotune-bf16") for c, r in HEADLINE]

SANITIZER = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
PYTEST = [PY, "-X", "faulthandler", "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs"]


@dataclasses.dataclass
class Step:
    name: str
    box_s: float  # the step's time box (a pytest step gets SIGINT at its end, SIGKILL 15 s later)
    cmd: Optional[List[str]] = None
    pytest_args: Optional[List[str]] = None  # for --collect: what the step selects
    needs_ext: bool = False
    env: dict = dataclasses.field(default_factory=dict)


def plan(stage, work, out):
    """The steps of ``stage`` (``first`` or ``second``); ``work`` holds logs, ``out`` the returned files."""
    tests_free = ["tests", "-m", "gpu and not cuda_ext"]
    tests_ext = ["tests", "-m", "gpu and cuda_ext"]
    # pytest-xdist (on the GPU box): Triton's compiles are CPU work, spread over 4 processes sharing the GPU
    xdist = ["-n", "4"] if not dry_run_only() and _has_xdist() else []
    bench = BENCH_FIRST if stage == "first" else BENCH_SECOND
    bench_env = {"PYENGINE_BENCH_PARTIAL": os.path.join(work, "bench.jsonl")}
    steps = [
        Step("gpu-tests", 100, PYTEST + xdist + tests_free + [f"--junitxml={work}/gpu-tests.xml"], tests_free),
        Step("gpu-tests-ext", 60, PYTEST + xdist + tests_ext + [f"--junitxml={work}/gpu-tests-ext.xml"], tests_ext,
             needs_ext=True),
        Step("validate", 80, [PY, "benchmarks/gpu_validate.py", "--out", work], needs_ext=True),
        Step("sanitizer-memcheck", 32, [SANITIZER, "--tool", "memcheck", "--error-exitcode", "99",
                                        PY, "benchmarks/gpu_sanitize.py"], needs_ext=True),
        Step("sanitizer-racecheck", 28, [SANITIZER, "--tool", "racecheck", "--racecheck-report", "all",
                                         "--error-exitcode", "99", PY, "benchmarks/gpu_sanitize.py", "--cuda-only"],
             needs_ext=True),
        Step("bench", 0, PYTEST + bench + [f"--benchmark-json={work}/bench.json"], bench, env=bench_env),
        Step("report", 15, [PY, "benchmarks/report.py", os.path.join(work, "bench.json"), "--chart",
                            os.path.join(out, "speedup.png"), "-o", os.path.join(out, "report.md")]),
    ]
    if stage == "second":
        steps = [s for s in steps if s.name in ("bench", "report")]
    return steps


_DRY = []


def dry_run_only():
    return bool(_DRY)


def _has_xdist():
    import importlib.util
    return importlib.util.find_spec("xdist") is not None


class Suite:
    def __init__(self, stage, out, budget_s, dry):
        self.stage, self.out, self.dry = stage, out, dry
        self.start = time.time()
        self.deadline = self.start + budget_s
        self.simulated = 0.0  # --dry-run: each step "spends" its time box, so the plan shows the real timeline
        self.work = out if dry else os.path.join("/tmp", f"gpu_suite_work_{os.getpid()}")  # logs: bundled at the end
        self.build = None
        self.status = {}

    def now(self):
        return self.start + self.simulated if self.dry else time.time()

    def log(self, msg):
        line = f"[gpu_suite +{self.now() - self.start:5.0f}s] {msg}"
        print(line, flush=True)
        if not self.dry:
            with open(os.path.join(self.out, "suite.log"), "a") as f:
                f.write(line + "\n")

    def env(self, extra=()):
        env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               "TRITON_INTERPRET": "0", "PYTHONUNBUFFERED": "1", "PYENGINE_COMMIT": commit()}
        env.update(extra)
        return env

    def run(self, step, box_s):
        self.log(f"{step.name}: {' '.join(shlex.quote(c) for c in step.cmd)} (time box {box_s:.0f}s)")
        if self.dry:
            self.simulated += box_s
            return 0
        path = os.path.join(self.work, f"{step.name}.log")
        env = self.env({**step.env, "PYENGINE_BENCH_DEADLINE": str(time.time() + box_s - 20)})
        t0 = time.time()
        with open(path, "w") as logf:
            proc = subprocess.Popen(step.cmd, cwd=ROOT, stdout=logf, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
            try:
                rc = proc.wait(timeout=max(box_s, 1))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGINT)  # pytest prints its summary and writes its files on SIGINT
                try:
                    rc = proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    rc = proc.wait()
                rc = f"{rc} (time box spent: partial)"
        tail = open(path, errors="replace").read().splitlines()[-6:]
        for line in tail:
            self.log(f"    {line[:300]}")
        self.log(f"{step.name}: exit {rc} after {time.time() - t0:.0f}s")
        self.status[step.name] = rc
        return rc

    # -- the background build --------------------------------------------------------------------------------
    def start_build(self):
        build_lib = os.path.join(self.work, "build-lib")
        cmd = [PY, "setup.py", "build_ext", "-b", build_lib, "-t", os.path.join(self.work, "build-tmp")]
        self.log(f"build (background): TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=cores-4 {' '.join(cmd)} "
                 f"(time box 150s)")
        if self.dry:
            return
        # leave a few cores to the test processes that compile Triton kernels meanwhile
        env = self.env({"TORCH_CUDA_ARCH_LIST": "9.0", "MAX_JOBS": str(max(2, (os.cpu_count() or 8) - 4))})
        self.build_log = open(os.path.join(self.work, "build.log"), "w")
        self.build = (subprocess.Popen(cmd, cwd=ROOT, stdout=self.build_log, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True), build_lib, time.time())

    def wait_build(self, until):
        """True when pyengine._C is built (and copied into the package), else False (logged)."""
        if self.dry:
            self.log(f"wait-build: until +{until - self.start:.0f}s at most, then copy the built pyengine/_C*.so in")
            self.simulated = max(self.simulated, until - self.start)
            return True
        if self.build is None:
            return False
        proc, build_lib, t0 = self.build
        try:
            rc = proc.wait(timeout=max(until - time.time(), 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            self.log("build: time box spent, killed; steps that need pyengine._C are skipped")
            self.build, self.status["build"] = None, "timeout"
            return False
        self.build = None
        built = [os.path.join(dp, f) for dp, _, fs in os.walk(build_lib) for f in fs if f.startswith("_C")]
        tail = open(os.path.join(self.work, "build.log"), errors="replace").read().splitlines()[-4:]
        for line in tail:
            self.log(f"    {line[:300]}")
        if rc != 0 or not built:
            self.log(f"build: FAILED (exit {rc}); steps that need pyengine._C are skipped (build.log in logs)")
            self.status["build"] = rc
            return False
        for path in built:  # complete files only: a test never imports a half-written extension
            shutil.copy(path, os.path.join(ROOT, "pyengine", os.path.basename(path)))
        self.log(f"build: ok after {time.time() - t0:.0f}s ({', '.join(os.path.basename(p) for p in built)})")
        self.status["build"] = 0
        return True

    # -- the whole stage --------------------------------------------------------------------------------------
    def go(self):
        os.makedirs(self.work, exist_ok=True)
        self.log(f"stage {self.stage}: budget {self.deadline - self.start:.0f}s, out {self.out}, commit {commit()}")
        self.environment()
        steps = plan(self.stage, self.work, self.out)
        ext = None
        if self.stage == "first":
            self.start_build()
        for step in steps:
            left = self.deadline - self.now() - (20 if step.name != "report" else 0)  # 20 s: report + bundle
            if step.needs_ext and ext is None:
                ext = self.wait_build(min(self.start + 150, self.deadline - 60))
            if step.needs_ext and not ext and step.name != "validate":
                self.log(f"{step.name}: skipped (pyengine._C is not built)")
                continue
            box = left if step.box_s == 0 else min(step.box_s, left)
            if box < 5 and not self.dry:
                self.log(f"{step.name}: skipped (budget spent)")
                continue
            if step.name == "validate":
                step.cmd = step.cmd + ["--deadline", f"{self.now() + box - 5:.0f}"] + \
                    ([] if ext else ["--backends", "triton"])
            if step.name == "report" and not self.dry:
                sources = [os.path.join(self.work, "bench.json")]
                if not os.path.exists(sources[0]) or not os.path.getsize(sources[0]):
                    sources = [os.path.join(self.work, "bench.jsonl")]  # killed before pytest wrote its JSON
                step.cmd = [PY, "benchmarks/report.py", *sources] + step.cmd[3:]
            self.run(step, box)
        self.bundle()
        self.log(f"stage {self.stage} done: {self.status or 'dry run'}")
        return 0 if all(v == 0 for v in self.status.values()) else 1

    def environment(self):
        if self.dry:
            self.log("environment: nvidia-smi, python / torch / triton / nvcc versions, commit -> environment.txt")
            return
        lines = [f"commit: {commit()}", f"date: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"]
        probe = ("import importlib.metadata as md, platform, torch\n"
                 "print('python:', platform.python_version())\n"
                 "print('torch:', torch.__version__, 'CUDA:', torch.version.cuda)\n"
                 "print('triton:', md.version('triton'))\n"
                 "print('numpy:', md.version('numpy'))\n"
                 "print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')\n"
                 "print('devices:', torch.cuda.device_count())\n")
        for cmd in ([PY, "-c", probe], ["nvcc", "--version"],
                    ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv"],
                    ["compute-sanitizer", "--version"]):
            try:
                res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
                lines += (res.stdout + res.stderr).strip().splitlines()[-6:]
            except (OSError, subprocess.TimeoutExpired) as exc:
                lines.append(f"{cmd[0]}: {exc}")
        with open(os.path.join(self.out, "environment.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
        for line in lines:
            self.log(f"    {line}")

    def bundle(self):
        """At most 8 files come back: the summaries stay, every log goes into logs.tar.gz."""
        if self.dry:
            self.log("bundle: logs.tar.gz <- every step log, JUnit XML, JSON lines; keep suite.log, "
                     "environment.txt, validation.md, report.md, bench.json, speedup.png")
            return
        for name in ("validation.md", "bench.json"):
            src = os.path.join(self.work, name)
            if os.path.exists(src):
                shutil.copy(src, os.path.join(self.out, name))
        with tarfile.open(os.path.join(self.out, "logs.tar.gz"), "w:gz") as tar:
            tar.add(self.work, arcname="logs")
        keep = {"suite.log", "environment.txt", "validation.md", "report.md", "bench.json", "speedup.png",
                "logs.tar.gz"}
        for name in os.listdir(self.out):
            if name not in keep:
                path = os.path.join(self.out, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def commit():
    c = os.environ.get("PYENGINE_COMMIT")
    if c:
        return c
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return (sha or "unknown (no .git in this copy)") + (" (dirty)" if sha and dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown (no git)"


def collect(steps):
    """``pytest --collect-only`` of every pytest step: the node ids each one selects (CI checks them)."""
    for step in steps:
        if not step.pytest_args:
            continue
        res = subprocess.run(PYTEST[:5] + ["--collect-only", "-q", "-p", "no:cacheprovider",
                                           *step.pytest_args], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": ROOT, "PYENGINE_BENCH_DTYPE": "bfloat16"})
        ids = [line for line in res.stdout.splitlines() if "::" in line]
        print(f"== {step.name}: {len(ids)} selected (pytest exit {res.returncode})")
        for i in ids:
            print(i)


def main(argv=None):
    p = argparse.ArgumentParser(prog="benchmarks/gpu_suite.sh", description=__doc__.splitlines()[0])
    p.add_argument("stage", nargs="?", default="first", choices=("first", "second"))
    p.add_argument("--dry-run", action="store_true", help="print the plan with each step's time box")
    p.add_argument("--collect", action="store_true", help="dry run + the node ids each pytest step selects")
    args = p.parse_args(argv)
    budget = float(os.environ.get("GPU_SUITE_BUDGET_S", 510))
    dry = args.dry_run or args.collect
    if dry:
        _DRY.append(True)
    out = os.environ.get("OUT") or os.path.join(ROOT, "benchmarks", "results", time.strftime("run-%Y%m%d-%H%M%S"))
    if not dry:
        os.makedirs(out, exist_ok=True)
        import torch
        if not torch.cuda.is_available():
            print("gpu_suite: no CUDA device here: this script is for the GPU box (use --dry-run / --collect "
                  "to check it)", file=sys.stderr)
            return 2
    suite = Suite(args.stage, out, budget, dry)
    rc = suite.go()
    if args.collect:
        collect(plan(args.stage, suite.work, out))
    return rc


if __name__ == "__main__":
    sys.exit(main())
