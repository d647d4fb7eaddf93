"""How bench/proxy.py measures one row in one round: start its proxy fresh, then every table's run.

``measure_row`` starts the row's proxy (pinned with ``--pin``), and in this order: the idle-connection
memory (``--hold N``: N keep-alive connections opened one after the other, one request each, the
proxy tree's RSS/USS read while all are open), then for each ``--connections`` count a wrk warm-up
and a measured wrk run (CPU of proxy, backend and wrk over the measured run; the proxy tree's memory
read just before wrk ends, while its connections are open), then with ``--tls`` the new-handshake
load (``tlsload.py``). Then the proxy is stopped. A table that fails says why in its sample; the
others still run.
"""

from __future__ import annotations

import json
import resource
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import backend_servers as backends
from backend_servers import Server, Sizing, StartError, TlsFiles
from proxy_report import (BACKEND_CPU, CLIENT_CPU, ERRORS, KB_PER_CONN, LOAD_CORE, P50, P99, PROXY_CPU, RATE, RSS,
                          RSS_IDLE, USS, Sample)

TLSLOAD = Path(__file__).resolve().parent / "tlsload.py"
LOAD_CPUS, PROXY_CPUS, BOTH_CPUS = {0}, {1}, {0, 1}


@dataclass(frozen=True)
class Target:
    """One row of the comparison: what runs in front of the backend, and with how many workers."""

    name: str
    kind: str  # direct | nginx | haproxy | nonstop
    workers: int


@dataclass
class Bench:
    """What every row of a run shares: settings, the backend, the temp dir, the wrk script, the cert."""

    duration: int
    warmup: int
    connections: tuple[int, ...]
    threads: int
    hold: int
    tls: TlsFiles | None
    handshake_threads: int
    pin: bool
    sizing: Sizing
    backend: Server
    workdir: Path
    lua: Path
    nonstop_help: str | None
    nonstop_error: str | None


def load_key(connections: int) -> str:
    return f"load {connections}"


def table_keys(b: Bench) -> list[str]:
    """The tables of a run, in print order."""
    keys = [load_key(c) for c in b.connections]
    if b.tls:
        keys.append("handshakes")
    if b.hold:
        keys.append("hold")
    return keys


def proxy_cpus(b: Bench, target: Target) -> set[int] | None:
    """--pin: one core of its own for a 1-worker proxy; both cores for more workers (2 cores only)."""
    if not b.pin:
        return None
    return PROXY_CPUS if target.workers == 1 else BOTH_CPUS


def make_server(b: Bench, target: Target) -> Server | None:
    port, cpus = backends.free_port(), proxy_cpus(b, target)
    if target.kind == "direct":
        return None
    if target.kind == "nginx":
        return backends.nginx(target.name.replace(" ", "-"), b.workdir, port, workers=target.workers,
                              backend=b.backend.port, sizing=b.sizing, tls=b.tls, cpus=cpus)
    if target.kind == "haproxy":
        return backends.haproxy(target.name.replace(" ", "-"), b.workdir, port, b.backend.port,
                                threads=target.workers, sizing=b.sizing, tls=b.tls, cpus=cpus)
    if b.nonstop_help is None:
        raise StartError(b.nonstop_error or "nonstop proxy unavailable")
    return backends.nonstop(target.name.replace(" ", "-"), b.workdir, port, b.backend.port, workers=target.workers,
                            help_text=b.nonstop_help, tls=b.tls, cpus=cpus)


def measure_row(b: Bench, target: Target, rnd: int, progress: Callable[[str], None]) -> tuple[dict[str, Sample], str]:
    """Every table's sample of ``target`` in round ``rnd`` (1-based), and the TLS it negotiated."""
    keys = table_keys(b)
    if target.kind == "direct":
        keys = [k for k in keys if k.startswith("load ")]  # the backend itself: no proxy memory to hold
    out: dict[str, Sample] = {}

    def sample(key: str, metrics: dict | None = None, error: str | None = None) -> None:
        out[key] = Sample(target.name, target.kind, target.workers, rnd, metrics or {}, error)

    server: Server | None = None
    try:
        server = make_server(b, target)
        if server is not None:
            server.start()
    except (StartError, OSError) as e:
        for key in keys:
            sample(key, error=str(e))
        if server is not None:
            server.stop()
        return out, ""
    try:
        # hold first, on the fresh proxy: its memory at N connections, not what a larger load left behind
        for key in sorted(keys, key=lambda k: k != "hold"):
            try:
                if key == "hold":
                    metrics = hold(server, b.hold, b.tls is not None)
                    progress(f"held {b.hold}: RSS {metrics[RSS]:.1f} MB")
                elif key == "handshakes":
                    metrics = handshakes(b, server)
                    progress(f"{metrics[RATE]:,.0f} handshakes/s, p99 {metrics[P99]:.2f} ms")
                else:
                    metrics = load(b, server, int(key.split()[1]))
                    progress(f"-c{key.split()[1]}: {metrics[RATE]:,.0f} req/s, p99 {metrics[P99]:.2f} ms")
                sample(key, metrics)
            except (RuntimeError, OSError, ssl.SSLError, subprocess.TimeoutExpired) as e:
                sample(key, error=str(e))
                progress(f"{key}: failed: {e}")
    finally:
        if server is not None:
            server.stop()
    return out, server.negotiated if server is not None else ""


# -- the runs ----------------------------------------------------------------------------


