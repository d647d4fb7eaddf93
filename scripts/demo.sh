#!/usr/bin/env bash
# The main job: a scripted tour of a zero-downtime deploy on the embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python examples/demo.py "$@"
