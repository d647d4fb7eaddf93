"""Container runtime: each instance a container of docker or podman, driven through its own CLI.

An instance is ``<engine> run -d`` of the release's image *by id* (the exact
bytes recorded with the release, whatever its tag points at later), published
on ``127.0.0.1:{port}`` (where the router sends its traffic), with no engine
restart policy (the fleet restarts with backoff, as for processes), and
labelled (``runargs.py`` names and labels it, and builds the ``run`` command).

The labels are the whole record: after an agent restart ``discover`` finds
every container of this app and state dir by label (no PID files), and every
change nonstop makes is to a container whose labels say it is its own —
a container nonstop did not start is looked at (is it publishing our port?)
and never touched.

Whether a container runs is answered from ``ContainerStates``, kept current
by the engine's event stream, so ``alive`` costs a dictionary look-up; while
the stream is down, a snapshot at most every ``poll_interval`` stands in.
Sooner than any event, a pidfd on the container's main process (``PidWatch``)
says the moment it exits. Output goes through ``LogFollower`` into the
instance's log file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from nonstop.agent.runtimes import images, inside
from nonstop.agent.runtimes.base import Found, Handle, ImageInfo, InstanceSpec, Runtime, StopResult
from nonstop.agent.runtimes.engine import Engine
from nonstop.agent.runtimes.logfollow import LogFollower
from nonstop.agent.runtimes.pidwatch import PidWatch
from nonstop.agent.runtimes.runargs import (ENV_NAME, LABEL, LABELS, container_name, explain_run_failure, found_of,
                                            run_argv, state_key)
from nonstop.agent.runtimes.states import ContainerState, ContainerStates, exit_status, parse_time_ns, state_from_inspect
from nonstop.agent.runtimes.watch import EventWatch
from nonstop.errors import EngineUnreachable, InstanceError

__all__ = ["ContainerRuntime", "container_name", "LABELS"]

_NO_SUCH = ("no such", "not known", "not found")

log = logging.getLogger("nonstop.runtime.container")


def _now_ns() -> int:
    return time.time_ns()


def _has(words: str, markers: tuple[str, ...]) -> bool:
    low = words.lower()
    return any(m in low for m in markers)


class ContainerRuntime(Runtime):
    """Runs one app's instances as labelled containers of one engine. Owns the state cache and its
    event stream, the pidfds on the containers' main processes, and one log follower per running
    container it watches."""

    poll_interval = 1.0  # seconds between snapshots while the event stream is down
    kill_wait = 10.0  # seconds to wait for a container to die after the kill
    settle_wait = 5.0  # seconds for the engine to see an exit its pidfd already showed

    def __init__(
        self,
        engine: str | Engine = "docker",
        *,
        app: str,
        state_dir: str | Path,
        pull_timeout: float = 20.0,
    ) -> None:
        self.engine = engine if isinstance(engine, Engine) else Engine(engine)
        self.name = self.engine.name
        self.app = app
        self.state_dir = Path(state_dir).resolve()
        self.key = state_key(self.state_dir)
        self.pull_timeout = pull_timeout
        self.states = ContainerStates()
        self.followers: dict[str, LogFollower] = {}
        self.engine_calls = 0  # CLI calls made to answer alive() (the cost the event stream saves)
        self._dirty: asyncio.Event | None = None  # a change the fleet has not looked at yet (wait_changed)
        self.watch = EventWatch(self.engine, self._filters(), self.states, on_change=self._changed)
        self.pids = PidWatch(self._process_exited)
        self.exited: set[str] = set()  # containers whose main process exited (pidfd), whatever the engine says yet
        self._tasks: set[asyncio.Task] = set()
        self._last_poll = 0.0
        self._starting = 0  # starts in flight

    # -- labels ----------------------------------------------------------------------
    def _filters(self) -> list[str]:
        return ["--filter", f"label={LABEL['app']}={self.app}", "--filter", f"label={LABEL['state']}={self.state_dir}"]

    def _ours(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return labels.get(LABEL["app"]) == self.app and labels.get(LABEL["state"]) == str(self.state_dir)

    def cursor_path(self, cid: str) -> Path:
        return self.state_dir / "containers" / f"{cid}.cursor"

    @staticmethod
    def _cid(handle: Handle) -> str:
        return str(handle.ref.get("id") or "")

    # -- observations ------------------------------------------------------------------
    async def _inspect(self, *ids: str) -> list[dict]:
        docs = await self.engine.json("container", "inspect", *ids) if ids else None
        return [d for d in docs or [] if isinstance(d, dict)]

    async def _observe(self, cid: str) -> ContainerState | None:
        """Look at one container now (one CLI call); None when the engine has no such container."""
        as_of = _now_ns()
        docs = await self._inspect(cid)
        if not docs:
            old = self.states.get(cid)
            self.states.observe(cid, ContainerState(False, old.exit_code if old else None, as_of, removed=True))
            return None
        st = state_from_inspect(docs[0], as_of)
        self.states.observe(cid, st)
        self._track(docs[0])
        return st

    async def _ours_docs(self) -> list[dict]:
        """Every container of this app and state dir, running or not, as ``inspect`` documents."""
        as_of = _now_ns()
        res = await self.engine.run("ps", "-a", "-q", "--no-trunc", *self._filters())
        if not res.ok:
            raise InstanceError(f"{self.name} ps failed: {res.words}")
        ids = [l.strip() for l in res.out.splitlines() if l.strip()]
        docs = [d for d in await self._inspect(*ids) if self._ours((d.get("Config") or {}).get("Labels"))]
        seen = set()
        for d in docs:
            seen.add(d["Id"])
            self.states.observe(d["Id"], state_from_inspect(d, as_of))
            self._track(d)
        # Ours but not listed: removed behind our back. Not while a start runs: its container may
        # have been created after the list was taken.
        for cid, st in list(self.states.by_id.items()) if not self._starting else []:
            if cid not in seen and not st.removed and st.as_of_ns < as_of:
                self.states.observe(cid, ContainerState(False, st.exit_code, as_of, removed=True))
        return docs

    def _track(self, doc: Mapping[str, Any]) -> None:
        """Watch a running container's main process (once), when it is a process of this host."""
        st = doc.get("State") or {}
        cid = str(doc.get("Id") or "")
        if cid and st.get("Running") and cid not in self.exited and not self.pids.watching(cid):
            self.pids.watch(cid, int(st.get("Pid") or 0), parse_time_ns(str(st.get("StartedAt") or "")))

    def _process_exited(self, cid: str) -> None:
        self.exited.add(cid)
        self.watch.poke()

    async def _learn_pid(self, cid: str) -> None:
        with contextlib.suppress(EngineUnreachable, InstanceError):
            await self._observe(cid)

    async def _engine_caught_up(self, cid: str) -> None:
        """After a pidfd showed the exit: until the engine shows it too (it may still say "running"
        for a few milliseconds, and would refuse to remove the container or reuse its port)."""
        deadline = time.monotonic() + self.settle_wait
        while time.monotonic() < deadline:
            st = await self._observe(cid)
            if st is None or not st.running:
                return
            await self.watch.wait_changed(min(0.2, max(0.0, deadline - time.monotonic())))

    # -- start ---------------------------------------------------------------------
    async def start(self, spec: InstanceSpec) -> Handle:
        if not spec.image:
            raise InstanceError(f"instance {spec.id}: no image (run.image, or deploy --image)", detail={"instance": spec.id})
        if not spec.container_port:
            raise InstanceError(f"instance {spec.id}: no container_port", detail={"instance": spec.id})
        bad = [k for k in spec.env if not ENV_NAME.match(k)]
        if bad:
            raise InstanceError(f"instance {spec.id}: run.env name {bad[0]!r} is not a valid variable name")
        self.watch.ensure()
        name = container_name(self.app, spec.release, spec.port, self.key)
        self._starting += 1
        try:
            # two independent looks at the engine, each a few CLI calls: side by side
            await asyncio.gather(self._refuse_taken_port(spec), self._clear_leftover(spec, name))
            return await self._run(spec, name)
        except EngineUnreachable as e:
            raise InstanceError(f"instance {spec.id}: {e.message}", detail={"instance": spec.id}) from e
        finally:
            self._starting -= 1

    async def _refuse_taken_port(self, spec: InstanceSpec) -> None:
        """A running container (anyone's) publishing our host port would get this instance's traffic."""
        res = await self.engine.run("ps", "-q", "--no-trunc")
        ids = [l.strip() for l in res.out.splitlines() if l.strip()] if res.ok else []
        for doc in await self._inspect(*ids):
            ports = (doc.get("NetworkSettings") or {}).get("Ports") or {}
            for bindings in ports.values():
                for b in bindings or []:
                    if str(b.get("HostPort")) == str(spec.port):
                        cname = str(doc.get("Name", "")).lstrip("/")
                        whose = (
                            "a nonstop instance of this app"
                            if self._ours((doc.get("Config") or {}).get("Labels"))
                            else "not started by this nonstop"
                        )
                        raise InstanceError(
                            f"instance {spec.id}: port {spec.port} is already published by container {cname} "
                            f"({doc['Id'][:12]}, {whose}); stop it or choose other run.ports",
                            detail={"instance": spec.id, "port": spec.port, "container": cname},
                        )

    async def _clear_leftover(self, spec: InstanceSpec, name: str) -> None:
        """A stopped container of ours with this name (an earlier run of this instance) goes first;
        one that is not ours is never touched."""
        docs = await self._inspect(name)
        if not docs:
            return
        doc = docs[0]
        if not self._ours((doc.get("Config") or {}).get("Labels")):
            raise InstanceError(
                f"instance {spec.id}: a container named {name} exists and was not started by nonstop for this "
                "state dir; it is left alone: remove or rename it",
                detail={"instance": spec.id, "container": name},
            )
        if (doc.get("State") or {}).get("Running") and doc["Id"] in self.exited:
            await self._engine_caught_up(doc["Id"])
            doc = (await self._inspect(doc["Id"]) or [doc])[0]
        if (doc.get("State") or {}).get("Running"):
            raise InstanceError(
                f"instance {spec.id}: container {name} of this app is still running", detail={"instance": spec.id}
            )
        await self._remove(doc["Id"])

    async def _run(self, spec: InstanceSpec, name: str) -> Handle:
        log_path = Path(spec.log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        argv, cli_env = run_argv(spec, name, self.app, self.state_dir, self.engine.dialect)
        now = time.time()
        stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        shown = shlex.join(spec.argv).replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
        with open(log_path, "ab") as f:
            f.write(
                f"=== nonstop {stamp} start instance={spec.id} release={spec.release} port={spec.port} "
                f"image={spec.image} container={name} engine={self.name} args={shown}\n".encode()
            )
        as_of = _now_ns()
        res = await self.engine.run(*argv, env=cli_env, timeout=120.0)
        if not res.ok:
            msg = explain_run_failure(spec, self.name, res.words)
            with open(log_path, "ab") as f:
                f.write(f"=== nonstop: {msg}\n".encode())
            # a container created but not started (its port could not be bound) is ours: remove it
            docs = await self._inspect(name)
            if docs and self._ours((docs[0].get("Config") or {}).get("Labels")):
                await self._remove(docs[0]["Id"])
            raise InstanceError(msg, detail={"instance": spec.id, "engine": self.name, "image": spec.image})
        cid = res.out.strip().splitlines()[-1].strip()
        self.states.started(cid, as_of)
        self._follow(cid, log_path)
        task = asyncio.get_running_loop().create_task(self._learn_pid(cid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        ref = {
            "id": cid,
            "name": name,
            "log": str(log_path.resolve()),
            "port": spec.port,
            "container_port": spec.container_port,
        }
        return Handle(self.name, ref, now)

    def _follow(self, cid: str, log_path: Path) -> None:
        if cid in self.followers and self.followers[cid].running:
            return
        f = LogFollower(
            self.engine,
            cid,
            log_path,
            self.cursor_path(cid),
            still_running=lambda: bool((s := self.states.get(cid)) and s.running),
        )
        self.followers[cid] = f
        f.start()

    # -- watch -----------------------------------------------------------------------
    async def alive(self, handle: Handle) -> bool:
        cid = self._cid(handle)
        if not cid or cid in self.exited:
            return False
        self.watch.ensure()
        st = self.states.get(cid)
        if st is not None and (self.watch.watching or st.removed):
            return st.running
        try:
            if not self.watch.watching and time.monotonic() - self._last_poll >= self.poll_interval:
                self._last_poll = time.monotonic()
                self.engine_calls += 2
                await self._ours_docs()
                st = self.states.get(cid)
            if st is None:
                self.engine_calls += 1
                st = await self._observe(cid)
        except (EngineUnreachable, InstanceError) as e:
            log.warning("%s: cannot tell whether %s runs: %s", self.name, handle.ref.get("name"), e)
            st = self.states.get(cid)
        return bool(st and st.running)

    def _changed(self) -> None:
        if self._dirty is None:
            self._dirty = asyncio.Event()
        self._dirty.set()

    async def wait_changed(self, timeout: float) -> None:
        """Level-triggered: a change since the last call (while the caller was busy) returns at once."""
        self.watch.ensure()
        if self._dirty is None:
            self._dirty = asyncio.Event()
        try:
            await asyncio.wait_for(self._dirty.wait(), timeout)
        except asyncio.TimeoutError:
            pass  # without a stream, alive() polls (at most every poll_interval)
        self._dirty.clear()

    async def exit_code(self, handle: Handle) -> int | None:
        cid = self._cid(handle)
        st = self.states.get(cid)
        if cid in self.exited and (st is None or st.running):
            await self._engine_caught_up(cid)  # the pidfd was first; the code is the engine's to tell
            st = self.states.get(cid)
        if st is None or (st.running is False and st.exit_code is None and not st.removed):
            try:
                st = await self._observe(cid) or self.states.get(cid)
            except EngineUnreachable:
                return None
        if st is None or st.running:
            return None
        return exit_status(st.exit_code)

    async def adopt(self, handle: Handle) -> bool:
        cid = self._cid(handle)
        if not cid:
            return False
        try:
            st = await self._observe(cid)
        except EngineUnreachable:
            return False
        if st is None or not st.running:
            return False
        self.watch.ensure()
        if handle.ref.get("log"):
            self._follow(cid, Path(str(handle.ref["log"])))
        return True

    async def discover(self) -> list[Found]:
        self.watch.ensure()
        return [f for f in (found_of(doc, self.name) for doc in await self._ours_docs()) if f is not None]

    # -- stop ------------------------------------------------------------------------
    async def _wait_exit(self, cid: str, timeout: float) -> bool:
        """Until the container has stopped (events, or a look every half second); False on timeout."""
        deadline = time.monotonic() + timeout
        last_look = time.monotonic()
        while True:
            st = self.states.get(cid)
            if cid in self.exited or (st is not None and not st.running):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await self.watch.wait_changed(min(left, 0.5))
            if not self.watch.watching or time.monotonic() - last_look >= 2.0:
                last_look = time.monotonic()
                if await self._observe(cid) is None:
                    return True

    async def stop(self, handle: Handle, signal_name: str, timeout: float) -> StopResult:
        cid = self._cid(handle)
        if not cid:
            return "gone"
        self.watch.ensure()
        try:
            if cid in self.exited:
                await self._engine_caught_up(cid)
            st = await self._observe(cid)
            if st is None or not st.running:
                await self._retire(cid)
                return "gone"
            res = await self.engine.run("kill", "--signal", signal_name, cid)
            if not res.ok and not _has(res.words, ("is not running", "no such", "not known")):
                raise InstanceError(f"{self.name} kill {handle.ref.get('name')}: {res.words}")
            how: StopResult = "exited"
            if not await self._wait_exit(cid, timeout):
                how = "killed"
                await self.engine.run("kill", "--signal", "SIGKILL", cid)
                await self._wait_exit(cid, self.kill_wait)
            await self._retire(cid)
            return how
        except EngineUnreachable as e:
            raise InstanceError(f"cannot stop {handle.ref.get('name')}: {e.message}") from e

    async def _retire(self, cid: str) -> None:
        """After it stopped: the rest of its output into the log, then the container removed."""
        self.pids.forget(cid)
        f = self.followers.pop(cid, None)
        if f is not None:
            await f.finish()
        await self._remove(cid)
        self.cursor_path(cid).unlink(missing_ok=True)

    async def _remove(self, cid: str) -> None:
        res = await self.engine.run("rm", "-f", cid)
        if not res.ok and not _has(res.words, _NO_SUCH):
            log.warning("%s rm %s: %s", self.name, cid[:12], res.words)

    async def forget(self, handle: Handle) -> None:
        cid = self._cid(handle)
        if not cid:
            return
        try:
            if cid in self.exited:
                await self._engine_caught_up(cid)
            docs = await self._inspect(cid)
        except EngineUnreachable:
            return
        if docs and (docs[0].get("State") or {}).get("Running"):
            return  # still running: not ours to forget
        if docs and not self._ours((docs[0].get("Config") or {}).get("Labels")):
            return
        await self._retire(cid)
        self.states.forget(cid)
        self.exited.discard(cid)

    # -- engine and images -------------------------------------------------------------
    async def check(self) -> list[str]:
        if not self.engine.resolved_binary():
            return [self.engine._missing().message]
        try:
            # docker: `version` (20.10's `info` hides "Cannot connect" behind a template error);
            # podman: `info` opens the storage, which is what can fail without a service
            res = await self.engine.run(*(("version",) if self.name == "docker" else ("info", "--format", "json")), timeout=15.0)
        except EngineUnreachable as e:
            return [e.message]
        if not res.ok:
            return [f"{self.name} engine at {self.engine.where()} is not usable: {res.words}"]
        return []

    async def resolve_image(self, ref: str) -> ImageInfo:
        return await images.resolve_image(self.engine, ref, self.pull_timeout)

    async def remove_image(self, image_id: str) -> None:
        await images.remove_image(self.engine, image_id)

    # -- diagnosis -----------------------------------------------------------------------
    async def listening(self, handle: Handle) -> set[inside.Listener] | None:
        """What listens inside the container now (None: not running, or not readable here)."""
        docs = await self._inspect(self._cid(handle))
        pid = int(((docs[0].get("State") or {}).get("Pid") or 0)) if docs else 0
        return inside.listeners(pid) if pid > 0 else None

    async def listening_ports(self, handle: Handle) -> set[int] | None:
        found = await self.listening(handle)
        return None if found is None else {l.port for l in found}

    async def diagnose(self, handle: Handle) -> str | None:
        """Why health checks may keep failing, as a sentence for the user (None: nothing to say)."""
        cp = handle.ref.get("container_port")
        if not cp:
            return None
        try:
            return inside.describe_listening(int(cp), await self.listening(handle))
        except EngineUnreachable:
            return None

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        self.pids.close()
        await self.watch.close()
        for f in list(self.followers.values()):
            await f.close()
        self.followers.clear()