def load(b: Bench, server: Server | None, connections: int) -> dict[str, float]:
    """A wrk warm-up, then the measured wrk run at ``connections``."""
    port = server.port if server is not None else b.backend.port
    tls = server is not None and server.tls
    if b.warmup:
        run_wrk(port, b.warmup, connections, b.threads, b.lua, tls)
    if server is not None:
        server.pin()  # a worker started late (or restarted) gets its core too
    memory: list[tuple[float, float]] = []
    cpu0 = (server.cpu_seconds() if server else 0.0, b.backend.cpu_seconds())
    res, client_s = run_wrk(port, b.duration, connections, b.threads, b.lua, tls,
                            during=(lambda: memory.append(server.memory_mb())) if server else None)
    cpu1 = (server.cpu_seconds() if server else 0.0, b.backend.cpu_seconds())
    n = max(1, res["requests"])
    wall = res["duration_us"] / 1e6
    metrics = {
        RATE: res["requests"] / wall, P50: res["p50_us"] / 1000, P99: res["p99_us"] / 1000,
        ERRORS: sum(res[k] for k in ("connect", "read", "write", "status", "timeout")),
        BACKEND_CPU: (cpu1[1] - cpu0[1]) / n * 1e6, CLIENT_CPU: client_s / n * 1e6,
        LOAD_CORE: 100 * (client_s + cpu1[1] - cpu0[1]) / wall,
    }
    if server is not None:
        metrics[PROXY_CPU] = (cpu1[0] - cpu0[0]) / n * 1e6
        if memory:
            metrics[RSS], metrics[USS] = memory[-1]
    return metrics


def run_wrk(port: int, seconds: int, connections: int, threads: int, lua: Path, tls: bool,
            during: Callable[[], None] | None = None) -> tuple[dict, float]:
    """One wrk run: its ``done()`` figures, and its own CPU seconds. ``during`` is called just before wrk
    ends, while its connections are still open."""
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}/"
    # --timeout 5s: a request slower than wrk's default 2 s would be counted as an error and left out
    # of the latency figures, hiding exactly the tail this bench is about
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s",
           "-s", str(lua), url]
    out, err, rc, cpu = _timed_child(cmd, seconds, during)
    for line in out.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line[len("WRK_JSON "):]), cpu
    raise RuntimeError(f"wrk gave no result (exit {rc}): {err.strip()[-300:] or out[-300:]}")


def handshakes(b: Bench, server: Server | None) -> dict[str, float]:
    """New connections with a full TLS handshake and one request each (``tlsload.py``)."""
    if server is None:
        raise RuntimeError("no TLS server")
    cmd = [sys.executable, str(TLSLOAD), "--port", str(server.port), "--threads", str(b.handshake_threads)]
    if b.warmup:
        _timed_child([*cmd, "--seconds", str(b.warmup)], b.warmup)
    server.pin()
    memory: list[tuple[float, float]] = []
    cpu0 = server.cpu_seconds()
    out, err, rc, _ = _timed_child([*cmd, "--seconds", str(b.duration)], b.duration,
                                   lambda: memory.append(server.memory_mb()))
    cpu1 = server.cpu_seconds()
    for line in out.splitlines():
        if line.startswith("HANDSHAKES_JSON "):
            res = json.loads(line[len("HANDSHAKES_JSON "):])
            break
    else:
        raise RuntimeError(f"tlsload.py gave no result (exit {rc}): {err.strip()[-300:]}")
    if res["resumed"]:
        raise RuntimeError(f"{res['resumed']} handshakes were resumed: not a full-handshake measurement")
    n = max(1, res["handshakes"])
    metrics = {RATE: res["handshakes"] / res["duration_s"], P50: res["p50_ms"], P99: res["p99_ms"],
               ERRORS: res["errors"], PROXY_CPU: (cpu1 - cpu0) / n * 1e6, CLIENT_CPU: res["client_cpu_pct"]}
    if memory:
        metrics[RSS] = memory[-1][0]
    return metrics


def _timed_child(cmd: list[str], seconds: float, during: Callable[[], None] | None = None
                 ) -> tuple[str, str, int, float]:
    """Run ``cmd`` to its end: stdout, stderr, exit code, and its CPU seconds (from the children's rusage:
    it is the only child reaped meanwhile)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if during is not None:
            time.sleep(max(0.5 * seconds, seconds - 0.3))
            if proc.poll() is None:
                during()
        out, err = proc.communicate(timeout=seconds + 60)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return out, err, proc.returncode, cpu


def hold(server: Server | None, n: int, tls: bool) -> dict[str, float]:
    """Open ``n`` keep-alive connections one by one, one request each, and read the proxy tree's memory
    with all of them open and idle."""
    if server is None:
        raise RuntimeError("no proxy")
    idle_rss, _ = server.memory_mb()
    ctx = backends.client_context() if tls else None
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            raw = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            s = ctx.wrap_socket(raw, server_hostname="localhost") if ctx else raw
            socks.append(s)
            s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            _read_answer(s)
        rss, uss = server.memory_mb()
    finally:
        for s in socks:
            s.close()
    return {RSS_IDLE: idle_rss, RSS: rss, USS: uss, KB_PER_CONN: (rss - idle_rss) * 1000 / max(1, n)}


def _read_answer(s: socket.socket) -> None:
    data = b""
    while not (data.startswith(b"HTTP/1.1 200") and data.endswith(b"ok\n")):
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError(f"connection closed after {data[:60]!r}")
        data += chunk
        if len(data) > 65536:
            raise RuntimeError(f"unexpected answer {data[:60]!r}")
