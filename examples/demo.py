"""The scripted tour: a zero-downtime deploy of a Spring-shaped jar, on the embedded defaults.

    bash scripts/demo.sh            # sets up, then runs this

What it does, as the seed note's reader would by hand:
  nonstop up → deploy v1 → start a load client (keep-alive, new connections,
  POSTs with bodies, 1-second requests) → deploy v2 (blue-green) → deploy v3,
  whose health never turns UP (refused; traffic stays on v2) → rollback
  (instant: v1 is still warm) → stop the load and count → nonstop down.
Exit status 0 only when no request failed.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nonstop.testing.load import LoadClient  # noqa: E402


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError("no free port")


def free_pair(start: int) -> tuple[int, int]:
    for base in range(start, start + 200, 2):
        try:
            ports = []
            for p in (base, base + 1):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
                ports.append(p)
            return ports[0], ports[1]
        except OSError:
            continue
    raise RuntimeError("no two free ports")


def banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def nonstop(work: Path, *args: str, check: bool = True) -> int:
    print(f"$ nonstop {' '.join(args)}", flush=True)
    r = subprocess.run([sys.executable, "-m", "nonstop", *args], cwd=work)
    if check and r.returncode != 0:
        raise SystemExit(f"demo: `nonstop {' '.join(args)}` exited {r.returncode}")
    return r.returncode


def build_jar(*args: str) -> Path:
    out = subprocess.run(["bash", str(ROOT / "examples/app/build.sh"), *args], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def main() -> int:
    banner("building the example app (a Spring-Boot-shaped jar, plain JDK 17)")
    v1, v2 = build_jar("v1"), build_jar("v2")
    v3 = build_jar("v3", "app.health=DOWN")  # a build whose health never turns UP
    listen = free_port(8080)
    blue, green = free_pair(8081)
    dash = free_port(9900)
    work = Path(tempfile.mkdtemp(prefix="nonstop-demo-"))
    (work / "nonstop.yml").write_text(textwrap.dedent(f"""\
        app: roomescape
        listen: 127.0.0.1:{listen}
        run:
          command: java -Xmx128m -jar {{artifact}} --spring.profiles.active=prod --server.port={{port}}
          ports: {blue}-{green}
          stop_timeout: 30s
        health:
          path: /actuator/health
          expect_body: UP
          interval: 200ms
          startup_timeout: 8s
        strategy:
          type: blue-green
          keep_previous: 10m
        drain_timeout: 30s
        hold_timeout: 10s
        dashboard:
          listen: 127.0.0.1:{dash}
          enabled: {os.environ.get("NONSTOP_DEMO_DASHBOARD", "true")}
        """))
    print(f"work dir: {work}\n{(work / 'nonstop.yml').read_text()}")
    load = None
    try:
        banner("nonstop up")
        nonstop(work, "up", "--detach")
        token_file = work / ".nonstop" / "token"
        if token_file.exists():
            print(f"dashboard: http://127.0.0.1:{dash}/#token={token_file.read_text().strip()}")
        banner("deploy v1")
        nonstop(work, "deploy", "--version", "v1", "--artifact", str(v1))
        banner(f"load: ~100 req/s at http://127.0.0.1:{listen}/ (keep-alive, new connections, POSTs, 1 s requests)")
        load = LoadClient(f"http://127.0.0.1:{listen}/", rate=100, keepalive=4, new=2, post=2, slow=2, slow_ms=1000).start()
        load.wait_served(50, timeout=20)
        banner("deploy v2 (blue-green) under load")
        nonstop(work, "deploy", "--version", "v2", "--artifact", str(v2))
        banner("deploy v3: its health never says UP, so nonstop refuses it (exit 1) and traffic stays on v2")
        print("(with two ports, v3 takes the port of the warm v1, so the rollback below starts v1 again)")
        code = nonstop(work, "deploy", "--version", "v3", "--artifact", str(v3), check=False)
        print(f"(exit {code})")
        banner("rollback: back to the release before v2 (v1)")
        nonstop(work, "rollback")
        time.sleep(1.5)
        banner("status and history")
        nonstop(work, "status")
        nonstop(work, "history")
    finally:
        result = load.stop() if load else None
        banner("nonstop down")
        nonstop(work, "down", check=False)
    banner("result")
    print(result.format())
    failed = result.failed
    print(f"\nrequests served: {result.served}   failed: {failed}")
    if failed == 0:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print(f"(state and logs kept in {work / '.nonstop'})")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
