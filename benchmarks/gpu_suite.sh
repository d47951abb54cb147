#!/usr/bin/env bash
# The GPU script (docs/benchmarks.md): install pyengine, run the tests, compute-sanitizer and the benchmarks on a
# lent GPU box (no network; python, torch + CUDA, triton, nvcc and pytest-benchmark preinstalled), writing logs,
# JSON, markdown tables and a speedup chart under $OUT as it goes.
#
#   benchmarks/gpu_suite.sh STAGE [--dry-run]
#
# STAGE: install | tests | sanitizer | bench | bench-compile | bench-autotune | report | all
#   install         pip install --no-build-isolation --no-deps -e .  (other stages run it if pyengine._C is missing)
#   tests           pytest tests (tests that need CUDA skip themselves without it)
#   sanitizer       compute-sanitizer memcheck, then racecheck, on the CUDA kernels' tests (pytest -k $SANITIZER_K)
#   bench           benchmarks/ (peaks first) without torch.compile rows: peaks, eager, pyengine backends, op benchmarks
#   bench-compile   eager + torch.compile default and reduce-overhead rows (+ peaks, so its table stands alone)
#   bench-autotune  eager + torch.compile max-autotune rows (+ peaks)
#   report          merge every bench*.json in $OUT into report.md + speedup.png
#   all             every stage in order (only where one command may run for an hour or more)
# Each stage stays under STAGE_BUDGET_S seconds (default 510: the box allows 10 minutes per command): benchmarks
# skip the remaining cases with a note once the budget is spent (PYENGINE_BENCH_DEADLINE) and every finished row
# is appended to $OUT/<stage>.jsonl at once; pytest runs get SIGINT at the budget and SIGKILL 30 s later.
# Without CUDA the script runs in CPU mode (TRITON_INTERPRET=1, small sizes, no sanitizer): a check of the
# script itself. --dry-run prints the commands instead of running them.
# Environment: OUT (default benchmarks/results/run-<time>), PYTHON, STAGE_BUDGET_S, PYENGINE_COMMIT,
#   TEST_ARGS (pytest args of the tests stage, default "tests"), SANITIZER_K (default "cuda"),
#   BENCH_K (a pytest -k expression ANDed with each bench stage's own, e.g. "mhformer-351 or peak").
set -uo pipefail
cd "$(dirname "$0")/.."

STAGE=${1:-}
DRY=0
[[ "${2:-}" == "--dry-run" ]] && DRY=1
case "$STAGE" in
  install|tests|sanitizer|bench|bench-compile|bench-autotune|report|all) ;;
  *) echo "usage: $0 {install|tests|sanitizer|bench|bench-compile|bench-autotune|report|all} [--dry-run]" >&2
     exit 2 ;;
esac

if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=$(command -v python3 || command -v python); fi
OUT=${OUT:-benchmarks/results/run-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
BUDGET=${STAGE_BUDGET_S:-510}
COMMIT=${PYENGINE_COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo "unknown (no .git in this copy)")}
if [[ -n "$(git status --porcelain 2>/dev/null | head -1)" ]]; then COMMIT="$COMMIT (dirty)"; fi
export PYENGINE_COMMIT=$COMMIT

if [[ $DRY == 0 ]] && "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  CUDA=1
  export TRITON_INTERPRET=0  # the root conftest only sets it when unset: real Triton kernels, not the interpreter
else
  CUDA=0
  export TRITON_INTERPRET=1
  [[ $DRY == 0 ]] && echo "gpu_suite: no CUDA device: CPU mode (interpreter, small sizes, no sanitizer)"
fi

log() { echo "[gpu_suite $(date +%H:%M:%S)] $*" | tee -a "$OUT/suite.log"; }

# run NAME SECONDS CMD...: run CMD with a time limit (SIGINT, then SIGKILL 30 s later), output to $OUT/NAME.log.
run() {
  local name=$1 limit=$2; shift 2
  log "$name: $* (limit ${limit}s)"
  if [[ $DRY == 1 ]]; then return 0; fi
  local start=$SECONDS
  timeout --signal=INT --kill-after=30 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 5 "$OUT/$name.log" | sed "s/^/    /" | tee -a "$OUT/suite.log"
  log "$name: exit $rc after $((SECONDS - start))s$([[ $rc == 124 || $rc == 130 || $rc == 137 ]] && echo ' (time limit: partial)')"
  return $rc
}

environment() {
  [[ $DRY == 1 ]] && return 0
  {
    echo "commit: $COMMIT"
    echo "date: $(date -u +%FT%TZ)"
    "$PY" - <<'EOF'
import importlib.metadata as md, platform, torch
print("python:", platform.python_version())
print("torch:", torch.__version__, "CUDA:", torch.version.cuda)
print("triton:", md.version("triton"))
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
EOF
    command -v nvcc >/dev/null && nvcc --version | tail -n 2
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  } > "$OUT/environment.txt" 2>&1
  sed "s/^/    /" "$OUT/environment.txt" | tee -a "$OUT/suite.log"
}

