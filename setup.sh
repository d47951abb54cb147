#!/usr/bin/env bash
# One command for a fresh machine: create .venv with the pinned versions, build and install pyengine,
# then run the main job (`pyengine verify`). Pass --no-verify to only set up.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -m venv .venv
fi
# torch comes from the local CPU wheel (pip's find-links); --no-build-isolation keeps pip from fetching a CUDA torch.
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt
.venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation --use-pep517 --no-deps -e .
.venv/bin/python -c "import torch, pyengine; assert torch.__version__.startswith('2.13.0'), torch.__version__; print('pyengine', pyengine.__version__, 'with torch', torch.__version__)"
if [[ "${1:-}" != "--no-verify" ]]; then
  .venv/bin/pyengine verify
fi
