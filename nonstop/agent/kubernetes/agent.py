"""The agent for ``run.runtime: kubernetes``: the one-host agent's surface, with a cluster behind it.

``KubeAgent`` offers what the control API (``agent/api.py``), the dashboard
(``agent/dashboard.py``) and ``serve()`` use from the one-host ``Agent`` —
``cfg``, ``state``, ``store``, ``events``, ``token``, ``notifier``,
``stopping``, ``down_requested``, ``deployer`` (``deploy``, ``rollback``,
``steer``), ``router.stats()`` and ``traffic.split`` for the charts,
``status()``, ``history()``, ``start()``, ``stop()``, ``down()`` — plus
``runtime_logs()`` (pod logs, for ``GET /logs``). There is no proxy, no
router process and no fleet: the cluster's Service or Gateway is the data
plane and the Deployment controller runs the pods.

What lives where: the SQLite store in the state dir holds this agent's
deployment rows and events (the CLI's progress, the dashboard's timeline,
webhooks), as on one host; the Lease, the release history and the
deployment in progress are the cluster's (``state.py``, ``lease.py``), so
``status`` and ``history`` are built from what the cluster says and a
second machine sees the same. The cluster is connected to lazily (importing
the official client is slow) at ``start``, which recovers what a stopped
agent or a dead runner left; an API server that does not answer is exit 3
naming the context and the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from nonstop.agent.events import EventBus
from nonstop.agent.kubernetes import views
from nonstop.agent.kubernetes.errors import ClusterError, ClusterUnreachable
from nonstop.agent.kubernetes.operations import KubeDeployer
from nonstop.agent.kubernetes.stats import ClusterStats
from nonstop.agent.liveconfig import LiveConfig
from nonstop.agent.releases import Releases
from nonstop.agent.store import Store
from nonstop.agent.traffic import Split
from nonstop.config import Config
from nonstop.errors import ConfigError, NonstopError

__all__ = ["KubeAgent", "ClusterTraffic"]

log = logging.getLogger("nonstop.agent.kubernetes")

LIVE = "live_release"  # the store's meta key the one-host deployer and the offline views read
RESTART_ONLY = ("context", "kubeconfig", "namespace")  # the connection: only a restarted agent uses new ones


class ClusterTraffic:
    """The traffic as last read from the cluster (the dashboard's weights; ``live_release`` for ``logs``)."""

    def __init__(self) -> None:
        self.split = Split()
        self.live: str | None = None

    @property
    def live_release(self) -> str | None:
        return self.live


class KubeAgent:
    """Owns the kubernetes agent's parts: the local store and event bus, the cluster's client and driver
    (connected at start), the deployer, the housekeeping loop, and the last picture read from the cluster."""

    def __init__(self, cfg: Config) -> None:
        from nonstop.agent.daemon import init_surface

        assert cfg.kubernetes is not None
        self.config = LiveConfig(cfg)
        self.state = cfg.state_path
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "logs").mkdir(exist_ok=True)
        self.store = Store(self.state / "nonstop.db")
        self.events = EventBus(self.store)
        self.releases = Releases(self.state, self.store)  # runs build.commands (the image's build and push)
        self.deployer = KubeDeployer(self)
        self.traffic = ClusterTraffic()
        self.router = ClusterStats(self._metrics(cfg), self._serving)
        init_surface(self, cfg)
        self._client: Any = None
        self._connecting = asyncio.Lock()
        self._driver: Any = None
        self._picture: dict | None = None
        self._cluster: Any = None  # the last ClusterState read
        self._tasks: list[asyncio.Task] = []

    @property
    def cfg(self) -> Config:
        return self.config.current

    @staticmethod
    def _metrics(cfg: Config):
        k = cfg.kubernetes
        assert k is not None
        if not k.prometheus:
            return None
        from nonstop.agent.kubernetes.prometheus import Prometheus

        return Prometheus(k.prometheus, namespace=k.namespace, app=cfg.app, queries=k.prometheus_queries)

    # -- the cluster ----------------------------------------------------------------------------
    async def driver(self):
        """The driver for the current config, connecting first if need be (``ConfigError`` for a kubeconfig
        problem; the API server itself is first asked by the operation)."""
        async with self._connecting:  # the first status and the first deploy may ask at once: one client
            if self._client is None:
                from nonstop.agent.kubernetes.client import connect

                self._client = await asyncio.to_thread(connect, self.cfg)
        if self._driver is None or self._driver.cfg is not self.cfg:
            from nonstop.agent.kubernetes.driver import KubernetesDriver
            from nonstop.agent.kubernetes.runner import Callbacks

            d = self.deployer
            self._driver = KubernetesDriver(self.cfg, self._client, callbacks=Callbacks(d.on_step, d.on_event), control=d.control)
        return self._driver

    def driver_now(self):
        return self._driver

    def reload_config(self) -> Config:
        """Read nonstop.yml again before a deploy; a runtime or a cluster connection changed since ``up`` is
        refused (they take effect after ``down`` and ``up``), as the one-host agent refuses its own."""
        old = self.cfg
        new = self.config.reload()
        changed = "run.runtime" if new.run.runtime != "kubernetes" else next(
            (f"kubernetes.{f}" for f in RESTART_ONLY if getattr(new.kubernetes, f, None) != getattr(old.kubernetes, f)), None
        )
        if changed:
            self.config.current = old
            raise ConfigError("changed since `nonstop up`; it takes effect after `nonstop down` and `nonstop up`",
                              file=old.source, field=changed)
        return new

    async def reread_cluster(self) -> None:
        """Read the shared state again: the history ``history()`` answers with, and the local mirror of it."""
        driver = await self.driver()
        state = await driver.cluster_state()
        self._cluster = state
        self._mirror(state)

    def _mirror(self, state: Any) -> None:
        """The cluster's releases and live release, copied into the store (``history`` and ``logs`` without an agent)."""
        known = {r.id: r for r in self.store.list_releases()}
        for r in state.releases:
            rec = known.pop(r["id"], None)
            if rec is None:
                rec = self.store.add_release(r.get("version") or r["id"], None, id=r["id"], digest=r.get("digest"))
            if rec.status != r.get("status", "ok"):
                self.store.mark_release(r["id"], r.get("status", "ok"))
        for rid in known:  # pruned from the cluster's history (keep_releases)
            self.store.delete_release(rid)
        if self.store.get_meta(LIVE) != state.live:
            self.store.set_meta(LIVE, state.live)
        self.traffic.live = state.live

    def _serving(self):
        """The sides the charts ask Prometheus about: each release that takes traffic, by its pods."""
        from nonstop.agent.kubernetes.prometheus import Side, pod_regex
        from nonstop.agent.kubernetes.shapes import deployment_name

        out = []
        for r in views.routes(self.cfg, self._picture or {}):
            for track in r["tracks"]:
                out.append(Side(r["release"], track, pod_regex(deployment_name(self.cfg.app, track))))
        return out

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        k = self.cfg.kubernetes
        assert k is not None
        log.info("agent starting app=%s state_dir=%s runtime=kubernetes namespace=%s", self.cfg.app, self.state, k.namespace)
        driver = await self.driver()
        await asyncio.to_thread(driver.client.version)  # unreachable: ClusterUnreachable (exit 3), context and server named
        await self.deployer.recover()
        await self.reread_cluster()
        self._tasks.append(asyncio.get_running_loop().create_task(self._housekeeping(), name="kubernetes housekeeping"))
        log.info("agent ready (cluster %s at %s)", driver.client.context, driver.client.server)

    async def _housekeeping(self) -> None:
        """Every few polls: a dead runner's deployment recovered, the warm side's expiry, the history re-read."""
        k = self.cfg.kubernetes
        assert k is not None
        every = max(1.0, min(30.0, k.poll_interval * 5))
        said = ""
        while not self.stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=every)
            if self.stopping.is_set():
                return
            try:
                await self.deployer.housekeeping()
                await self.reread_cluster()
                said = ""
            except NonstopError as e:
                if e.message != said:  # once per distinct trouble, not every tick
                    log.warning("housekeeping: %s", e.message)
                    said = e.message
            except Exception:
                log.exception("housekeeping failed")

    async def _cancel_operation(self) -> None:
        task = self.deployer.task
        if task is not None and not task.done():
            task.cancel()  # the driver gives the Lease back; the cluster's record lets the next nonstop finish it
            with contextlib.suppress(BaseException):
                await task

    async def stop(self) -> None:
        """Agent exit: what runs in the cluster keeps running."""
        self.stopping.set()
        await self._cancel_operation()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(BaseException):
                await t
        if self._client is not None:
            await asyncio.to_thread(self._client.close)

    async def down(self) -> None:
        """``nonstop down``: the agent stops; the app keeps serving from the cluster (nonstop never takes a
        cluster's app down: its objects are deleted with kubectl, see docs/kubernetes.md)."""
        log.info("down: the agent stops; the app keeps running in the cluster")
        self.stopping.set()
        running = self.deployer.current
        await self._cancel_operation()
        msg = "agent stopped (down); the app keeps running in the cluster"
        if running is not None:
            msg += f"; deployment #{running.dep_id} was interrupted and the next nonstop finishes it"
        with contextlib.suppress(NonstopError):
            await self.events.emit(None, "down", msg)
        self.down_requested = True

    # -- views ----------------------------------------------------------------------------------
    async def status(self) -> dict:
        picture, error = None, None
        try:
            driver = await self.driver()
            picture = await driver.status()
        except (ClusterUnreachable, ClusterError) as e:
            error = e.message
        except NonstopError as e:  # forbidden, not owned: said, not raised (the dashboard asks every second)
            error = e.message
        now = time.time()
        if picture is not None:
            self._picture = picture
            self.traffic.split = views.split_of(self.cfg, picture)
            self.traffic.live = picture.get("live")
        dep = self.store.active_deployment()
        return views.status_json(
            self.cfg, picture, agent={"pid": os.getpid(), "started_at": self.started_at}, dashboard=_read(self.state / "dashboard.url"),
            local=dep, error=error, now=now,
        )

    def history(self, limit: int = 50) -> dict:
        """The cluster's history (as last read: after every operation and every housekeeping tick)."""
        if self._cluster is None:  # not read yet (the agent is starting)
            return {"releases": [], "deployments": [], "source": "cluster"}
        return views.history_json(self._cluster, limit)

    async def runtime_logs(self, release: str | None, lines: int) -> dict:
        """``GET /logs``: the pods' logs of ``release`` (default: the live one), from the API server."""
        from nonstop.agent.kubernetes.logs import pod_logs

        if release == "agent":  # this agent's own log, in the state dir as on one host
            from nonstop.agent.logfiles import tail

            f = self.state / "logs" / "agent.log"
            return {"release": "agent", "files": [{"name": f.name, "path": str(f), "lines": tail(f, lines).splitlines() if lines > 0 else []}]}
        driver = await self.driver()
        return await asyncio.to_thread(pod_logs, driver.client, self.cfg, release, lines)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
