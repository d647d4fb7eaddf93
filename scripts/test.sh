#!/usr/bin/env bash
# The test command: sets everything up (see setup.sh), then runs the whole suite
# on two workers (one test file per worker: module fixtures stay in one process),
# then the proxy's tests again on its Python fallback (NONSTOP_PURE_PYTHON=1:
# the .py sources instead of the Cython-compiled hot path, as on a machine
# without a C compiler).
# Extra arguments go to pytest instead (e.g. scripts/test.sh tests/proxy -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export PATH="$PATH:/usr/sbin:/sbin"
if [ "$#" -gt 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
.venv/bin/python -m pytest -n 2 --dist loadfile
echo "--- the proxy's tests on the Python fallback (NONSTOP_PURE_PYTHON=1)"
NONSTOP_PURE_PYTHON=1 exec .venv/bin/python -m pytest -n 2 --dist loadfile -q tests/proxy
