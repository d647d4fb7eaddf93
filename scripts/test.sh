#!/usr/bin/env bash
# The test command: sets everything up (see setup.sh), then runs the whole suite
# on two workers (one test file per worker: module fixtures stay in one process).
# Extra arguments go to pytest instead (e.g. scripts/test.sh tests/proxy -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export PATH="$PATH:/usr/sbin:/sbin"
if [ "$#" -eq 0 ]; then
  set -- -n 2 --dist loadfile
fi
exec .venv/bin/python -m pytest "$@"
