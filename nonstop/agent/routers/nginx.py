"""The nginx router: traffic moved by rewriting an include file, testing it, reloading nginx.

Two modes (``router.mode``):

- ``managed``: nonstop runs its own nginx (``router.binary``) with a config it
  generates under ``<state_dir>/nginx/`` (own pid file, logs, temp paths),
  listening on ``listen``.
- ``external``: the user's nginx. nonstop owns only ``router.upstream_file``
  (an http-level include) and runs ``test_command`` / ``reload_command``.

Every change: write a temp file, move it into place, test; a failed test puts
the old file back and raises ``RouterError`` with nginx's message (the running
nginx never saw the new file). Then reload and wait for the new workers.
``drain`` waits for the workers of the previous generation to exit (they
finish their in-flight requests, bounded by ``worker_shutdown_timeout``).
Stats come from the JSON access log (see docs/routers.md).
"""

from __future__ import annotations

import asyncio
import grp
import json
import logging
import os
import pwd
import signal
import stat
import time
from pathlib import Path

import psutil

from nonstop.agent.routers.base import Router, RouterInfo, RouteTable, StatsSnapshot
from nonstop.agent.routers.accesslog import LogTail, StatsBook, nginx_record
from nonstop.agent.routers.common import error_tail, plan, run_command, still_running
from nonstop.agent.routers.nginx_conf import ManagedPaths, render_managed, render_upstreams
from nonstop.config import ROUTER_CAPABILITIES, Config, router_capabilities, split_command
from nonstop.errors import RouterError
from nonstop.files import write_atomic

__all__ = ["NginxRouter", "ROUTING_MARK"]

log = logging.getLogger("nonstop.router.nginx")

ROUTING_MARK = "# nonstop-routing: "
LOG_ROTATE_BYTES = 64 << 20  # managed mode rotates its own access log past this size


