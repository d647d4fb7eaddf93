#!/usr/bin/env bash
# Idempotent set-up on a fresh Debian machine: a virtualenv with nonstop and its
# pinned dependencies in .venv; with --test also nginx, HAProxy, wrk, chromium,
# docker.io, podman, busybox-static, pebble and systemd's tools from Debian's
# packages (the tests drive the real binaries; the container tests start their
# own dockerd, the ACME tests their own pebble). Java 17 is needed for
# the example app; installed from Debian's packages when javac is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

missing=()
have javac || missing+=(openjdk-17-jdk-headless)
if [ "$want_test" = 1 ]; then
  have nginx || missing+=(nginx)
  have haproxy || missing+=(haproxy)
  have wrk || missing+=(wrk)
  [ -x /usr/bin/chromium ] || missing+=(chromium)   # the dashboard's browser tests (Playwright drives it)
  have dockerd || missing+=(docker.io)               # the container runtime's tests start their own dockerd
  have podman || missing+=(podman)
  # the example app's image: a shell in a FROM scratch image (a static one; Debian's plain busybox is dynamic)
  dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q "ok installed" || missing+=(busybox-static)
  have pebble || missing+=(pebble)                   # ACME test CA (and pebble-challtestsrv) for tests/tls
  have systemd-analyze || missing+=(systemd)         # systemd-analyze verify, systemd-socket-activate (not started)
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]} from Debian's packages"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts the packaged services; nonstop runs its own, so stop theirs.
  for svc in nginx haproxy; do
    if [[ " ${missing[*]} " == *" $svc"* ]]; then $SUDO service "$svc" stop >/dev/null 2>&1 || true; fi
  done
  # docker.io's postinst starts dockerd (and containerd) where an init system runs; the tests start
  # their own dockerd in a temp dir, so stop the packaged one this install started (never one that
  # was running before: docker.io was missing, so none was).
  if [[ " ${missing[*]} " == *" docker.io "* ]]; then
    $SUDO service docker stop >/dev/null 2>&1 || true
    $SUDO service containerd stop >/dev/null 2>&1 || true
  fi
fi

py=${PYTHON:-python3}
stamp=.venv/.nonstop-installed
hash=$(cat pyproject.toml setup.py | sha256sum | cut -c1-16)
# the proxy's compiled hot path (setup.py): the modules with a .pxd, and their .pxd
compiled_sources() { ls nonstop/proxy/*.pxd; ls nonstop/proxy/*.pxd | sed 's/pxd$/py/'; echo setup.py; }
built=.venv/.nonstop-compiled
src_hash=$(cat $(compiled_sources) | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ]; then
  "$py" -m venv .venv
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$hash" ]; then
  echo "setup: installing nonstop and its pinned dependencies into .venv"
  # compat mode: a plain path entry (.pth), not an import hook that costs every CLI call ~50 ms
  # (this also compiles the hot path in place, with Cython, when a C compiler is there)
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' --config-settings editable_mode=compat
  echo "$hash" > "$stamp"
  echo "$src_hash" > "$built"
fi
if [ "$(cat "$built" 2>/dev/null)" != "$src_hash" ]; then
  # a compiled module's source changed since the last build: rebuild what changed, or it runs old code
  echo "setup: compiling the proxy's hot path (Cython)"
  .venv/bin/python setup.py -q build_ext --inplace 2>&1 | grep -v "^warning: \|Warning\|warnings.warn" || true
  echo "$src_hash" > "$built"
fi
