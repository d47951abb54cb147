#!/usr/bin/env bash
# The GPU box's one command (docs/benchmarks.md). Everything is in benchmarks/gpu_suite.py; this picks the Python:
# the GPU box's python3 (torch + CUDA there), or .venv's here for --dry-run / --collect.
#
#   OUT=$OUT PYENGINE_COMMIT=<sha> benchmarks/gpu_suite.sh [first|second] [--dry-run | --collect]
#
# first (default): env + background build of pyengine._C, GPU tests, full-size validation, compute-sanitizer,
# the headline benchmark rows, the report: about 8.5 minutes (GPU_SUITE_BUDGET_S=510); run it with a 540 s limit.
# second: torch.compile max-autotune rows and the other model rows (an optional later command).
set -uo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=$(command -v python3 || command -v python); fi
exec "$PY" benchmarks/gpu_suite.py "$@"
