"""The soak: an hour of blue-green deploys and rollbacks under steady load, losing nothing (issue 10).

    .venv/bin/python bench/soak.py [--minutes 60] [--every 60s] [--rollback-every 5] [--java]
                                   [--record] [--json] [--duration 40s --sample 5s]   # a short run

In a temp dir it writes a nonstop.yml (embedded router, blue-green, the dashboard on), runs
`nonstop up --detach`, deploys v1 and v2 (so the idle "start" sample has the shape of the steady state:
a live color and a warm one), then, for the whole run, drives two loads at the public address:

- A: nonstop.testing.load.LoadClient, ~``--rate`` req/s (default 50) over keep-alive and
  new-connection GETs, POSTs with bodies checked by echo, and back-to-back 1-second requests;
- B: shaped like traffic from a load balancer in front: ~``--lb-rate`` req/s (default 50) on a few
  long-lived keep-alive connections from one address (127.0.0.1), GETs and POSTs, never a cookie
  (LoadClient keeps none), never a new connection per request.

Every ``--every`` (at the middle of each interval, so samples fall between actions) it runs
`nonstop deploy --version vN --artifact …` (v3, v4, …), every ``--rollback-every``th time
`nonstop rollback` instead; each one's exit code and duration are recorded, `status` must then show
the expected release live, and anything else fails the soak. Every ``--sample`` (default 60 s) it
prints one line: RSS and USS of the proxy and of the agent, their open fds, the app's instance
processes, unreaped children, the state dir's size, the loads' counters.

At the end: both loads stop; after ``--idle`` seconds (pooled upstream connections expire after 4 s
idle) an "end" sample; `nonstop down`; then the checks (exit 0 only when all pass): no request failed
(listed with the action they fell in otherwise); every action exit 0; proxy and agent RSS over the
last 10 minutes within ``--max-growth-mb`` of minutes 5-15 (windows scale with shorter runs); fds at
the end, idle, no more than ``--fd-slack`` above the start, idle; the same agent and proxy processes
throughout (a restart would be a crash); no process left: every pid seen (agent, proxy, instances, and
anything whose command line names the temp dir) gone; the listen and instance ports free.

The app is the Python test app (nonstop/testing/app.py) by default — cheaper on 2 cores; ``--java``
runs the example jar (examples/app, `java -Xmx128m -jar`). Ports come from ``--ports`` (default
``$NONSTOP_TEST_PORTS`` or 16000-16999). ``--record`` appends a section to bench/RESULTS.md
(``--results FILE`` elsewhere); ``--json`` prints the whole result on stdout (progress goes to stderr).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import soak_report as report  # noqa: E402
from soak_report import Action, Sample  # noqa: E402
from soak_watch import PidBook, children, figures, log_problems, port_busy  # noqa: E402

from nonstop.agent.releases import artifact_bytes  # noqa: E402
from nonstop.durations import parse_duration  # noqa: E402
from nonstop.testing.load import LoadClient  # noqa: E402
from nonstop.testing.ports import free_ports  # noqa: E402

# One artifact per version, as a build would make: a launcher of the test app whose bytes name the
# version (so each release has its own digest and its own copy under releases/).
_PY_ARTIFACT = """\
# soak artifact {version}
import runpy, sys
sys.path.insert(0, {root!r})
runpy.run_module("nonstop.testing.app", run_name="__main__", alter_sys=True)
"""


class Stack:
    """The soak's nonstop: its temp dir, nonstop.yml, ports, artifacts, and the CLI run against it."""

    def __init__(self, root: Path, ports: list[int], java: bool, dashboard: bool) -> None:
        self.dir = root
        self.listen, a, b, dash = ports
        self.ports = ports
        self.java = java
        self.state = root / ".nonstop"
        if java:
            run = {"command": [shutil.which("java") or "java", "-Xmx128m", "-jar", "{artifact}",
                               "--server.port={port}"]}
            health = {"path": "/actuator/health", "expect_body": "UP", "startup_timeout": "60s"}
        else:
            run = {"command": [sys.executable, "{artifact}", "--port", "{port}", "--version", "{version}"]}
            health = {"path": "/health", "expect_body": "UP", "startup_timeout": "20s"}
        cfg = {
            "app": "soak",
            "listen": f"127.0.0.1:{self.listen}",
            "run": {**run, "ports": f"{a},{b}", "stop_timeout": "10s"},
            "health": health,
            "strategy": {"type": "blue-green", "keep_previous": "10m"},
            "drain_timeout": "30s",
            "hold_timeout": "10s",
            "dashboard": {"listen": f"127.0.0.1:{dash}"} if dashboard else {"enabled": False},
        }
        self.config = root / "nonstop.yml"
        self.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.dashboard = f"127.0.0.1:{dash}" if dashboard else None

    def artifact(self, version: str) -> Path:
        if self.java:
            out = subprocess.run(["bash", str(ROOT / "examples/app/build.sh"), version], check=True,
                                 capture_output=True, text=True, timeout=300)
            return Path(out.stdout.strip().splitlines()[-1])
        path = self.dir / "artifacts" / f"app-{version}.py"
        path.parent.mkdir(exist_ok=True)
        path.write_text(_PY_ARTIFACT.format(version=version, root=str(ROOT)))
        return path

    def cli(self, *args: str, timeout: float = 300) -> tuple[int | None, float, dict | None, str]:
        """Runs ``nonstop -c nonstop.yml ARGS``: (exit code or None on timeout, seconds, its JSON, its output)."""
        t0 = time.monotonic()
        try:
            r = subprocess.run([sys.executable, "-m", "nonstop", "-c", str(self.config), *args], cwd=self.dir,
                               capture_output=True, text=True, timeout=timeout, env={**os.environ, "NO_COLOR": "1"})
        except subprocess.TimeoutExpired as e:
            return None, time.monotonic() - t0, None, f"timed out after {timeout}s: {e.stdout!r} {e.stderr!r}"
        took = time.monotonic() - t0
        try:
            data = json.loads(r.stdout)
        except ValueError:
            data = None
        return r.returncode, took, data, (r.stdout + r.stderr)[-3000:]

    def status(self) -> dict | None:
        code, _, data, _ = self.cli("status", "--json", timeout=60)
        return data if code == 0 else None


