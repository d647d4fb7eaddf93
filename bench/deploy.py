"""Deploys under load: the seed's kill-then-start script vs nonstop's recreate and blue-green,
with the app as a process and as a container.

    .venv/bin/python bench/deploy.py [--rate 100] [--routers embedded,nginx,haproxy]
                                     [--runtimes process,docker] [--rounds 3] [--record]

Each scenario deploys the Java example app (examples/app, a Spring-Boot-shaped
jar that binds its port only after booting) from v1 to v2 while a load client
sends ~100 req/s (keep-alive, new connections, POSTs), and reports:

- failed requests and the longest gap without a successful response;
- deploy wall time (command issued → command returned);
- nonstop's overhead beyond the app's own boot, three ways: the deployment's
  span in the agent's events minus the new instance's spawn → healthy time
  (`overhead_ms`: build/copy, switch, drain); minus the app's boot alone,
  spawn → port answering, measured once before the runs with nothing else
  running (`beyond_app_boot_ms`: that plus the time health checks take to
  notice, plus however much slower the JVM boots beside a running one under
  load); and minus the boot the new instance itself reports in its log
  ("… (process running for Y)": the JVM's uptime when its port is bound,
  under the same load: `beyond_own_boot_ms`, the fairest of the three);
- switch latency: the `switched` event's time minus the step's start;
- for blue-green, a warm rollback: command issued → last response of the
  rolled-back version, and → first response of the restored one; and the
  same from the moment the agent received the command (the CLI's own start-up,
  a Python interpreter, is the rest); then v2's jar is deployed again and
  rolled back through the dashboard's `POST /api/rollback` with the token,
  sent from this process: what a runbook, a bot or `curl` costs, without
  the CLI.
- with ``--runtimes …,docker``, the same blue-green deploy and warm rollback
  with each instance a container of the example app's image (examples/app/
  image.sh, in an own dockerd started in a temp dir and stopped by PID):
  ``own_boot_s`` is then the container's own start, from ``docker run`` (the
  marker line nonstop writes just before it) to the app's boot line (its
  timestamp in ``docker logs -t``), and ``beyond_own_boot_ms`` the rest of the
  deployment's span: what nonstop adds beyond the container starting; for
  both runtimes ``boot_to_switch_ms`` is the app's boot line to the
  ``switched`` event (health checks noticing, the switch itself).

With ``--rounds N`` every scenario runs N times, interleaved round by round
(the machine's load drifts; interleaving spreads it over all rows alike), and
each figure is the median of its N values; the spread (min–max) of the main
ones is listed under the table.

Everything runs on loopback; every process started is stopped by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from nonstop.testing.load import LoadClient  # noqa: E402

JAVA = shutil.which("java") or "java"


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def build(version: str) -> Path:
    out = subprocess.run(["bash", str(ROOT / "examples/app/build.sh"), version], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def load_client(url: str, rate: float) -> LoadClient:
    return LoadClient(url, rate=rate, keepalive=4, new=2, post=2, slow=0, timeout=15)


def wait_port(port: int, timeout: float = 60) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return time.monotonic() - t0
        except OSError:
            time.sleep(0.01)
    raise TimeoutError(f"port {port} never opened")


def app_boot_time(jar: Path) -> float:
    """Spawn → port answering, for the example app alone (what any deploy must wait for)."""
    port = free_ports(1)[0]
    t0 = time.monotonic()
    p = subprocess.Popen([JAVA, "-jar", str(jar), f"--server.port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        return time.monotonic() - t0
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(30)


# -- the seed's script -------------------------------------------------------------
def seed_script(v1: Path, v2: Path, rate: float, settle: float) -> dict:
    """kill -15 the running jar, start the new one on the same public port (no proxy)."""
    port = free_ports(1)[0]
    old = subprocess.Popen([JAVA, "-jar", str(v1), f"--server.port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    new = None
    try:
        wait_port(port)
        with load_client(f"http://127.0.0.1:{port}/", rate) as load:
            load.wait_served(100, timeout=30)
            t0 = time.monotonic()
            old.send_signal(signal.SIGTERM)
            old.wait(60)
            new = subprocess.Popen([JAVA, "-jar", str(v2), f"--server.port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(port)
            wall = time.monotonic() - t0
            time.sleep(settle)
        r = load.result
        return {"scenario": "seed script (kill, then start)", "router": "-", "failed": r.failed, "served": r.served,
                "longest_gap_ms": round(r.longest_gap().seconds * 1000, 1), "deploy_wall_s": round(wall, 2)}
    finally:
        for p in (old, new):
            if p and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                p.wait(30)


# -- nonstop ---------------------------------------------------------------------------
class Nonstop:
    def __init__(self, strategy: str, router: str, tuned: bool, engine=None) -> None:
        """``engine``: a container engine bed (tests/runtimes/containers.py) to run the instances in."""
        self.dir = Path(tempfile.mkdtemp(prefix="nonstop-bench-"))
        listen, a, b, self.dashboard = free_ports(4)
        self.listen = listen
        self.engine = engine
        self.env = {k: engine.env[k] for k in ("DOCKER_HOST", "PATH") if k in engine.env} if engine else {}
        health = {"path": "/actuator/health", "expect_body": "UP", "startup_timeout": "60s"}
        if tuned:
            health.update(interval="25ms", healthy_threshold=1)
        run = {"command": [JAVA, "-jar", "{artifact}", "--server.port={port}"], "ports": f"{a},{b}"}
        if engine is not None:
            run = {"runtime": engine.name, "image": "roomescape:{version}", "container_port": 8080, "ports": f"{a},{b}"}
        cfg = {
            "app": "bench",
            "listen": f"127.0.0.1:{listen}",
            "run": run,
            "health": health,
            "strategy": {"type": strategy, **({"keep_previous": "10m"} if strategy == "blue-green" else {})},
            "router": {"type": router},
            "dashboard": {"listen": f"127.0.0.1:{self.dashboard}"},
        }
        (self.dir / "nonstop.yml").write_text(yaml.safe_dump(cfg))

    def cli(self, *args: str, check: bool = True) -> tuple[float, dict | str]:
        t0 = time.monotonic()
        r = subprocess.run([sys.executable, "-m", "nonstop", "-c", str(self.dir / "nonstop.yml"), *args],
                           capture_output=True, text=True, env={**os.environ, **self.env, "NO_COLOR": "1"})
        took = time.monotonic() - t0
        if check and r.returncode != 0:
            raise RuntimeError(f"nonstop {' '.join(args)}: exit {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        try:
            return took, json.loads(r.stdout)
        except ValueError:
            return took, r.stdout

    def api_rollback(self) -> float:
        """POST /api/rollback to the dashboard with the token, from this process (no CLI start-up):
        what a runbook, a chat-ops bot or `curl` would do. Returns the monotonic time it was sent."""
        token = (self.dir / ".nonstop" / "token").read_text().strip()
        body = b"{}"
        req = (f"POST /api/rollback HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", self.dashboard), timeout=30) as s:
            t = time.monotonic()
            s.sendall(req + body)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
        if not answer.startswith(b"HTTP/1.1 200"):
            body_text = answer.partition(b"\r\n\r\n")[2][:300]
            raise RuntimeError(f"dashboard rollback refused: {body_text!r}")
        return t

    def own_boot(self, release: str) -> tuple[float, float] | None:
        """(seconds from the start to the app's boot line, the boot line's epoch time) for the release's
        last-started instance. A process: the JVM uptime the example app prints when its port is bound
        ("Started App in … (process running for Y)", as Spring does), after nonstop's start marker. A
        container: ``docker run`` (the marker, written just before it) to the boot line's own timestamp
        in ``docker logs -t`` (what the engine needs to create and start it is part of it)."""
        found = None
        for log in sorted((self.dir / ".nonstop" / "logs").glob(f"{release}-*.log")):
            start = uptime = name = None
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("=== nonstop ") and " start instance=" in line:
                    start, uptime = _epoch(line.split()[2]), None
                    m = re.search(r" container=(\S+)", line)
                    name = m.group(1) if m else None
                m = re.search(r"^Started App in .*\(process running for ([\d.]+)\)", line)
                if m:
                    uptime = float(m.group(1))
            if start is None or uptime is None:
                continue
            if self.engine is None or name is None:
                found = (uptime, start + uptime)
                continue
            out = self.engine.cli("logs", "-t", name).stdout
            stamp = next((ln.split(" ", 1)[0] for ln in out.splitlines() if " Started App in " in ln), None)
            if stamp:
                found = (_epoch(stamp) - start, _epoch(stamp))
        return found

    def close(self) -> None:
        self.cli("down", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def _epoch(stamp: str) -> float:
    """``2026-12-01T10:43:54.052572Z`` (to nanoseconds, as docker prints them) → epoch seconds."""
    base, _, frac = stamp.rstrip("Z").partition(".")
    return datetime.strptime(base + "+0000", "%Y-%m-%dT%H:%M:%S%z").timestamp() + float("0." + (frac or "0"))


def _span(events: list[dict]) -> dict:
    by = {}
    for e in events:
        by.setdefault(e["type"], e)
    start, result = by["start"]["ts"], by["result"]["ts"]
    boot = sum(e.get("seconds", 0) for e in events if e["type"] == "instance_healthy")
    spawn = [e["ts"] for e in events if e["type"] == "instance_starting"]
    healthy = [e["ts"] for e in events if e["type"] == "instance_healthy"]
    boot = (max(healthy) - min(spawn)) if spawn and healthy else 0.0
    switch_step = next((e["ts"] for e in events if e["type"] == "step" and e.get("phase") == "switch"), None)
    switched = by.get("switched", {}).get("ts")
    return {
        "agent_span_s": round(result - start, 3),
        "boot_s": round(boot, 3),
        "overhead_ms": round((result - start - boot) * 1000, 1),
        "switch_ms": round((switched - switch_step) * 1000, 1) if switched and switch_step else None,
    }


def nonstop_scenario(strategy: str, router: str, v1: Path, v2: Path, rate: float, settle: float, tuned: bool,
                     app_boot: float, engine=None) -> list[dict]:
    ns = Nonstop(strategy, router, tuned, engine)
    rows = []
    art = (lambda jar: ()) if engine is not None else (lambda jar: ("--artifact", str(jar)))  # containers: the image
    try:
        ns.cli("up", "--detach")
        ns.cli("deploy", "--version", "v1", *art(v1), "--json")
        with load_client(f"http://127.0.0.1:{ns.listen}/", rate) as load:
            load.wait_served(100, timeout=30)
            wall, res = ns.cli("deploy", "--version", "v2", *art(v2), "--json")
            time.sleep(settle)
            rb = None
            own = ns.own_boot("v2")  # now: a container's engine log goes with the container
            if strategy == "blue-green":
                t_cmd = time.monotonic()
                rb_wall, rb_res = ns.cli("rollback", "--json")
                time.sleep(settle)
                rb = (t_cmd, rb_wall, rb_res)
                # again through the dashboard's API: v2's jar deployed anew (a rolled-back release is
                # stopped, not kept warm), then rolled back to the warm v1
                t_redeploy = time.monotonic()
                if engine is None:  # the dashboard API's rollback: measured on the process rows
                    ns.cli("deploy", "--version", "v2-again", *art(v2), "--json")
                    time.sleep(settle)
                    t_api = ns.api_rollback()
                    time.sleep(settle)
        r = load.result
        name = f"nonstop {strategy}" + (" (health 25ms x1)" if tuned else " (health 200ms x2)")
        if engine is not None:
            name += f", {engine.name}"
        span = _span(res["events"])
        switched = next((e["ts"] for e in res["events"] if e["type"] == "switched"), None)
        rows.append({"scenario": name, "router": router, "failed": r.failed, "served": r.served,
                     "longest_gap_ms": round(r.longest_gap().seconds * 1000, 1), "deploy_wall_s": round(wall, 2),
                     **span, "own_boot_s": round(own[0], 3) if own else None,
                     "beyond_own_boot_ms": round((span["agent_span_s"] - own[0]) * 1000, 1) if own else None,
                     "boot_to_switch_ms": round((switched - own[1]) * 1000, 1) if own and switched else None,
                     # the bare JVM's boot is no yardstick for a container's start (own_boot_s is)
                     "beyond_app_boot_ms": round((span["agent_span_s"] - app_boot) * 1000, 1) if engine is None else None})
        if rb:
            t_cmd, rb_wall, rb_res = rb
            recs = sorted((x for x in r.records if x.ok), key=lambda x: x.end)
            after = [x for x in recs if (x.start >= t_cmd - 1e-3 or x.end >= t_cmd) and x.end < t_redeploy]
            last_v2 = max((x.end for x in after if x.version == "v2"), default=None)
            first_v1 = min((x.end for x in after if x.version == "v1"), default=None)
            # the agent's clock is wall time; the load client's is monotonic: same machine, so shift once
            offset = time.time() - time.monotonic()
            t_agent = rb_res["events"][0]["ts"] - offset
            rows.append({"scenario": "  warm rollback v2 → v1" + (f", {engine.name}" if engine else ""), "router": router,
                         "failed": r.failed, "served": r.served,
                         "deploy_wall_s": round(rb_wall, 2),
                         "last_old_response_ms": round((last_v2 - t_cmd) * 1000, 1) if last_v2 else None,
                         "first_new_response_ms": round((first_v1 - t_cmd) * 1000, 1) if first_v1 else None,
                         "last_old_after_agent_ms": round((last_v2 - t_agent) * 1000, 1) if last_v2 else None,
                         **_span(rb_res["events"])})
            if engine is not None:
                return rows
            after = [x for x in recs if x.start >= t_api - 1e-3 or x.end >= t_api]
            last_v2 = max((x.end for x in after if x.version == "v2"), default=None)  # the jar says v2
            first_v1 = min((x.end for x in after if x.version == "v1"), default=None)
            rows.append({"scenario": "  warm rollback v2 → v1, dashboard API", "router": router, "failed": r.failed,
                         "served": r.served,
                         "last_old_response_ms": round((last_v2 - t_api) * 1000, 1) if last_v2 else None,
                         "first_new_response_ms": round((first_v1 - t_api) * 1000, 1) if first_v1 else None})
    finally:
        ns.close()
    return rows


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, Python {platform.python_version()}"


COLS = ["scenario", "router", "failed", "served", "longest_gap_ms", "deploy_wall_s", "agent_span_s", "boot_s",
        "overhead_ms", "beyond_app_boot_ms", "own_boot_s", "beyond_own_boot_ms", "boot_to_switch_ms", "switch_ms",
        "last_old_response_ms", "first_new_response_ms", "last_old_after_agent_ms"]
SPREAD = ("deploy_wall_s", "own_boot_s", "beyond_own_boot_ms", "boot_to_switch_ms", "last_old_response_ms")
"""Figures whose every round is listed under the table (min–max and the values)."""


def table(rows: list[dict]) -> str:
    out = ["| " + " | ".join(COLS) + " |", "|" + "---|" * len(COLS)]
    for r in rows:
        out.append("| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in COLS) + " |")
    return "\n".join(out)


def medians(rounds: list[list[dict]]) -> tuple[list[dict], list[str]]:
    """One row per scenario (in the first round's order): each figure the median over the rounds (failed and
    served: the sum, nothing may hide); and a line per scenario giving the spread of the SPREAD figures."""
    # every round yields the same rows in the same order (a warm rollback's name repeats under each deploy)
    by = list(zip(*rounds))
    out, spread = [], []
    parent = ""
    for runs in by:
        key = (runs[0]["scenario"], runs[0]["router"])
        if not key[0].startswith(" "):
            parent = key[0]
        row = {"scenario": key[0], "router": key[1]}
        for c in COLS[2:]:
            vals = [r[c] for r in runs if isinstance(r.get(c), (int, float))]
            if vals:
                row[c] = sum(vals) if c in ("failed", "served") else round(statistics.median(vals), 3)
        out.append(row)
        parts = []
        for c in SPREAD:
            vals = [r[c] for r in runs if isinstance(r.get(c), (int, float))]
            if len(vals) > 1:
                parts.append(f"{c} {min(vals):g}–{max(vals):g} ({', '.join(f'{v:g}' for v in vals)})")
        if parts:
            name = key[0] if not key[0].startswith(" ") else f"{parent}:{key[0].strip()}"
            spread.append(f"- {name} [{key[1]}]: " + "; ".join(parts))
    return out, spread


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=100)
    ap.add_argument("--routers", default="embedded")
    ap.add_argument("--runtimes", default="process", help="process and/or docker (an own dockerd, started here)")
    ap.add_argument("--rounds", type=int, default=1, help="run every scenario N times, interleaved; report medians")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds of load after each change")
    ap.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    args = ap.parse_args()
    runtimes = args.runtimes.split(",")
    v1, v2 = build("v1"), build("v2")
    boot = app_boot_time(v1)
    print(f"example app boot (spawn → port answering): {boot:.2f}s", flush=True)
    load_before = os.getloadavg()
    dockerd = None
    try:
        if "docker" in runtimes:
            dockerd = start_engine()
        plan = [lambda: [seed_script(v1, v2, args.rate, args.settle)]] if "process" in runtimes else []
        for router in args.routers.split(","):
            for tuned in (False, True):
                if "process" in runtimes:
                    if router == "embedded" and not tuned:  # recreate needs a router that holds requests
                        plan.append(lambda r=router: nonstop_scenario("recreate", r, v1, v2, args.rate, args.settle, False, boot))
                    plan.append(lambda r=router, t=tuned: nonstop_scenario("blue-green", r, v1, v2, args.rate, args.settle, t, boot))
                if dockerd is not None:
                    plan.append(lambda r=router, t=tuned: nonstop_scenario("blue-green", r, v1, v2, args.rate, args.settle, t,
                                                                           boot, engine=dockerd[0]))
        rounds = []
        for n in range(args.rounds):
            rows: list[dict] = []
            for i, scenario in enumerate(plan):
                print(f"[round {n + 1}/{args.rounds}] scenario {i + 1}/{len(plan)}", file=sys.stderr, flush=True)
                rows += scenario()
            rounds.append(rows)
            print(table(rows), flush=True)
    finally:
        if dockerd is not None:
            stop_engine(dockerd)
    rows, spread = medians(rounds)
    load_after = os.getloadavg()
    cmd = f"`.venv/bin/python bench/deploy.py --rate {args.rate:g} --routers {args.routers} --runtimes {args.runtimes}" + (
        f" --rounds {args.rounds}`" if args.rounds > 1 else "`")
    text = (f"\n### bench/deploy.py — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n\n"
            f"{cmd} on {machine()}.\n"
            f"Load: ~{args.rate:g} req/s (keep-alive, new connections, POSTs). App boot alone: {boot:.2f}s. "
            f"Load average (1, 5, 15 min) before → after: {', '.join(f'{x:.2f}' for x in load_before)} → "
            f"{', '.join(f'{x:.2f}' for x in load_after)}.\n"
            + (f"Each figure: the median of {args.rounds} interleaved rounds (failed, served: their sum).\n" if args.rounds > 1 else "")
            + "\n" + table(rows) + "\n"
            + ("\nSpread over the rounds (min–max, then each round):\n" + "\n".join(spread) + "\n" if spread else ""))
    print(text)
    if args.record:
        with open(ROOT / "bench/RESULTS.md", "a") as f:
            f.write(text)
    return 0


def start_engine():
    """An own dockerd in a temp dir (the test bed's, stopped by PID at the end) with roomescape:v1 and :v2."""
    from tests.runtimes.containers import build_example_image, start_dockerd

    root = Path(tempfile.mkdtemp(prefix="nonstop-bench-dockerd-"))
    bed, proc, bridge = start_dockerd(root)
    try:
        for v in ("v1", "v2"):
            build_example_image(bed, v)
    except BaseException:
        stop_engine((bed, proc, bridge))
        raise
    return bed, proc, bridge


def stop_engine(dockerd) -> None:
    from tests.runtimes.containers import stop_dockerd

    stop_dockerd(*dockerd)


if __name__ == "__main__":
    sys.exit(main())