stage_install() {
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
  run install "$BUDGET" "$PY" -m pip install --no-build-isolation --no-deps -e .
}

ensure_installed() {
  if [[ $DRY == 1 ]] || "$PY" -c "import pyengine._C" 2>/dev/null; then return 0; fi
  stage_install
}

stage_tests() {
  ensure_installed
  # shellcheck disable=SC2086
  run tests "$BUDGET" "$PY" -X faulthandler -m pytest -q -p no:cacheprovider ${TEST_ARGS:-tests} \
    --junitxml="$OUT/tests.xml" -rs
}

stage_sanitizer() {
  ensure_installed
  local cs
  cs=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
  if [[ $CUDA == 0 || -z "$cs" ]] && [[ $DRY == 0 ]]; then
    log "sanitizer: skipped (needs CUDA and compute-sanitizer; found cuda=$CUDA sanitizer='${cs}')"
    return 0
  fi
  cs=${cs:-compute-sanitizer}
  local k=${SANITIZER_K:-cuda} rc=0
  # The caching allocator hides out-of-bounds accesses inside its blocks from memcheck: switch it off.
  PYTORCH_NO_CUDA_MEMORY_CACHING=1 run sanitizer-memcheck $((BUDGET * 55 / 100)) "$cs" --tool memcheck \
    --error-exitcode 99 --target-processes all "$PY" -m pytest -q -p no:cacheprovider tests -k "$k" || rc=$?
  run sanitizer-racecheck $((BUDGET * 40 / 100)) "$cs" --tool racecheck --racecheck-report all \
    --error-exitcode 99 --target-processes all "$PY" -m pytest -q -p no:cacheprovider tests -k "$k" || rc=$?
  return $rc
}

# bench_stage NAME K-EXPRESSION: one pytest-benchmark run of benchmarks/ with a soft deadline and partial log.
bench_stage() {
  local name=$1 expr=$2 rc=0
  ensure_installed
  export PYENGINE_BENCH_DEADLINE=$(( $(date +%s) + BUDGET - 45 ))  # 45 s left for the JSON and the report
  export PYENGINE_BENCH_PARTIAL=$OUT/$name.jsonl
  rm -f "$PYENGINE_BENCH_PARTIAL"
  [[ -n "${BENCH_K:-}" ]] && expr="($expr) and ($BENCH_K)"
  run "$name" "$BUDGET" "$PY" -m pytest -q -p no:cacheprovider benchmarks/test_bench_peaks.py benchmarks -k "$expr" \
    --benchmark-json="$OUT/$name.json" -rs || rc=$?
  local sources=("$OUT/$name.json")
  [[ -s "$OUT/$name.json" ]] || sources=("$OUT/$name.jsonl")  # killed before pytest wrote its JSON
  [[ $DRY == 1 ]] && { log "$name: report -> $OUT/$name.md, $OUT/$name.png"; return 0; }
  "$PY" benchmarks/report.py "${sources[@]}" --chart "$OUT/$name.png" -o "$OUT/$name.md" 2>>"$OUT/suite.log" \
    && log "$name: wrote $name.json, $name.md, $name.png" || rc=$?
  return $rc
}

stage_report() {
  [[ $DRY == 1 ]] && { log "report: $OUT/bench*.json -> report.md, speedup.png"; return 0; }
  local files=()
  for f in "$OUT"/bench*.json; do [[ -s "$f" ]] && files+=("$f"); done
  if [[ ${#files[@]} == 0 ]]; then log "report: no bench*.json in $OUT"; return 1; fi
  "$PY" benchmarks/report.py "${files[@]}" --chart "$OUT/speedup.png" -o "$OUT/report.md" && log "report: wrote report.md"
}

log "stage $STAGE: out $OUT, python $PY, budget ${BUDGET}s per stage, commit $COMMIT, cuda=$CUDA"
environment
status=0
case "$STAGE" in
  install) stage_install || status=$? ;;
  tests) stage_tests || status=$? ;;
  sanitizer) stage_sanitizer || status=$? ;;
  bench) bench_stage bench "not compile" || status=$? ;;
  bench-compile) bench_stage bench-compile "peak or eager or compile-default or compile-reduce-overhead" || status=$? ;;
  bench-autotune) bench_stage bench-autotune "peak or eager or compile-max-autotune" || status=$? ;;
  report) stage_report || status=$? ;;
  all)
    stage_install || status=$?
    stage_tests || status=$?
    stage_sanitizer || status=$?
    bench_stage bench "not compile" || status=$?
    bench_stage bench-compile "peak or eager or compile-default or compile-reduce-overhead" || status=$?
    bench_stage bench-autotune "peak or eager or compile-max-autotune" || status=$?
    stage_report || status=$? ;;
esac
log "stage $STAGE done: exit $status"
exit $status
