"""The agent process: wires the parts, recovers after a restart, supervises, serves the control API.

Lifecycle (bounded and in a fixed order, like uvicorn's):
start: state dir → store → router (adopt or start the proxy) → adopt
instances → recover an interrupted deployment → bring the live release up
→ control API. Stop (SIGTERM): stop serving, cancel the running
deployment (its saved phase lets the next agent finish it), leave the proxy
and the instances running. ``down``: drain and stop instances and the proxy
too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from nonstop import __version__
from nonstop.agent.api import AgentServer, make_app
from nonstop.agent.deployer import LIVE, Deployer
from nonstop.agent.liveconfig import LiveConfig
from nonstop.agent.stats_history import StatsHistory
from nonstop.agent.strategies.run import Parts
from nonstop.agent.events import EventBus
from nonstop.agent.fleet import Fleet, in_crash_loop
from nonstop.agent.notify import Notifier
from nonstop.agent.releases import Releases
from nonstop.agent.routers import make_router
from nonstop.agent.store import Store
from nonstop.agent.traffic import Side, Split, Traffic
from nonstop.config import Config
from nonstop.errors import NonstopError, RouterError
from nonstop.unixsock import reachable

log = logging.getLogger("nonstop.agent")

ROUTER_POLL = 0.05  # seconds between looks at the router's process
ROUTER_ASK_EVERY = 20  # ...and every this many, an admin call (it may hang without dying)


class Agent:
    """Owns the agent's parts and its lifecycle; each part owns one thing."""

    def __init__(self, cfg: Config) -> None:
        self.config = LiveConfig(cfg)
        self.state = cfg.state_path
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "logs").mkdir(exist_ok=True)
        self.store = Store(self.state / "nonstop.db")
        self.events = EventBus(self.store)
        self.router = make_router(cfg, self.state)
        self.releases = Releases(self.state, self.store)
        self.fleet = Fleet(self.config, self.store, self.events, self.releases)
        self.traffic = Traffic(self.router, self.store)
        self.stats = StatsHistory(self.router.stats)
        self.deployer = Deployer(
            Parts(self.config, self.store, self.events, self.fleet, self.traffic, self.releases, self.router, self.stats)
        )
        init_surface(self, cfg)
        self._tasks: list[asyncio.Task] = []
        self.acme = None  # certificates from ACME (tls.acme), issued and renewed in the background
        if cfg.tls is not None and cfg.tls.acme is not None:
            from nonstop.agent.acme import AcmeManager

            self.acme = AcmeManager(cfg.tls.acme, self.state, base_dir=cfg.base_dir, on_result=self._acme_result)

    @property
    def cfg(self) -> Config:
        return self.config.current

    async def _acme_result(self, result) -> None:
        """An issuance or renewal ended: say so (events, dashboard, webhooks); the first certificate goes to
        the proxy at once (renewals replace the same files, which the proxy re-reads by itself)."""
        await self.events.emit(None, **result.event())
        router = self.router
        if getattr(result, "cert", None) and getattr(router, "acme_pair", "n/a") is None:
            router.acme_pair = (str(self.acme.paths.fullchain), str(self.acme.paths.privkey))
            pc = router.proxy_config()
            try:
                await router.client.put_tls([
                    {"field": f, "cert": c, "key": k} for f, c, k in zip(pc.tls_fields, pc.tls_certs, pc.tls_keys)
                ])
            except NonstopError as e:
                log.error("could not give the new certificate to the proxy: %s", e.message)

    # -- start -------------------------------------------------------------------
    async def start(self) -> None:
        log.info("agent starting app=%s state_dir=%s router=%s", self.cfg.app, self.state, self.router.type)
        if self.acme is not None and self.acme.has_files() and hasattr(self.router, "acme_pair"):
            self.router.acme_pair = (str(self.acme.paths.fullchain), str(self.acme.paths.privkey))
        await self.router.start()
        self.traffic.load()
        await self.fleet.adopt()
        await self.deployer.recover()
        await self._bring_up_live()
        loop = asyncio.get_running_loop()
        self._tasks.append(
            loop.create_task(
                self.fleet.supervise(
                    routed=lambda: self.traffic.split.routed_addrs,
                    on_down=self._instance_down,
                    on_up=self._instance_up,
                    releases=self.store.get_release,
                    stop_event=self.stopping,
                )
            )
        )
        self._tasks.append(loop.create_task(self._watch_router()))
        self._tasks.append(loop.create_task(self.stats.feed(self.stopping)))
        if self.acme is not None:
            self._tasks.append(loop.create_task(self.acme.run(self.stopping)))
        log.info("agent ready")

    async def _bring_up_live(self) -> None:
        """The live release running and routed again (after `down`, a reboot, a crash of the agent)."""
        live_id = self.traffic.live_release or self.store.get_meta(LIVE)
        release = self.store.get_release(live_id) if live_id else None
        if release is None:
            await self.traffic.reapply()
            return
        alive = {Fleet.addr(r) for r in self.fleet.running(live_id) if await self.fleet.alive(r)}
        routed = self.traffic.split.routed_addrs
        if alive & routed:
            # Routed instances that died while no agent watched: out of the split, restarted like any crash.
            dead = routed - alive
            split = self.traffic.split
            for addr in dead:
                split = split.without_addr(addr)
            await self.traffic.set(split)
            latest: dict[str, object] = {}
            for rec in sorted(self.store.instances(), key=lambda r: r.started_at):
                if Fleet.addr(rec) in dead:
                    latest[Fleet.addr(rec)] = rec
            for rec in latest.values():
                await self.events.emit(None, "instance_gone", f"{rec.id} died while the agent was away: restarting it", instance=rec.id)
                self.fleet.restart(rec, self._instance_up, self.store.get_release)
            return
        await self.events.emit(None, "up", f"starting the live release {live_id}")
        try:
            recs = await self.fleet.start(release, self.cfg.run.instances, None)
        except NonstopError as e:
            await self.events.emit(None, "error", f"could not start the live release {live_id}: {e.message}", **e.detail)
            return
        await self.traffic.set(Split(stable=Side(live_id, tuple(Fleet.addr(r) for r in recs)), sticky=self.traffic.split.sticky))

    async def _instance_down(self, rec, why: str) -> None:
        await self.traffic.set(self.traffic.split.without_addr(Fleet.addr(rec)))

    async def _instance_up(self, rec) -> None:
        await self.traffic.set(self.traffic.split.with_addr(rec.release, Fleet.addr(rec)))
        await self.events.emit(None, "instance_back", f"{rec.id} healthy again, back in rotation", instance=rec.id)

    async def _watch_router(self) -> None:
        """The proxy is its own process: if it dies, start a new one and push the split again.

        Its death is seen within ``ROUTER_POLL`` (a look at the process, no call); the listening sockets
        the agent holds keep new connections waiting in the kernel's backlog meanwhile. Once a second the
        router is also asked whether it answers."""
        n = 0
        while not self.stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=ROUTER_POLL)
            if self.stopping.is_set():
                return
            n += 1
            if not self.router.quickly_dead() and (n % ROUTER_ASK_EVERY or await self.router.alive()):
                continue
            await self.events.emit(None, "router_down", f"{self.router.type} router is not answering: restarting it")
            try:
                await self.router.start()
                await self.traffic.reapply()
                await self.events.emit(None, "router_up", f"{self.router.type} router restarted")
            except NonstopError as e:
                log.error("router restart failed: %s", e.message)

    # -- stop ----------------------------------------------------------------------
    async def stop(self) -> None:
        """Agent exit: instances and proxy keep running (a later agent re-adopts them)."""
        self.stopping.set()
        if self.deployer.task and not self.deployer.task.done():
            self.deployer.task.cancel()
            with contextlib.suppress(BaseException):
                await self.deployer.task
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        await self.fleet.close()

    async def down(self) -> None:
        """Drain and stop everything: instances, router, then the agent itself."""
        log.info("down: draining and stopping")
        self.stopping.set()
        if self.deployer.task and not self.deployer.task.done():
            self.deployer.task.cancel()
            with contextlib.suppress(BaseException):
                await self.deployer.task
        recs = self.fleet.running()
        # The proxy stops first (it stops accepting and finishes in-flight requests),
        # so no request is sent to an instance that is being stopped.
        with contextlib.suppress(RouterError):
            await self.router.stop()
        await self.fleet.stop(recs, None, reason="down")
        self.down_requested = True

    # -- status ----------------------------------------------------------------------
    async def status(self) -> dict:
        split = self.traffic.split
        table = split.table()
        routed = table.addrs
        now = time.time()
        instances = []
        for r in self.fleet.running():
            retire_at = (r.data or {}).get("retire_at")
            instances.append(
                {
                    "id": r.id,
                    "release": r.release,
                    "port": r.port,
                    "pid": r.pid,
                    "container": Fleet.container(r),
                    "state": r.state,
                    "alive": await self.fleet.alive(r),
                    "routed": Fleet.addr(r) in routed,
                    "uptime": round(now - r.started_at, 1),
                    "restarts": r.restarts,
                    "crash_loop": in_crash_loop(r, now),
                    "warm_until": retire_at,
                }
            )
        dep = self.store.active_deployment()
        return {
            "app": self.cfg.app,
            "listen": self.cfg.listen,
            "agent": {"pid": os.getpid(), "started_at": self.started_at, "version": __version__},
            "versions": {"agent": __version__, "proxy": getattr(self.router, "proxy_version", None)},
            "router": vars(self.router.info()),
            "dashboard": _read(self.state / "dashboard.url"),
            "live_release": self.traffic.live_release,
            "routes": [
                {"release": rel.name, "weight": rel.weight, "targets": [t.addr for t in rel.targets]} for rel in table.releases
            ],
            "instances": instances,
            "deployment": _dep_json(dep, self.deployer.current) if dep else None,
            "tls": await self._tls_status(),
        }

    async def _tls_status(self) -> dict | None:
        """HTTPS: where, which certificates the proxy serves (names, expiry), and ACME's state (with the CA's
        own words when it refused)."""
        t = self.cfg.tls
        if t is None:
            return None
        served = None
        client = getattr(self.router, "client", None)
        if client is not None:
            try:
                served = await client.get_tls()
            except NonstopError:
                served = None
        return {"listen": t.listen, "certificates": served, "acme": self.acme.status() if self.acme else None}

    def history(self, limit: int = 50) -> dict:
        return {
            "releases": [
                {"id": r.id, "version": r.version, "created_at": r.created_at, "status": r.status, "live": r.id == self.traffic.live_release}
                for r in self.store.list_releases()
            ],
            "deployments": [_dep_json(d, None) for d in self.store.list_deployments(limit)],
        }


