"""The app's instances: start, health-gate, stop, re-adopt, and keep them alive.

``Fleet`` owns the instance records (in the store) and, through a ``Runtime``
(``runtimes/``: processes, containers), what runs behind them. It never
decides who gets traffic; the supervision loop asks ``on_down`` / ``on_up``
callbacks to take an instance out of, or back into, the split.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

from nonstop.agent import health as healthmod
from nonstop.agent.events import EventBus
from nonstop.agent.liveconfig import LiveConfig
from nonstop.agent import logfiles
from nonstop.agent.commands import render
from nonstop.agent.releases import Releases
from nonstop.agent.runtimes import Handle, InstanceSpec, Runtime, make_runtime
from nonstop.agent.runtimes.process import process_handle
from nonstop.agent.store import InstanceRecord, Release, Store
from nonstop.config import Config
from nonstop.errors import InstanceError

log = logging.getLogger("nonstop.agent")

# Instance states that hold a port and a process.
RUNNING = ("starting", "healthy", "unhealthy", "draining")
CRASH_LOOP_WINDOW = 120.0
CRASH_LOOP_RESTARTS = 5
EXIT_LOOK = 1.0  # seconds between looks for dead instances when the runtime reports no change (processes)


def in_crash_loop(rec: InstanceRecord, now: float) -> bool:
    """Restarted ``CRASH_LOOP_RESTARTS`` times within ``CRASH_LOOP_WINDOW`` seconds."""
    times = (rec.data or {}).get("restart_times", [])
    return sum(1 for t in times if now - t < CRASH_LOOP_WINDOW) >= CRASH_LOOP_RESTARTS


def _state(s: object) -> str:
    return str(getattr(s, "value", s))


@dataclass
class StartFailure:
    instance: str
    reason: str
    checks: list[str]
    log_tail: str


class Fleet:
    """Owns instances: their processes, records, health, restarts."""

    def __init__(self, config: LiveConfig, store: Store, events: EventBus, releases: Releases,
                 runtime: Runtime | None = None) -> None:
        self.config = config
        cfg = config.current
        self.store = store
        self.events = events
        self.releases = releases
        self.runtime = runtime or make_runtime(cfg)
        self.logs_dir = cfg.state_path / "logs"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        self._http = httpx.AsyncClient(timeout=cfg.health.timeout, trust_env=False)  # loopback checks never go through an HTTP_PROXY
        self._busy: set[str] = set()  # instance ids a deployment is acting on; supervision keeps off
        self._restart_tasks: dict[str, asyncio.Task] = {}
        self._going_down: set[str] = set()  # being taken out of the split right now (two loops may see a death)

    @property
    def cfg(self) -> Config:
        return self.config.current

    # -- queries -----------------------------------------------------------
    def running(self, release: str | None = None) -> list[InstanceRecord]:
        return [r for r in self.store.instances(release) if r.state in RUNNING]

    def free_port_count(self) -> int:
        used = {r.port for r in self.running()}
        return sum(1 for p in self.cfg.run.port_list if p not in used)

    def free_ports(self, n: int) -> list[int]:
        used = {r.port for r in self.running()}
        free = [p for p in self.cfg.run.port_list if p not in used]
        if len(free) < n:
            raise InstanceError(
                f"run.ports {self.cfg.run.ports}: need {n} free port(s), only {len(free)} free "
                f"(in use: {sorted(used)})"
            )
        return free[:n]

    @staticmethod
    def addr(rec: InstanceRecord) -> str:
        return f"127.0.0.1:{rec.port}"

    @staticmethod
    def handle(rec: InstanceRecord) -> Handle | None:
        """How the runtime finds ``rec``'s instance (records of older nonstop versions have a pid only)."""
        h = (rec.data or {}).get("handle")
        if h:
            return Handle.from_json(h)
        if rec.pid is None:
            return None
        return process_handle(rec.pid, rec.pid_create_time, rec.started_at)

    @classmethod
    def container(cls, rec: InstanceRecord) -> str | None:
        """The short id (12 hex digits, as ``docker ps`` shows) of ``rec``'s container; None for a process."""
        h = cls.handle(rec)
        if h is None or h.runtime == "process":
            return None
        return str(h.ref.get("id", ""))[:12] or None

    async def alive(self, rec: InstanceRecord) -> bool:
        h = self.handle(rec)
        return bool(h and await self.runtime.alive(h))

    def log_path(self, release: str, port: int):
        return self.logs_dir / f"{release}-{port}.log"

    # -- start ---------------------------------------------------------------
    def _spec(self, release: Release, port: int) -> InstanceSpec:
        run = self.cfg.run
        iid = f"{release.id}@{port}"
        artifact = self.releases.artifact_path(release)
        values = {
            # inside a container the app listens on container_port; {port} names the port it binds
            "port": str(run.container_port if run.containers else port),
            "artifact": str(artifact) if artifact else "",
            "release": release.id,
            "version": release.version,
            "instance": iid,
            "state_dir": str(self.cfg.state_path),
        }
        env = {k: v.format_map(_Default(values)) for k, v in run.env.items()}
        env.setdefault("NONSTOP_RELEASE", release.id)
        env.setdefault("NONSTOP_VERSION", release.version)
        common = dict(
            app=self.cfg.app, id=iid, release=release.id, version=release.version, port=port, env=env,
            log_path=self.log_path(release.id, port), stop_signal=run.stop_signal, stop_timeout=run.stop_timeout,
        )
        if run.containers:
            image = self.releases.image(release)
            if image is None:
                raise InstanceError(f"release {release.id} has no image recorded (it was stored for another runtime)",
                                    detail={"release": release.id})
            argv = tuple(a for arg in run.args for a in render([arg], values, shell=False))
            return InstanceSpec(**common, argv=argv, image=image.id, container_port=run.container_port)
        argv = tuple(render(run.command, values, shell=run.shell))
        cwd = str(self.cfg.path(run.workdir)) if run.workdir else str(self.cfg.base_dir)
        return InstanceSpec(**common, argv=argv, cwd=cwd)

    async def _launch(self, release: Release, port: int, restarts: int = 0) -> InstanceRecord:
        spec = self._spec(release, port)
        h = await self.runtime.start(spec)
        rec = InstanceRecord(
            id=spec.id,
            release=release.id,
            port=port,
            pid=h.ref.get("pid"),
            pid_create_time=h.ref.get("create_time"),
            state="starting",
            started_at=h.started_at,
            slot=None,
            restarts=restarts,
            data={"handle": h.to_json(), **({"image": spec.image} if spec.image else {})},
        )
        self.store.put_instance(rec)
        return rec

    async def start(
        self, release: Release, n: int, deployment_id: int | None, ports: list[int] | None = None
    ) -> list[InstanceRecord]:
        """Start ``n`` instances of ``release`` and wait until all are healthy.

        On any failure every instance started here is stopped and
        ``InstanceError`` explains (health results, log tail)."""
        ports = ports or self.free_ports(n)
        started: list[InstanceRecord] = []
        try:
            for port in ports:
                rec = await self._launch(release, port)
                self._busy.add(rec.id)
                started.append(rec)
                await self.events.emit(
                    deployment_id, "instance_starting", f"starting {rec.id} ({_what(rec)})", instance=rec.id, port=port
                )
            results = await asyncio.gather(*(self._wait_healthy(r, deployment_id) for r in started))
            failures = [f for f in results if isinstance(f, StartFailure)]
            if failures:
                f = failures[0]
                raise InstanceError(
                    f"{f.instance} did not become healthy: {f.reason}",
                    detail={"instance": f.instance, "checks": f.checks, "log_tail": f.log_tail},
                )
            return [self.set_state(r, "healthy") for r in started]
        except BaseException:
            await self.stop(started, deployment_id, reason="start failed")
            raise
        finally:
            for r in started:
                self._busy.discard(r.id)

    async def _wait_healthy(self, rec: InstanceRecord, deployment_id: int | None) -> InstanceRecord | StartFailure:
        hc = self.cfg.health
        t0 = time.monotonic()
        tracker = healthmod.HealthTracker(hc.healthy_threshold, hc.unhealthy_threshold, hc.startup_timeout, t0)
        h = self.handle(rec)
        while True:
            if not await self.runtime.alive(h):
                code = await self.runtime.exit_code(h)
                return await self._failure(rec, tracker, f"{_kind(h)} exited (code {code})" if code is not None else f"{_kind(h)} exited")
            began = time.monotonic()
            res = await healthmod.check_once(hc, "127.0.0.1", rec.port, client=self._http)
            state = _state(tracker.observe(res, time.monotonic()))
            if state == "healthy":
                await self.events.emit(
                    deployment_id,
                    "instance_healthy",
                    f"{rec.id} healthy after {time.monotonic() - t0:.1f}s",
                    instance=rec.id,
                    seconds=round(time.monotonic() - t0, 3),
                )
                return rec
            if state == "failed":
                return await self._failure(rec, tracker, f"not healthy within startup_timeout {hc.startup_timeout:g}s")
            await asyncio.sleep(tracker.wait_before_next(hc.interval, began, time.monotonic()))

    async def _failure(self, rec: InstanceRecord, tracker, reason: str) -> StartFailure:
        checks = [f"{'ok' if r.ok else 'fail'}: {r.detail}" for r in list(tracker.last_results)[-5:]]
        h = self.handle(rec)
        why = await self.runtime.diagnose(h) if h is not None and await self.runtime.alive(h) else None
        if why:
            reason = f"{reason}; {why}"
        return StartFailure(rec.id, reason, checks, logfiles.tail(self.log_path(rec.release, rec.port), 20))

    # -- stop ----------------------------------------------------------------
    async def stop(self, recs: list[InstanceRecord], deployment_id: int | None, *, reason: str = "") -> None:
        """Stop instances (stop_signal, SIGKILL after stop_timeout), concurrently."""

        async def one(rec: InstanceRecord) -> None:
            self._busy.add(rec.id)
            try:
                cur = self.store.get_instance(rec.id) or rec
                h = self.handle(cur)
                how = "gone"
                if h is not None:
                    how = await self.runtime.stop(h, self.cfg.run.stop_signal, self.cfg.run.stop_timeout)
                    await self.runtime.forget(h)
                self.store.update_instance(rec.id, state="stopped")
                await self.events.emit(
                    deployment_id, "instance_stopped", f"stopped {rec.id} ({how}{', ' + reason if reason else ''})", instance=rec.id
                )
            finally:
                self._busy.discard(rec.id)

        await asyncio.gather(*(one(r) for r in recs))

    def set_state(self, rec: InstanceRecord, state: str, **data) -> InstanceRecord:
        """A checked state change (the instance lifecycle table), with ``data`` merged."""
        return self.store.update_instance(rec.id, state=state, data=data)

    # -- adoption after an agent restart ---------------------------------------
    async def adopt(self) -> list[InstanceRecord]:
        """Check every recorded running instance: keep (and take over) the live ones, mark the dead stopped.

        Containers are also found by label: one of ours that the store does not know (an agent killed
        between starting it and recording it) gets no traffic and is stopped."""
        kept = []
        known: set[str] = set()
        for rec in self.running():
            h = self.handle(rec)
            if h is not None:
                known.add(str(h.ref.get("id") or h.ref.get("pid")))
            if h is not None and await self.runtime.adopt(h):
                kept.append(rec)
            else:
                self.set_state(rec, "stopped")
                await self.events.emit(None, "instance_gone", f"{rec.id} was not running when the agent started", instance=rec.id)
        for found in await self.runtime.discover():
            if str(found.handle.ref.get("id")) in known:
                continue
            if found.running:
                await self.runtime.stop(found.handle, self.cfg.run.stop_signal, self.cfg.run.stop_timeout)
                await self.events.emit(None, "instance_gone", f"{found.instance}: a container of ours the store did not "
                                       "know (started just before an agent crash); stopped", instance=found.instance)
            await self.runtime.forget(found.handle)
        return kept

    # -- supervision -----------------------------------------------------------
    async def supervise(
        self,
        routed: Callable[[], set[str]],
        on_down: Callable[[InstanceRecord, str], Awaitable[None]],
        on_up: Callable[[InstanceRecord], Awaitable[None]],
        releases: Callable[[str], Release | None],
        stop_event: asyncio.Event,
    ) -> None:
        """Health-check routed instances forever; take failing ones out and restart them with backoff.

        Health checks run every ``health.interval``. Deaths are also watched on their own, woken by the
        runtime (a container's exit: a pidfd, an engine event), so a dead instance leaves the split within
        milliseconds, never behind an interval or a slow health check of another instance. That matters
        for containers: the engine's port forwarder keeps accepting connections for a dead container and
        closes them after the request was sent, which the proxy cannot retry; a dead process's port
        refuses, and is retried."""
        exits = asyncio.get_running_loop().create_task(self._watch_exits(routed, on_up, on_down, releases, stop_event))
        try:
            await self._health_loop(routed, on_down, on_up, releases, stop_event)
        finally:
            exits.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await exits

    def _supervised(self, rec: InstanceRecord, addrs: set[str]) -> bool:
        """A routed instance serving traffic that nobody else is acting on."""
        return (rec.id not in self._busy and rec.id not in self._restart_tasks and rec.id not in self._going_down
                and rec.state in ("healthy", "unhealthy") and self.addr(rec) in addrs)

    async def _health_loop(self, routed, on_down, on_up, releases, stop_event: asyncio.Event) -> None:
        hc = self.cfg.health
        trackers: dict[str, healthmod.HealthTracker] = {}
        while not stop_event.is_set():
            now = time.monotonic()
            addrs = routed()
            for rec in self.running():
                if rec.id in self._busy or rec.id in self._restart_tasks or rec.id in self._going_down:
                    continue
                if rec.state == "healthy" and rec.data and rec.data.get("retire_at") and rec.data["retire_at"] <= time.time():
                    asyncio.get_running_loop().create_task(self._retire(rec))
                    continue
                if not self._supervised(rec, addrs):
                    trackers.pop(rec.id, None)
                    continue
                if not await self.alive(rec):
                    await self._exited(rec, on_down, on_up, releases)
                    trackers.pop(rec.id, None)
                    continue
                tr = trackers.get(rec.id)
                if tr is None:
                    tr = trackers[rec.id] = healthmod.HealthTracker(
                        1, hc.unhealthy_threshold, hc.startup_timeout, now
                    )
                    # an instance that is routed was healthy already
                    tr.observe(healthmod.CheckResult(True, "adopted", 0.0), now)
                res = await healthmod.check_once(hc, "127.0.0.1", rec.port, client=self._http)
                st = _state(tr.observe(res, time.monotonic()))
                if st == "unhealthy" and self._supervised(self.store.get_instance(rec.id) or rec, routed()):
                    await self._down(rec, f"health check failing: {res.detail}", on_down, on_up, releases)
                    trackers.pop(rec.id, None)
            try:
                await asyncio.wait_for(stop_event.wait(), timeout=hc.interval)
            except asyncio.TimeoutError:
                pass

    async def _watch_exits(self, routed, on_up, on_down, releases, stop_event: asyncio.Event) -> None:
        """Whenever the runtime reports a change: every routed instance that no longer runs, out and restarted."""
        while not stop_event.is_set():
            await _first(stop_event.wait(), self.runtime.wait_changed(EXIT_LOOK))
            addrs = routed()
            for rec in self.running():
                if self._supervised(rec, addrs) and not await self.alive(rec):
                    await self._exited(rec, on_down, on_up, releases)

    async def _exited(self, rec: InstanceRecord, on_down, on_up, releases) -> None:
        if rec.id in self._going_down:
            return
        self._going_down.add(rec.id)
        try:
            h = self.handle(rec)
            # out of the split before anything else: each millisecond is requests sent to it
            await on_down(rec, f"{_kind(h)} exited")
            code = await self.runtime.exit_code(h) if h is not None else None
            why = f"{_kind(h)} exited (code {code})" if code is not None else f"{_kind(h)} exited"
            await self._down(rec, why, None, on_up, releases)
        finally:
            self._going_down.discard(rec.id)

    async def _retire(self, rec: InstanceRecord) -> None:
        if rec.id in self._busy:
            return
        await self.stop([rec], None, reason="keep_previous elapsed")

    async def _down(self, rec, why, on_down, on_up, releases) -> None:
        """Out of the split (``on_down``; None: done already), recorded, restarted in the background."""
        if on_down is not None:
            await on_down(rec, why)
        rec = self.set_state(rec, "unhealthy")
        await self.events.emit(None, "instance_unhealthy", f"{rec.id} taken out of rotation: {why}", instance=rec.id, reason=why)
        self.restart(rec, on_up, releases)

    def restart(self, rec: InstanceRecord, on_up, releases) -> None:
        """Restart ``rec`` on its port in the background (backoff, crash-loop report); ``on_up`` once healthy."""
        if rec.id not in self._restart_tasks:
            self._restart_tasks[rec.id] = asyncio.get_running_loop().create_task(self._restart(rec, on_up, releases))

    async def _restart(self, rec: InstanceRecord, on_up, releases) -> None:
        try:
            history: list[float] = list((rec.data or {}).get("restart_times", []))
            attempt = 0
            while True:
                now = time.time()
                history = [t for t in history if now - t < CRASH_LOOP_WINDOW]
                if len(history) >= CRASH_LOOP_RESTARTS and attempt == 0:
                    await self.events.emit(
                        None,
                        "crash_loop",
                        f"{rec.id} restarted {len(history)} times in {CRASH_LOOP_WINDOW:.0f}s: crash loop",
                        instance=rec.id,
                    )
                # First restart at once; then back off, longer the more it crashed lately.
                recent = len(history)
                delay = 0.0 if attempt == 0 and recent < 2 else min(2.0 ** max(attempt, recent - 2), 30.0)
                await asyncio.sleep(delay)
                h = self.handle(rec)
                if h is not None:
                    if await self.runtime.alive(h):
                        await self.runtime.stop(h, self.cfg.run.stop_signal, self.cfg.run.stop_timeout)
                    await self.runtime.forget(h)
                release = releases(rec.release)
                if release is None:
                    self.set_state(rec, "stopped")
                    return
                history.append(time.time())
                try:
                    new = await self._launch(release, rec.port, restarts=rec.restarts + 1)
                except InstanceError as e:
                    await self.events.emit(None, "instance_unhealthy", f"{rec.id} restart failed: {e.message}", instance=rec.id)
                    attempt += 1
                    continue
                new = self.set_state(new, "starting", restart_times=history)
                await self.events.emit(None, "instance_restarting", f"restarting {new.id} ({_what(new)}, restart #{new.restarts})", instance=new.id)
                res = await self._wait_healthy(new, None)
                if isinstance(res, StartFailure):
                    rec = self.set_state(new, "unhealthy")
                    await self.events.emit(None, "instance_unhealthy", f"{new.id} restart failed: {res.reason}", instance=new.id, log_tail=res.log_tail)
                    attempt += 1
                    continue
                new = self.set_state(new, "healthy")
                await on_up(new)
                return
        finally:
            self._restart_tasks.pop(rec.id, None)

    async def close(self) -> None:
        for t in list(self._restart_tasks.values()):
            t.cancel()
        await self._http.aclose()
        await self.runtime.close()


async def _first(*aws) -> None:
    """Until the first of ``aws`` is done (the others cancelled)."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()


def _kind(h: Handle | None) -> str:
    return "container" if h is not None and h.runtime != "process" else "process"


def _what(rec: InstanceRecord) -> str:
    cid = Fleet.container(rec)
    return f"container {cid}" if cid else f"pid {rec.pid}"


class _Default(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"
