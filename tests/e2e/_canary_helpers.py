"""Helpers for the canary and rolling end-to-end tests.

- ``StickyUsers``: simulated users, each with its own ``nonstop_bucket`` cookie:
  a preset bucket (``buckets``), or none at first and whatever the proxy sets
  kept like a browser keeps it (``browser=True``); optionally an app cookie per
  user (``app_cookies``, for a ``split_key``). (The LoadClient keeps no cookies:
  the production shape of many users behind one load balancer.)
- ``nth_start_fails_artifact``: an artifact whose Nth start never turns healthy.
- ``StatusSampler``: polls ``nonstop status --json`` in a thread.
"""

from __future__ import annotations

import http.client
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.conftest import Stack


@dataclass
class Seen:
    t: float
    user: int
    bucket: int
    status: int | None
    version: str | None
    error: str | None = None


class StickyUsers:
    """``users`` users (buckets spread over 0..99) sending ``rate`` requests/s in total, each over its own keep-alive connection."""

    def __init__(self, host: str, port: int, *, users: int = 20, rate: float = 40.0, headers: dict | None = None,
                 buckets: list[int] | None = None, browser: bool = False, app_cookies: list[str] | None = None) -> None:
        self.host, self.port = host, port
        if app_cookies is not None:
            users = len(app_cookies)
        if browser:
            self.buckets: list[int | None] = [None] * users
        else:
            self.buckets = list(buckets) if buckets is not None else [round(i * 100 / users) for i in range(users)]
        self.app_cookies = app_cookies
        self.set_cookies: dict[int, list[str]] = {}  # per user, every Set-Cookie the proxy sent
        self.rate = rate
        self.headers = headers or {}
        self.seen: list[Seen] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._conns: dict[int, http.client.HTTPConnection] = {}

    def __enter__(self) -> "StickyUsers":
        self._thread = threading.Thread(target=self._run, daemon=True, name="sticky-users")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)
        for c in self._conns.values():
            c.close()

    def _cookie(self, user: int) -> str | None:
        parts = []
        if self.app_cookies is not None:
            parts.append(self.app_cookies[user])
        if self.buckets[user] is not None:
            parts.append(f"nonstop_bucket={self.buckets[user]}")
        return "; ".join(parts) or None

    def _keep(self, user: int, resp) -> None:
        for value in resp.headers.get_all("Set-Cookie") or []:
            self.set_cookies.setdefault(user, []).append(value)
            name, _, rest = value.partition("=")
            if name.strip() == "nonstop_bucket":
                self.buckets[user] = int(rest.split(";", 1)[0])

    def _one(self, user: int) -> Seen:
        t = time.monotonic()
        for attempt in (1, 2):
            conn = self._conns.get(user)
            if conn is None:
                conn = self._conns[user] = http.client.HTTPConnection(self.host, self.port, timeout=15)
            cookie = self._cookie(user)
            bucket = self.buckets[user]
            try:
                conn.request("GET", "/", headers={**({"Cookie": cookie} if cookie else {}), **self.headers})
                resp = conn.getresponse()
                resp.read()
                self._keep(user, resp)
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    self._conns.pop(user, None)
                return Seen(t, user, bucket, resp.status, resp.getheader("X-App-Version"))
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as e:
                # a kept-alive connection closed while idle: reconnect once (what browsers do)
                conn.close()
                self._conns.pop(user, None)
                if attempt == 2:
                    return Seen(t, user, bucket, None, None, repr(e))
            except OSError as e:
                conn.close()
                self._conns.pop(user, None)
                return Seen(t, user, bucket, None, None, repr(e))
        raise AssertionError("unreachable")

    def _run(self) -> None:
        interval = 1.0 / self.rate
        nxt = time.monotonic()
        i = 0
        while not self._stop.is_set():
            self.seen.append(self._one(i % len(self.buckets)))
            i += 1
            nxt += interval
            delay = nxt - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                nxt = time.monotonic()

    # -- figures ----------------------------------------------------------------
    @property
    def failures(self) -> list[Seen]:
        return [s for s in self.seen if s.error or s.status is None or s.status >= 500]

    def versions_by_user(self) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for s in self.seen:
            if s.version:
                out.setdefault(s.user, []).append(s.version)
        return out

    def flips(self) -> dict[int, list[str]]:
        """Per user, the versions in the order they changed (``[v1, v2]`` is one move)."""
        out = {}
        for user, vs in self.versions_by_user().items():
            seq = [vs[0]]
            for v in vs[1:]:
                if v != seq[-1]:
                    seq.append(v)
            out[user] = seq
        return out


_NTH_TEMPLATE = """\
import fcntl, os, runpy, sys
counter = {counter!r}
with open(counter, "a+") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    f.seek(0)
    n = len(f.read().split()) + 1
    f.write("x\\n")
extra = {when_failing!r} if n in {fail_on!r} else []
sys.argv = [sys.argv[0], *sys.argv[1:], *{extra!r}, *extra]
runpy.run_module("nonstop.testing.app", run_name="__main__", alter_sys=True)
"""


def nth_start_fails_artifact(dir: Path, name: str, fail_on: tuple[int, ...], *extra: str,
                             when_failing: tuple[str, ...] = ("--health", "DOWN")) -> Path:
    """An artifact running the test app whose ``fail_on``-th starts (1-based, counted across all instances)
    report DOWN (or run with ``when_failing`` instead: ``("--fail-rate", "0.33")`` makes a faulty one)."""
    dir.mkdir(parents=True, exist_ok=True)
    p = dir / f"{name}.py"
    p.write_text(_NTH_TEMPLATE.format(counter=str(dir / f"{name}.starts"), fail_on=set(fail_on), extra=list(extra),
                                      when_failing=list(when_failing)))
    return p


@dataclass
class StatusSampler:
    """Polls the agent's ``GET /status`` (the document ``nonstop status --json`` prints) every ``interval`` seconds.

    In-process through the CLI's own ``AgentClient``: spawning the CLI costs about a second on
    a busy machine, too slow to catch a short dip in capacity."""

    stack: Stack
    interval: float = 0.1
    samples: list[tuple[float, dict]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="status-sampler")

    def __enter__(self) -> "StatusSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def _run(self) -> None:
        from nonstop.cli.client import AgentClient
        from nonstop.errors import NonstopError

        client = AgentClient(self.stack.state / "agent.sock", timeout=30)
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), client.get("/status")))
            except NonstopError as e:
                self.errors.append(e.message)
            self._stop.wait(self.interval)


def warm(load, n: int = 50, timeout: float = 30.0, stack: Stack | None = None) -> None:
    """``load.wait_served(served + n)``; on a timeout, fail with why the requests failed (and the proxy log tail)."""
    try:
        load.wait_served(load.served + n, timeout=timeout)
    except TimeoutError as e:
        snap = load.snapshot()
        tail = ""
        if stack is not None:
            try:
                tail = (stack.state / "logs" / "proxy.log").read_text()[-1500:]
            except OSError:
                pass
        raise AssertionError(f"{e}\n{snap.format()}\nproxy log tail:\n{tail}") from None


def serving(status: dict) -> int:
    """Healthy, alive, routed instances in a status picture."""
    return sum(1 for i in status.get("instances", []) if i["state"] == "healthy" and i["alive"] and i["routed"])


def canary_of(status: dict) -> dict | None:
    d = status.get("deployment") or {}
    return d.get("canary")