class NginxRouter(Router):
    """Owns one nginx's view of one app: the include file, the reloads, the worker generations, the log."""

    type = "nginx"
    capabilities = ROUTER_CAPABILITIES["nginx"]
    # Client keep-alive of the managed nginx (seconds; 0 = off). See docs/routers.md, "reload drop".
    client_keepalive_timeout: float = 75.0

    def __init__(self, cfg: Config, state_dir: Path) -> None:
        rc = cfg.router
        if getattr(rc, "type", None) != "nginx":
            raise RouterError(f"NginxRouter needs router.type nginx, not {getattr(rc, 'type', None)!r}")
        self.cfg = cfg
        self.rc = rc
        self.app = cfg.app
        self.mode = rc.mode
        self.capabilities = router_capabilities(rc)  # external without access_log: no stats
        self.dir = Path(state_dir) / "nginx"
        self.paths = ManagedPaths(str(self.dir))
        self.binary = rc.binary
        # Not a config setting yet (config.py belongs to the lead); read it when it becomes one.
        self.client_keepalive_timeout = float(getattr(rc, "client_keepalive_timeout", type(self).client_keepalive_timeout))
        if self.mode == "managed":
            self.upstream_file = Path(self.paths.upstreams)
            self.access_log: str | None = str(cfg.path(rc.access_log)) if rc.access_log else self.paths.access_log
        else:
            self.upstream_file = cfg.path(rc.upstream_file or "")
            self.access_log = str(cfg.path(rc.access_log)) if rc.access_log else None
        self.sidecar = self.dir / "routing.json"
        self._lock = asyncio.Lock()
        self._old_workers: dict[int, float] = {}  # pid -> create_time, workers of replaced generations
        self._tail: LogTail | None = None
        self._book = StatsBook()
        self._observed_reload = True

    # -- lifecycle ------------------------------------------------------
    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.mode == "external":
            await self._run_test()
            log.info("nginx external: %s tests fine; nonstop owns %s", self.rc.test_command, self.upstream_file)
            self._open_log()
            return
        if self._master() is not None:
            log.info("nginx managed: adopting running master pid=%s", self._master().pid)
            conf = self._managed_conf()
            if self._read_or_none(Path(self.paths.conf)) != conf:
                # nonstop.yml changed since (listen, timeouts): bring the running nginx up to date.
                await self._replace_and_reload(Path(self.paths.conf), conf)
            self._open_log()
            return
        routing = await self.current() or RouteTable()
        Path(self.paths.temp).mkdir(parents=True, exist_ok=True)
        self._write(self.upstream_file, self._upstreams_text(routing))
        self._write(Path(self.paths.conf), self._managed_conf())
        await self._run_test()
        argv = [self.binary, "-c", self.paths.conf, "-e", self.paths.error_log]
        # Not through a pipe: the daemonised master could keep it open, and we would wait for its EOF forever.
        with open(self.paths.error_log, "ab") as err:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=err, stderr=err, start_new_session=True
                )
            except OSError as e:
                raise RouterError(f"cannot run {self.binary!r}: {e.strerror}") from None
        try:
            code = await asyncio.wait_for(proc.wait(), 30)
        except asyncio.TimeoutError:
            raise RouterError(f"nginx did not start within 30s: {self._error_tail()}") from None
        if code != 0:
            raise RouterError(f"nginx did not start: {self._error_tail()}")
        deadline = time.monotonic() + 10
        while self._master() is None:
            if time.monotonic() > deadline:
                raise RouterError(f"nginx did not write its pid file {self.paths.pid}: {self._error_tail()}")
            await asyncio.sleep(0.05)
        await self._wait_new_workers(self._master(), set(), timeout=10)
        self._save_sidecar(routing)
        self._open_log()
        log.info("nginx managed: started pid=%s listen=%s", self._master().pid, self.cfg.listen)

    async def stop(self) -> None:
        if self.mode != "managed":
            return
        master = self._master()
        if master is None:
            return
        # SIGQUIT: graceful; workers finish in-flight requests within worker_shutdown_timeout.
        log.info("nginx managed: stopping pid=%s", master.pid)
        workers = _workers_of(master)
        try:
            master.send_signal(signal.SIGQUIT)
            await asyncio.to_thread(master.wait, self.rc.worker_shutdown_timeout + 5)
        except psutil.NoSuchProcess:
            pass
        except psutil.TimeoutExpired:
            log.warning("nginx managed: pid=%s still running; SIGTERM", master.pid)
            master.terminate()
            try:
                await asyncio.to_thread(master.wait, 5)
            except psutil.TimeoutExpired:
                master.kill()
                # A killed master leaves its workers running (and listening): end them too.
                for w in workers:
                    try:
                        w.kill()
                    except psutil.NoSuchProcess:
                        pass
        if self._tail is not None:
            self._tail.close()
            self._tail = None

    # -- routing --------------------------------------------------------
    async def apply(self, routing: RouteTable) -> None:
        text = self._upstreams_text(routing)  # validates; RouterError before touching anything
        async with self._lock:
            started = time.monotonic()
            old = self._read_or_none(self.upstream_file)
            if old is not None and _body(old) == _body(text) and (self.mode == "external" or self._master()):
                # Same config for nginx (e.g. a target marked draining is simply left out, as removing it
                # would): no reload, so no keep-alive connection is dropped for nothing.
                self._write(self.upstream_file, text)
                self._save_sidecar(routing)
                log.info("nginx apply: nothing changed for nginx; no reload")
                return
            await self._replace_and_reload(self.upstream_file, text)
            self._save_sidecar(routing)
            log.info(
                "nginx apply done in %.2fs: %s",
                time.monotonic() - started,
                ", ".join(f"{r.name}={r.weight}%" for r in routing.releases) or "(nothing)",
            )

    async def _replace_and_reload(self, path: Path, text: str) -> None:
        """Put ``text`` in ``path``, test, reload; on any failure the old file is back and RouterError raised."""
        old = self._read_or_none(path)
        self._write(path, text)
        try:
            await self._run_test()
            await self._reload()
        except RouterError:
            self._restore(path, old)
            raise

    async def current(self) -> RouteTable | None:
        try:
            return RouteTable.from_dict(json.loads(self.sidecar.read_text()))
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as e:
            log.warning("nginx: unreadable %s (%s); reading the include instead", self.sidecar, e)
        text = self._read_or_none(self.upstream_file)
        if text:
            for line in text.splitlines():
                if line.startswith(ROUTING_MARK):
                    try:
                        return RouteTable.from_dict(json.loads(line[len(ROUTING_MARK):]))
                    except (ValueError, KeyError, TypeError):
                        return None
        return None

    async def alive(self) -> bool:
        if self.mode == "managed":
            return self._master() is not None
        return True

    async def drain(self, addrs: list[str], timeout: float) -> bool:
        """Wait for the workers replaced by earlier reloads to exit: then nothing is in flight to ``addrs``."""
        deadline = time.monotonic() + timeout
        if not self._observed_reload and not self._old_workers:
            # External nginx whose workers we could not see: the best we can do is the configured bound.
            wait = min(timeout, self.rc.worker_shutdown_timeout)
            log.warning("nginx drain: old workers not observable; waiting worker_shutdown_timeout (%.0fs)", wait)
            await asyncio.sleep(wait)
            return wait >= self.rc.worker_shutdown_timeout
        while True:
            left = {pid: ct for pid, ct in self._old_workers.items() if still_running(pid, ct)}
            self._old_workers = left
            if not left:
                return True
            if time.monotonic() >= deadline:
                log.info("nginx drain: %d old worker(s) still running after %.1fs", len(left), timeout)
                return False
            await asyncio.sleep(0.05)

    async def stats(self) -> StatsSnapshot:
        if self.access_log is None:
            return {"releases": {}, "targets": {}}
        if self._tail is None:
            self._open_log()
        lines = await asyncio.to_thread(self._tail.read)
        self._book.add_all(nginx_record(line, self.app) for line in lines)
        if self.mode == "managed":
            self._maybe_rotate()
        return self._book.snapshot()

    def info(self) -> RouterInfo:
        m = self._master() if self.mode == "managed" else None
        return RouterInfo(
            type="nginx",
            mode=self.mode,
            detail={
                "pid": m.pid if m else None,
                "config": self.paths.conf if self.mode == "managed" else None,
                "upstream_file": str(self.upstream_file),
                "access_log": self.access_log,
            },
        )

    # -- internals ------------------------------------------------------
    def _upstreams_text(self, routing: RouteTable) -> str:
        plan(routing)  # raises RouterError for what nginx cannot carry
        body = render_upstreams(self.app, routing)
        mark = ROUTING_MARK + json.dumps(routing.to_dict(), separators=(",", ":")) + "\n"
        return mark + body

    def _managed_conf(self) -> str:
        return render_managed(
            self.app,
            self.cfg.listen,
            self.paths,
            user=self._worker_user(),
            upstreams_file=str(self.upstream_file),
            worker_shutdown_timeout=self.rc.worker_shutdown_timeout,
            access_log=self.access_log,
            keepalive_timeout=self.client_keepalive_timeout,
            trusted_proxies=self.cfg.trusted_proxies,
        )

    def _worker_user(self) -> str | None:
        """As root, workers run as nobody when they can reach the temp dir; else (rare) as root, said in the log."""
        if os.geteuid() != 0:
            return None  # nginx keeps the current user; "user" would only warn
        try:
            pwd.getpwnam("nobody")
        except KeyError:
            return "root"
        group = "nogroup"
        try:
            grp.getgrnam(group)
        except KeyError:
            group = "nobody"
        p = Path(self.paths.temp).resolve()
        for d in (p, *p.parents):
            try:
                if d.exists() and not (d.stat().st_mode & stat.S_IXOTH):
                    log.warning("nginx managed: %s is not searchable by others; workers run as root", d)
                    return "root"
            except OSError:
                return "root"
        return f"nobody {group}"

    def _test_argv(self) -> list[str]:
        if self.mode == "managed":
            return [self.binary, "-t", "-q", "-c", self.paths.conf, "-e", self.paths.error_log]
        return split_command(self.rc.test_command, shell=False)

    async def _run_test(self) -> None:
        code, out = await run_command(self._test_argv(), timeout=60)
        if code != 0:
            raise RouterError(f"nginx config test failed: {out.strip()}", detail={"command": self._test_argv()})

    async def _reload(self) -> None:
        if self.mode == "managed":
            master = self._master()
            if master is None:
                raise RouterError("nginx managed: the nginx master is not running (start the router first)")
            before = {c.pid: c.create_time() for c in _workers_of(master)}
            master.send_signal(signal.SIGHUP)
            await self._wait_new_workers(master, set(before), timeout=15)
            self._old_workers.update(before)
            await _wait_stopped_accepting(before, timeout=15)
            return
        before_all = _all_workers()
        argv = split_command(self.rc.reload_command, shell=False)
        code, out = await run_command(argv, timeout=60)
        if code != 0:
            raise RouterError(f"nginx reload failed: {out.strip()}", detail={"command": argv})
        # The masters whose workers we saw get a new generation; its predecessors are what drain waits for.
        masters = {ppid for ppid, _ in before_all.values()}
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            now = _all_workers()
            reloaded = {ppid for pid, (ppid, _) in now.items() if pid not in before_all and ppid in masters}
            if reloaded:
                old = {pid: ct for pid, (ppid, ct) in before_all.items() if ppid in reloaded}
                self._old_workers.update(old)
                self._observed_reload = True
                await _wait_stopped_accepting(old, timeout=15)
                return
            await asyncio.sleep(0.05)
        self._observed_reload = False
        log.warning("nginx external: reload ran but no new nginx worker appeared (not visible from here?)")

    async def _wait_new_workers(self, master: psutil.Process, old: set[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fresh = [c for c in _workers_of(master) if c.pid not in old]
            except psutil.NoSuchProcess:
                raise RouterError(f"nginx master pid={master.pid} exited: {self._error_tail()}") from None
            if fresh:
                return
            if time.monotonic() > deadline:
                raise RouterError(f"nginx did not start new workers after reload: {self._error_tail()}")
            await asyncio.sleep(0.02)

    def _master(self) -> psutil.Process | None:
        try:
            pid = int(Path(self.paths.pid).read_text().strip())
            p = psutil.Process(pid)
            if p.status() == psutil.STATUS_ZOMBIE:
                return None
            cmd = " ".join(p.cmdline())
            if "nginx" not in cmd or "master" not in cmd:
                return None
            return p
        except (FileNotFoundError, ValueError, psutil.Error):
            return None

    def _restore(self, path: Path, old: str | None) -> None:
        if old is None:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        else:
            self._write(path, old)

    @staticmethod
    def _read_or_none(path: Path) -> str | None:
        try:
            return path.read_text()
        except FileNotFoundError:
            return None

    @staticmethod
    def _write(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, text)

    def _save_sidecar(self, routing: RouteTable) -> None:
        self._write(self.sidecar, json.dumps(routing.to_dict(), indent=2) + "\n")

    def _open_log(self) -> None:
        if self.access_log and self._tail is None:
            # Counters are cumulative since the router object started: earlier lines are history.
            self._tail = LogTail(self.access_log, from_end=True)
            self._tail.read()

    def _maybe_rotate(self) -> None:
        try:
            if os.path.getsize(self.access_log) < LOG_ROTATE_BYTES:
                return
            os.replace(self.access_log, self.access_log + ".1")
            m = self._master()
            if m is not None:
                m.send_signal(signal.SIGUSR1)  # reopen logs
        except OSError as e:
            log.warning("nginx managed: cannot rotate %s: %s", self.access_log, e)

    def _error_tail(self) -> str:
        return error_tail(self.paths.error_log)


def _workers_of(master: psutil.Process) -> list[psutil.Process]:
    out = []
    for c in master.children():
        try:
            if c.status() != psutil.STATUS_ZOMBIE and "worker process" in " ".join(c.cmdline()):
                out.append(c)
        except psutil.Error:
            continue
    return out


def _all_workers() -> dict[int, tuple[int, float]]:
    """Every nginx worker visible here: pid -> (master pid, create time)."""
    out: dict[int, tuple[int, float]] = {}
    for p in psutil.process_iter(["cmdline", "ppid", "create_time"]):
        try:
            cmd = p.info["cmdline"] or []
            if cmd and cmd[0].startswith("nginx: worker process"):
                out[p.pid] = (p.info["ppid"], p.info["create_time"])
        except psutil.Error:
            continue
    return out


def _body(text: str) -> str:
    """The include without nonstop's routing comment: what nginx actually reads."""
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(ROUTING_MARK))


async def _wait_stopped_accepting(workers: dict[int, float], timeout: float) -> None:
    """Until every old worker has exited or retitled itself "shutting down" (it no longer accepts).

    Between the new workers' start and the old ones' SIGQUIT both generations
    accept connections; returning before that would let the caller drain too early.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = False
        for pid, ct in workers.items():
            try:
                p = psutil.Process(pid)
                if p.create_time() != ct or p.status() == psutil.STATUS_ZOMBIE:
                    continue
                if "shutting down" not in " ".join(p.cmdline()):
                    busy = True
                    break
            except psutil.Error:
                continue
        if not busy:
            return
        await asyncio.sleep(0.01)
    log.warning("nginx: old workers still accepting %.0fs after the reload", timeout)


