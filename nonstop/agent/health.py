"""Health checks: one probe (HTTP, TCP or a command) and a pure threshold machine.

``check_once`` does the I/O and never raises for a failing check: every
failure (refused, timeout, wrong status, missing body, non-zero exit) is a
``CheckResult(ok=False, detail=…)`` whose detail reads well in an error
message. ``HealthTracker`` turns a stream of results plus ``now`` into a
state (starting → healthy ⇄ unhealthy, starting → failed when
``startup_timeout`` passes) with no I/O and no clock of its own.
``wait_healthy`` is the thin asyncio loop between them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from enum import Enum
from typing import Callable

import httpx

from nonstop.agent.commands import render
from nonstop.config import HealthConfig
from nonstop.errors import ConfigError

__all__ = ["CheckResult", "HealthState", "HealthTracker", "check_once", "wait_healthy", "DETAIL_MAX"]

DETAIL_MAX = 200
# A booting instance is ready the moment its checks pass; finding out an `interval` later would
# cost every deploy that much. While it boots (its first BOOT_WINDOW seconds, until healthy) it is
# checked every BOOT_POLL at most: the healthy_threshold consecutive passes it needs are counted at
# that cadence, so the gate is as strict as configured (N passes in a row) without waiting N-1
# intervals. Once healthy (supervision) checks are spaced by `interval`.
BOOT_POLL = 0.025
BOOT_WINDOW = 10.0


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one probe: passed or not, why (human text), how long it took (seconds)."""

    ok: bool
    detail: str
    latency: float

    def __str__(self) -> str:
        return f"{'ok' if self.ok else 'fail'}: {self.detail} ({self.latency * 1000:.0f}ms)"


class HealthState(str, Enum):
    STARTING = "starting"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    FAILED = "failed"  # never became healthy within startup_timeout, or the process died while starting

    def __str__(self) -> str:
        return self.value


def _trim(text: str, limit: int = DETAIL_MAX) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- one probe -----------------------------------------------------------------------


def _url(host: str, port: int, path: str) -> str:
    h = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return f"http://{h}:{port}{path}"


def _connect_detail(e: BaseException) -> str:
    # httpx wraps the OSError ("All connection attempts failed"): find the cause.
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ConnectionRefusedError) or "refused" in str(cur).lower():
            return "connection refused"
        if isinstance(cur, ConnectionResetError) or "reset by peer" in str(cur).lower():
            return "connection reset"
        if isinstance(cur, OSError) and cur.strerror:
            return _trim(f"cannot connect: {cur.strerror.lower()}")
        cur = cur.__cause__ or cur.__context__
    return _trim(str(e) or type(e).__name__)


async def _check_http(hc: HealthConfig, host: str, port: int, client: httpx.AsyncClient | None) -> tuple[bool, str]:
    own = client is None
    if own:
        # trust_env=False: an HTTP(S)_PROXY in the environment must not capture loopback checks.
        client = httpx.AsyncClient(timeout=hc.timeout, trust_env=False)
    try:
        try:
            r = await client.get(_url(host, port, hc.path), timeout=hc.timeout)
        except httpx.TimeoutException:
            return False, f"timed out after {hc.timeout:g}s"
        except httpx.ConnectError as e:
            return False, _connect_detail(e)
        except httpx.HTTPError as e:
            return False, _trim(f"{type(e).__name__}: {e}")
        body = r.text
        detail = _trim(f"{r.status_code} {body}")
        if r.status_code != hc.expect_status:
            return False, detail
        if hc.expect_body is not None and hc.expect_body not in body:
            return False, _trim(f"{r.status_code} {body}", DETAIL_MAX - 30) + f" (no {hc.expect_body!r})"
        return True, detail
    finally:
        if own:
            await client.aclose()


async def _check_tcp(hc: HealthConfig, host: str, port: int) -> tuple[bool, str]:
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError as e:
        return False, _connect_detail(e)
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass
    return True, "connected"


