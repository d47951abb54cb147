#!/usr/bin/env bash
# The whole test suite (CPU): sets up .venv if needed, then runs the tests and executes every benchmark once.
# Triton kernels run under the interpreter (the root conftest.py sets TRITON_INTERPRET=1).
set -euo pipefail
cd "$(dirname "$0")"
./setup.sh --no-verify
exec .venv/bin/python -X faulthandler -m pytest -q tests benchmarks --benchmark-disable "$@"
