#!/usr/bin/env bash
# The test command: sets everything up (see setup.sh), then runs the whole suite.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/proxy -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export PATH="$PATH:/usr/sbin:/sbin"
exec .venv/bin/python -m pytest "$@"