async def _check_command(hc: HealthConfig, host: str, port: int) -> tuple[bool, str]:
    assert hc.command is not None
    argv = render(hc.command, {"port": str(port), "host": host}, shell=hc.shell)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # its own group, so a timeout kills whatever it started too
        )
    except FileNotFoundError:
        return False, f"command not found: {argv[0]}"
    except OSError as e:
        return False, _trim(f"cannot run {argv[0]}: {e.strerror or e}")
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), hc.timeout)
    except (asyncio.TimeoutError, asyncio.CancelledError) as e:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except asyncio.TimeoutError:  # pragma: no cover
            pass
        if isinstance(e, asyncio.CancelledError):
            raise
        return False, f"timed out after {hc.timeout:g}s (killed)"
    text = out.decode("utf-8", "replace").strip()
    detail = _trim(f"exit {proc.returncode}" + (f": {text}" if text else ""))
    return proc.returncode == 0, detail


async def check_once(
    hc: HealthConfig, host: str, port: int, *, client: httpx.AsyncClient | None = None
) -> CheckResult:
    """Probe once, per ``hc.type``. Never raises for a failing check (a bad
    ``health.command`` placeholder is a ``ConfigError``, raised)."""
    t0 = time.monotonic()
    try:
        if hc.type == "http":
            coro = _check_http(hc, host, port, client)
        elif hc.type == "tcp":
            coro = _check_tcp(hc, host, port)
        elif hc.type == "command":
            coro = _check_command(hc, host, port)
        else:  # pragma: no cover - the config only allows the three
            raise ConfigError(f"unknown health check type {hc.type!r}", field="health.type")
        # A hard deadline over the whole probe (httpx's timeouts are per phase;
        # a server trickling bytes could outlast them). The command check kills
        # its process itself, slightly before this fires.
        grace = 0.5 if hc.type == "command" else 0.05
        ok, detail = await asyncio.wait_for(coro, hc.timeout + grace)
    except asyncio.TimeoutError:
        ok, detail = False, f"timed out after {hc.timeout:g}s"
    except ConfigError:
        raise
    except Exception as e:  # a probe must not take the agent down; say what happened
        ok, detail = False, _trim(f"{type(e).__name__}: {e}")
    return CheckResult(ok, detail, time.monotonic() - t0)


# -- the pure threshold machine ----------------------------------------------------------