def scrape(addr: str) -> int | None:
    """GET /metrics, as a Prometheus would (the metrics path is part of the agent's life): its status."""
    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.settimeout(10)
            s.sendall(f"GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
    except OSError:
        return None
    try:
        return int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def take_sample(stack: Stack, book: PidBook, loads: list[LoadClient], t: float, label: str = "") -> Sample:
    st = stack.status()
    book.note_status(st)
    book.scan()
    agent_pid = (st or {}).get("agent", {}).get("pid")
    proxy_pid = (((st or {}).get("router") or {}).get("detail") or {}).get("pid")
    instances, zombies = children(agent_pid, proxy_pid)
    metrics = scrape(stack.dashboard) if stack.dashboard else None
    return Sample(t=round(t, 1), proxy_pid=proxy_pid, agent_pid=agent_pid,
                  **dict(zip(("proxy_rss", "proxy_uss", "proxy_fds"), figures(proxy_pid))),
                  **dict(zip(("agent_rss", "agent_uss", "agent_fds"), figures(agent_pid))),
                  instances=instances, zombies=zombies, state_bytes=artifact_bytes(stack.state),
                  logs_bytes=artifact_bytes(stack.state / "logs"), served=sum(ld.served for ld in loads),
                  failed=sum(ld.failed for ld in loads), load1=os.getloadavg()[0], live=(st or {}).get("live_release"),
                  label=label, metrics=metrics)


def run_action(stack: Stack, book: PidBook, action: Action, lives: list[str]) -> None:
    """One deploy or rollback; ``lives`` is the stack of releases that went live (a rollback pops one)."""
    if action.kind == "deploy":
        artifact = stack.artifact(action.version)
        args = ("deploy", "--version", action.version, "--artifact", str(artifact), "--json")
    else:
        args = ("rollback", "--json")
    t0 = time.monotonic()
    code, took, data, out = stack.cli(*args)
    action.mono = (t0, time.monotonic())
    action.seconds, action.code = round(took, 3), code
    if data:
        action.agent_seconds, action.reason = data.get("seconds"), str(data.get("reason") or "")
    st = stack.status()
    book.note_status(st)
    action.live = (st or {}).get("live_release")
    if code != 0:
        action.error = f"exit {code}: {out.strip()[-400:]}"
    elif action.live != action.expect_live:
        action.error = f"live is {action.live}, expected {action.expect_live}"
    if action.kind == "deploy" and code == 0:
        lives.append(action.version)
    elif action.kind == "rollback" and code == 0 and len(lives) > 1:
        lives.pop()


def _schedule(duration: float, every: float, sample: float) -> list[tuple[float, str]]:
    """(seconds since the load started, "sample" | "action"), in order: samples on the interval's
    marks and at the very end, actions at the middle of each ``every``."""
    marks = [(k * sample, "sample") for k in range(int(duration // sample + 1e-9) + 1)]
    if marks[-1][0] < duration - 1e-6:
        marks.append((duration, "sample"))
    k, acts = 1, []
    while (k - 0.5) * every < duration:
        acts.append(((k - 0.5) * every, "action"))
        k += 1
    return sorted(marks + acts)


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


def environment() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    hot = subprocess.run([sys.executable, "-c", "from nonstop.proxy import build; print(build.summary())"],
                         capture_output=True, text=True, timeout=60).stdout.strip() or "unknown"
    dirty = _git("status", "--porcelain", "--", "nonstop")
    return {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": _git("rev-parse", "--short", "HEAD") + (" (+ uncommitted changes in nonstop/)" if dirty else ""),
            "machine": f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, "
                       f"Python {platform.python_version()}",
            "hot_path": hot, "load_before": list(os.getloadavg())}


def soak(args: argparse.Namespace, say) -> dict:
    lo, hi = (int(x) for x in args.ports.split("-"))
    root = Path(tempfile.mkdtemp(prefix="nonstop-soak-"))
    stack = Stack(root, free_ports(4, lo, hi), args.java, not args.no_dashboard)
    book = PidBook(str(root))
    env = environment()
    app = ("the Java example app (examples/app, java -Xmx128m -jar)" if args.java
           else "the Python test app (nonstop/testing/app.py; --java for the example jar)")
    say(f"soak: {app}; {args.duration / 60:.3g} min, an action every {args.every:g}s (every "
        f"{report.ordinal(args.rollback_every)} a rollback), a sample every {args.sample:g}s; dir {root}; "
        f"ports {stack.ports}")
    loads = [LoadClient(f"http://127.0.0.1:{stack.listen}/", rate=args.rate, keepalive=4, new=2, post=2, slow=1,
                        slow_ms=1000, timeout=15, seed=1),
             LoadClient(f"http://127.0.0.1:{stack.listen}/", rate=args.lb_rate, keepalive=6, new=0, post=2, slow=0,
                        timeout=15, seed=2)]
    shapes = [f"~{args.rate:g} req/s: 4 keep-alive + 2 new-connection GET workers, 2 POST (echo checked), "
              "1 back-to-back GET /slow?ms=1000",
              f"~{args.lb_rate:g} req/s like a load balancer in front: 6 keep-alive GET + 2 keep-alive POST "
              "workers, one address, no cookies, no new connection per request"]
    samples: list[Sample] = []
    actions: list[Action] = []
    lives: list[str] = []
    started = False
    try:
        code, _, up, out = stack.cli("up", "--detach", "--json", timeout=120)
        if code != 0:
            raise RuntimeError(f"nonstop up: exit {code}\n{out}")
        book.note_status(up)
        for v in ("v1", "v2"):
            setup = Action(0, "deploy", v, v, 0.0)
            run_action(stack, book, setup, lives)
            if not setup.ok:
                raise RuntimeError(f"setup deploy {v}: {setup.error}")
        time.sleep(1.0)
        samples.append(take_sample(stack, book, loads, 0.0, "start"))
        say(report.sample_line(samples[-1]))
        for ld in loads:
            ld.start()
        started = True
        for ld in loads:
            ld.wait_served(20, timeout=30)
        t0 = time.monotonic()
        n, version = 0, 2
        for at, what in _schedule(args.duration, args.every, args.sample):
            time.sleep(max(0.0, t0 + at - time.monotonic()))
            if what == "sample":
                samples.append(take_sample(stack, book, loads, time.monotonic() - t0))
                say(report.sample_line(samples[-1]))
                continue
            n += 1
            if n % args.rollback_every == 0:
                act = Action(n, "rollback", None, lives[-2] if len(lives) > 1 else None, time.monotonic() - t0)
            else:
                version += 1
                act = Action(n, "deploy", f"v{version}", f"v{version}", time.monotonic() - t0)
            run_action(stack, book, act, lives)
            actions.append(act)
            say(f"  action {n}: {act.kind} {act.version or ''} exit {act.code} in {act.seconds:.2f}s"
                f" → live {act.live}" + (f"  FAILED: {act.error}" if act.error else ""))
        results = [ld.stop() for ld in loads]
        started = False
        time.sleep(args.idle)
        samples.append(take_sample(stack, book, loads, time.monotonic() - t0, "end"))
        say(report.sample_line(samples[-1]))
    finally:
        if started:
            for ld in loads:
                try:
                    ld.stop(timeout=60)
                except (RuntimeError, TimeoutError):
                    pass
        book.scan()
        down_code, down_s, _, down_out = stack.cli("down", "--json", timeout=180)
        left = book.wait_gone(20)
        book.kill_left(left)  # found and reported below; ended by pid so the machine is clean either way
        problems = log_problems(stack.state)
    busy = [p for p in stack.ports if port_busy(p)]
    env["load_after"] = list(os.getloadavg())
    say(f"down: exit {down_code} in {down_s:.2f}s; {len(book.seen)} processes seen, {len(left)} left")
    failures = []
    for name, res in zip("AB", results):
        for r in res.failures:
            failures.append({"load": name, "at_s": round(r.start - t0, 3), "kind": r.kind, "error": r.error,
                             "when": report.nearest_action(actions, r.start)})
    failed = sum(r.failed for r in results)
    reasons: dict[str, int] = {}
    for r in results:
        for why, k in r.failure_reasons().items():
            reasons[why] = reasons.get(why, 0) + k
    checks, flat = report.verdicts(samples=samples, actions=actions, duration=args.duration,
                                   max_growth_mb=args.max_growth_mb, fd_slack=args.fd_slack, failed_requests=failed,
                                   failure_reasons=reasons, leftovers=[why for _, why in left], busy_ports=busy,
                                   dashboard=stack.dashboard is not None)
    checks.append(report.Verdict("no traceback or error in the logs", not problems,
                                 "none" if not problems else f"{len(problems)}: " + " | ".join(problems[:5])))
    checks.append(report.Verdict("nonstop down exit 0", down_code == 0,
                                 f"in {down_s:.2f}s" if down_code == 0 else f"exit {down_code}: {down_out[-300:]}"))
    result = {
        "command": args.command, "app": app, "java": args.java, "dashboard": not args.no_dashboard,
        "minutes": round(args.duration / 60, 3), "every_s": args.every, "sample_s": args.sample,
        "rollback_every": args.rollback_every, "dir": str(root), "ports": stack.ports, "environment": env,
        "samples": [asdict(s) for s in samples], "actions": [{**asdict(a), "ok": a.ok} for a in actions],
        "actions_summary": report.action_summary(actions),
        "loads": [{"name": n, "shape": sh, "summary": r.summary(max_failures=50)}
                  for n, sh, r in zip("AB", shapes, results)],
        "failed_requests": failed, "failures": failures, "flatness": flat,
        "processes_seen": {str(pid): role for pid, (_, role) in book.seen.items()},
        "left": [why for _, why in left], "log_problems": problems[:100],
        "down": {"code": down_code, "seconds": round(down_s, 3)},
        "verdicts": [asdict(v) for v in checks], "ok": all(v.ok for v in checks),
    }
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=60, help="length of the loaded run (default 60)")
    p.add_argument("--duration", help="the run's length as a duration (40s, 5m); overrides --minutes")
    p.add_argument("--every", default="60s", help="one deploy or rollback per this (default 60s)")
    p.add_argument("--rollback-every", type=int, default=5, help="every Nth action is a rollback (default 5)")
    p.add_argument("--sample", default="60s", help="memory/fd/process sample interval (default 60s)")
    p.add_argument("--rate", type=float, default=50, help="load A, req/s (default 50)")
    p.add_argument("--lb-rate", type=float, default=50, help="load B (load-balancer shaped), req/s (default 50)")
    p.add_argument("--java", action="store_true", help="the example jar instead of the Python test app")
    p.add_argument("--no-dashboard", action="store_true", help="run without the dashboard (and its /metrics)")
    p.add_argument("--ports", default=os.environ.get("NONSTOP_TEST_PORTS", "16000-16999"),
                   help="the listen, instance and dashboard ports' range (default $NONSTOP_TEST_PORTS or 16000-16999)")
    p.add_argument("--idle", type=float, default=6.0, help="seconds idle before the end sample (default 6)")
    p.add_argument("--max-growth-mb", type=float, default=5.0, help="RSS growth allowed, late vs early (default 5)")
    p.add_argument("--fd-slack", type=int, default=2, help="fds allowed above the start at the end (default 2)")
    p.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    p.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"), help="the file --record appends to")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON on stdout")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (state dir, logs)")
    args = p.parse_args(argv)
    try:
        args.duration = parse_duration(args.duration) if args.duration else args.minutes * 60
        args.every, args.sample = parse_duration(args.every), parse_duration(args.sample)
    except ValueError as e:
        p.error(str(e))
    if args.every <= 0 or args.sample <= 0 or args.duration <= 0:
        p.error("--every, --sample and the duration must be positive")
    if args.rollback_every < 2:
        p.error("--rollback-every: at least 2 (a rollback needs a deploy before it)")
    args.command = "bench/soak.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    out = sys.stderr if args.json else sys.stdout

    def say(line: str) -> None:
        print(line, file=out, flush=True)

    result = soak(args, say)
    for v in result["verdicts"]:
        say(f"{'PASS' if v['ok'] else 'FAIL'}  {v['name']}: {v['detail']}")
    for f in result["failures"][:20]:
        say(f"  failed: load {f['load']} at {f['at_s']}s ({f['kind']}): {f['error']} — {f['when']}")
    say(f"soak: {'PASS' if result['ok'] else 'FAIL'}")
    if args.record:
        with open(args.results, "a") as f:
            f.write(report.section(result))
        say(f"appended to {args.results}")
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        sys.stdout.write("\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