def _dep_json(d, run) -> dict:
    out = {
        "id": d.id,
        "release": d.release,
        "strategy": d.strategy,
        "from_release": d.from_release,
        "state": d.state,
        "step": d.step,
        "phase": (d.data or {}).get("phase"),
        "started_at": d.started_at,
        "finished_at": d.finished_at,
        "outcome": d.outcome,
        "reason": d.reason,
        "seconds": (d.data or {}).get("seconds"),
    }
    if run is not None and getattr(run, "status", None):
        out.update(run.status())
    return out


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def init_surface(agent, cfg: Config) -> None:
    """What the control API and the dashboard read from any agent (one host or a cluster): its start time,
    the stop event, the dashboard token, and the webhooks (the listener only queues; delivery runs in
    tasks started by serve()). ``agent.state`` and ``agent.events`` must be set."""
    agent.started_at = time.time()
    agent.stopping = asyncio.Event()
    agent.down_requested = False
    agent.token = _token(agent.state / "token")
    agent.notifier = Notifier(cfg.notify, cfg.app, agent.store.get_deployment)
    if agent.notifier:
        agent.events.listen(agent.notifier)


def _token(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    tok = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(tok + "\n")
    return tok


def bind_unix(path: Path) -> socket.socket:
    """A listening Unix socket at ``path`` with mode 0600 before anyone can connect."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with reachable(path) as where:
        sock.bind(where)
    os.chmod(path, 0o600)  # before listen(): nobody can connect yet
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def serve(cfg: Config, *, down_on_signal: bool = False) -> int | Reexec:
    """Run the agent until SIGTERM/SIGINT (or ``down``). Returns an exit code, or ``Reexec`` after SIGHUP."""
    from nonstop.agent import dashboard as dashmod

    if cfg.dashboard.enabled:  # a non-loopback address fails here, before anything starts
        dashmod.check_listen(cfg.dashboard.listen, dashmod.allow_remote(cfg))
    from nonstop.agent import preflight

    # Ports taken by another program, a missing binary, a config the router refuses: exit 2 before
    # anything starts (this app's own proxy and instances, still running, are adopted, not refused).
    preflight.refuse(await preflight.startup(cfg))
    if cfg.run.runtime == "kubernetes":  # no proxy, no fleet: the cluster runs the app (agent/kubernetes/agent.py)
        from nonstop.agent.kubernetes.agent import KubeAgent

        agent = KubeAgent(cfg)
    else:
        agent = Agent(cfg)
    pid_file = agent.state / "agent.pid"
    sock_path = agent.state / "agent.sock"
    other = _running_agent(pid_file)
    if other:
        raise NonstopError(f"an agent is already running for this state dir (pid {other})")
    pid_file.write_text(f"{os.getpid()}\n")
    loop = asyncio.get_running_loop()
    exit_now = asyncio.Event()
    signalled = {"down": False, "reexec": False}

    def on_signal(sig: int) -> None:  # only queue: the loop below acts
        signalled["down"] = down_on_signal
        exit_now.set()

    def on_hup() -> None:
        # SIGHUP (`systemctl reload`, or `nonstop up` of a newer version): this process starts again from
        # the code installed now, in place (same pid), handing itself the listening sockets
        signalled["reexec"] = True
        exit_now.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        agent.notifier.start()
        try:
            await agent.start()
            dash = await dashmod.start_dashboard(agent, notifier=agent.notifier) if cfg.dashboard.enabled else None
            app = make_app(agent, on_down=exit_now.set)
            server = AgentServer(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2))
            sock = bind_unix(sock_path)
        except BaseException:
            # A failed start leaves no orphan behind: a proxy that serves nothing is stopped
            # (one that serves live traffic stays: the data plane outlives the agent).
            if isinstance(agent, Agent) and not agent.traffic.split.routed_addrs and not agent.fleet.running():
                with contextlib.suppress(Exception):
                    await agent.router.stop()
            raise
        srv_task = loop.create_task(server.serve(sockets=[sock]))
        await exit_now.wait()
        if signalled["down"] and not agent.down_requested and not signalled["reexec"]:
            await agent.down()
        server.should_exit = True
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(srv_task, 5)
        if dash is not None:
            await dash.stop()
        await agent.stop()
        await agent.notifier.close(timeout=2.0)
        if signalled["reexec"] and not agent.down_requested:
            socks = getattr(agent.router, "sockets", None)
            return Reexec(dict(socks.socks) if socks is not None else {})
        return 0
    finally:
        with contextlib.suppress(FileNotFoundError):
            sock_path.unlink()
        with contextlib.suppress(FileNotFoundError):
            if pid_file.read_text().strip() == str(os.getpid()):
                pid_file.unlink()


@dataclass
class Reexec:
    """``serve`` ended to start again in place: the listening sockets to hand to the next image."""

    sockets: dict[str, socket.socket]

    def exec(self, argv: list[str]) -> None:
        """Become ``python -m nonstop.agent argv`` (the code installed now), same pid, the sockets passed the
        way systemd passes them (``LISTEN_FDS`` from fd 3), so the next agent finds them first."""
        import fcntl

        # copies above the fds they go to (3, 4, …), so that placing one never closes another
        high = [fcntl.fcntl(s.fileno(), fcntl.F_DUPFD_CLOEXEC, 3 + len(self.sockets)) for s in self.sockets.values()]
        for i, fd in enumerate(high):
            os.dup2(fd, 3 + i, inheritable=True)
            os.close(fd)
        env = dict(os.environ)
        if self.sockets:
            env.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS=str(len(high)), LISTEN_FDNAMES=":".join(self.sockets))
        log.info("re-executing the agent from the installed code (pid %d)", os.getpid())
        os.execve(sys.executable, [sys.executable, "-m", "nonstop.agent", *argv], env)


def _running_agent(pid_file: Path) -> int | None:
    import psutil

    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None
    if pid == os.getpid() or not psutil.pid_exists(pid):
        return None
    try:
        cmd = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return None
    return pid if "nonstop" in cmd else None