class HealthTracker:
    """Owns one instance's health verdict: consecutive pass/fail counts, the
    startup deadline and the last results (for error messages). Pure: results
    and ``now`` in, state out.

    - starting → healthy after ``healthy_threshold`` consecutive passes;
    - starting → failed when ``now - started_at >= startup_timeout`` before that
      (checked by ``observe`` and ``poll``), or by ``fail()`` (process died);
    - healthy → unhealthy after ``unhealthy_threshold`` consecutive failures;
    - unhealthy → healthy after ``healthy_threshold`` consecutive passes;
    - failed is final.
    """

    def __init__(
        self,
        healthy_threshold: int,
        unhealthy_threshold: int,
        startup_timeout: float,
        started_at: float,
        *,
        keep: int = 10,
        initial: HealthState | str = HealthState.STARTING,
    ) -> None:
        if healthy_threshold < 1 or unhealthy_threshold < 1:
            raise ValueError("thresholds must be at least 1")
        self.healthy_threshold = healthy_threshold
        self.unhealthy_threshold = unhealthy_threshold
        self.startup_timeout = startup_timeout
        self.started_at = started_at
        self.state = HealthState(initial)
        self.passes = 0  # consecutive
        self.failures = 0  # consecutive
        self.reason: str | None = None  # why failed / unhealthy
        self.last_results: deque[CheckResult] = deque(maxlen=keep)

    @property
    def deadline(self) -> float:
        return self.started_at + self.startup_timeout

    def observe(self, result: CheckResult, now: float) -> HealthState:
        self.last_results.append(result)
        if self.state is HealthState.FAILED:
            return self.state
        if result.ok:
            self.passes += 1
            self.failures = 0
        else:
            self.failures += 1
            self.passes = 0
        if self.state in (HealthState.STARTING, HealthState.UNHEALTHY):
            if self.passes >= self.healthy_threshold:
                self.state = HealthState.HEALTHY
                self.reason = None
        elif self.state is HealthState.HEALTHY:
            if self.failures >= self.unhealthy_threshold:
                self.state = HealthState.UNHEALTHY
                self.reason = f"{self.failures} failed check(s) in a row: {result.detail}"
        return self.poll(now)

    def next_delay(self, interval: float, now: float) -> float:
        """How long to wait before the next check: ``interval``, or at most BOOT_POLL while a
        starting instance is not healthy yet (in its first BOOT_WINDOW seconds)."""
        if self.state is HealthState.STARTING and now - self.started_at < BOOT_WINDOW:
            return min(interval, BOOT_POLL)
        return interval

    def wait_before_next(self, interval: float, check_started: float, now: float) -> float:
        """The sleep before the next check: checks *start* every ``next_delay`` (a fixed rate, as a
        Kubernetes probe's period), so a slow check (a cold app's first request) is not followed by a
        whole period more."""
        return max(0.0, self.next_delay(interval, now) - (now - check_started))

    def poll(self, now: float) -> HealthState:
        """Apply the startup deadline without a new result."""
        if self.state is HealthState.STARTING and now - self.started_at >= self.startup_timeout:
            self.state = HealthState.FAILED
            self.reason = f"not healthy within startup_timeout {self.startup_timeout:g}s" + (
                f"; last check: {self.last_results[-1].detail}" if self.last_results else "; no check completed"
            )
        return self.state

    def fail(self, detail: str, now: float | None = None) -> HealthState:
        """Give up (the process died): records ``detail`` as a failed result; final."""
        self.last_results.append(CheckResult(False, detail, 0.0))
        self.state = HealthState.FAILED
        self.reason = detail
        return self.state

    def summary(self, n: int = 5) -> str:
        """The last ``n`` results, oldest first, one per line (for error messages)."""
        return "\n".join(str(r) for r in list(self.last_results)[-n:])


# -- the loop --------------------------------------------------------------------------


async def wait_healthy(
    hc: HealthConfig,
    host: str,
    port: int,
    *,
    started_at: float,
    is_alive: Callable[[], bool],
    clock: Callable[[], float] = time.monotonic,
    client: httpx.AsyncClient | None = None,
    tracker: HealthTracker | None = None,
    sleep: Callable[[float], object] = asyncio.sleep,
) -> HealthState:
    """Check (every ``hc.interval``; faster while booting, see BOOT_POLL) until healthy or failed (startup_timeout, or
    the process died: detail "process exited"). Pass a ``tracker`` to read its
    ``reason`` and ``last_results`` afterwards.

    ``started_at`` is on ``clock``'s scale; an epoch time (like
    ``ProcessHandle.started_at``) with the default monotonic clock is converted.
    """
    if clock is time.monotonic and started_at > 1e9 and clock() < 1e9:
        started_at = clock() - (time.time() - started_at)
    tr = tracker or HealthTracker(hc.healthy_threshold, hc.unhealthy_threshold, hc.startup_timeout, started_at)
    own = client is None and hc.type == "http"
    if own:
        client = httpx.AsyncClient(timeout=hc.timeout, trust_env=False)
    try:
        while True:
            if not is_alive():
                return tr.fail("process exited", clock())
            began = clock()
            result = await check_once(hc, host, port, client=client)
            state = tr.observe(result, clock())
            if state in (HealthState.HEALTHY, HealthState.FAILED):
                return state
            if not is_alive():
                return tr.fail("process exited", clock())
            now = clock()
            await sleep(max(0.0, min(tr.wait_before_next(hc.interval, began, now), tr.deadline - now)))
            if tr.poll(clock()) is HealthState.FAILED:
                return tr.state
    finally:
        if own and client is not None:
            await client.aclose()
