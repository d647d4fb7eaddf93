"""The HAProxy router: traffic moved through the runtime API, never a reload.

- ``managed``: nonstop runs HAProxy (``router.binary``) with a config written
  once under ``<state_dir>/haproxy/`` (see ``haproxy_conf``): one slot backend
  per release, runtime maps for the user split and match rules, a JSON access
  log on HAProxy's stdout that ``stats()`` reads.
- ``external``: the user's HAProxy. nonstop uses only the runtime API socket
  (``router.socket``, ``level admin``) and one backend (``router.backend``):
  it adds, weighs, drains and deletes its own servers there (named ``t_<addr>``).
  Weights become server weights, so the split is per request (per the
  backend's ``balance``), not sticky per user, and match rules cannot be
  honoured (a routing with one raises ``RouterError``). Stats come from
  ``show stat`` (no latency histogram).

``drain`` sets nothing itself (``apply`` already put removed servers in
``drain`` state): it waits for their current sessions (``show stat`` scur) to
reach 0, then deletes them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

from nonstop.agent.routers.accesslog import LogTail, StatsBook, haproxy_record
from nonstop.agent.routers.base import Router, RouterInfo, RouteTable, StatsSnapshot
from nonstop.agent.routers.common import error_tail, ident, plan, resolve_targets, run_command
from nonstop.agent.routers.haproxy_api import HaproxyApi, ServerStat
from nonstop.agent.routers.haproxy_conf import (
    SLOTS,
    HaproxyPaths,
    MatchKey,
    assign_slots,
    backend_name,
    bucket_entries,
    initial_maps,
    match_entries,
    render_config,
    server_name,
    server_weights,
    sticky_setting,
)
from nonstop.agent.routers.haproxy_stats import add_snapshots, stat_snapshot, sum_stat
from nonstop.config import ROUTER_CAPABILITIES, CanaryStrategy, Config, router_capabilities
from nonstop.errors import RouterError
from nonstop.files import write_atomic

__all__ = ["HaproxyRouter"]

log = logging.getLogger("nonstop.router.haproxy")

LOG_TRUNCATE_BYTES = 64 << 20
_MAINT = 0x01  # srv_admin_state bit: forced maintenance
_DRAIN = 0x08  # srv_admin_state bit: forced drain


class HaproxyRouter(Router):
    """Owns one app's servers and split in one HAProxy, through its runtime API."""

    type = "haproxy"
    capabilities = ROUTER_CAPABILITIES["haproxy"]

    def __init__(self, cfg: Config, state_dir: Path) -> None:
        rc = cfg.router
        if getattr(rc, "type", None) != "haproxy":
            raise RouterError(f"HaproxyRouter needs router.type haproxy, not {getattr(rc, 'type', None)!r}")
        self.cfg = cfg
        self.rc = rc
        self.app = cfg.app
        self.mode = rc.mode
        # external: only a backend's servers, so weights split requests (no user buckets, no match rules)
        self.capabilities = router_capabilities(rc)
        self.dir = Path(state_dir) / "haproxy"
        self.paths = HaproxyPaths(str(self.dir))
        socket_path = str(cfg.path(rc.socket)) if rc.socket else self.paths.socket
        self.api = HaproxyApi(socket_path)
        self.external_backend = rc.backend
        match = cfg.strategy.match if isinstance(cfg.strategy, CanaryStrategy) else None
        self.key = MatchKey.of(match.header if match else (), match.cookie if match else ())
        sk = cfg.strategy.split_key if isinstance(cfg.strategy, CanaryStrategy) else None
        self.split_key = None if sk is None else (("cookie", sk.cookie) if sk.cookie else ("header", sk.header))
        self.sidecar = self.dir / "routing.json"
        self._lock = asyncio.Lock()
        self._proc: subprocess.Popen | None = None
        self._slots: dict[str, int] = {}  # release -> slot (managed)
        self._tail: LogTail | None = None
        self._book = StatsBook()
        # external stats: counters of deleted servers, and which release a server was added for
        self._retired: dict[str, ServerStat] = {}
        self._last_seen: dict[tuple[str, str], ServerStat] = {}
        self._server_release: dict[str, str] = {}
        self._warned_sticky = False
        self._alias: dict[str, str] = {}  # "ip:port" HAProxy shows -> the target addr as the routing names it

    # -- lifecycle ------------------------------------------------------
    async def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        os.makedirs(os.path.dirname(self.paths.socket), mode=0o700, exist_ok=True)
        if self.mode == "external":
            await self.api.servers(self.external_backend)  # answers, and the backend exists
            self._load_sidecar()
            log.info("haproxy external: %s answers; backend %s", self.api.socket_path, self.external_backend)
            return
        if self._pid() is not None and await self._answers():
            log.info("haproxy managed: adopting running pid=%s", self._pid())
            self._load_sidecar()
            self._open_log()
            return
        routing = await self.current()
        for name, text in initial_maps(routing).items():
            Path(self.paths.map(name)).write_text(text)
        Path(self.paths.conf).write_text(self._config_text())
        code, out = await run_command([self.rc.binary, "-c", "-f", self.paths.conf], timeout=30)
        if code != 0:
            raise RouterError(f"haproxy config check failed: {out.strip()}")
        try:
            os.unlink(self.paths.socket)
        except FileNotFoundError:
            pass
        out_f = open(self.paths.access_log, "ab")
        err_f = open(self.paths.error_log, "ab")
        try:
            self._proc = subprocess.Popen(
                [self.rc.binary, "-db", "-f", self.paths.conf, "-p", self.paths.pid],
                stdin=subprocess.DEVNULL,
                stdout=out_f,
                stderr=err_f,
                start_new_session=True,
            )
        except OSError as e:
            raise RouterError(f"cannot run {self.rc.binary!r}: {e.strerror}") from None
        finally:
            out_f.close()
            err_f.close()
        deadline = time.monotonic() + 15
        while not await self._answers():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RouterError(f"haproxy did not start: {self._error_tail()}")
            await asyncio.sleep(0.05)
        Path(self.paths.pid).write_text(f"{self._proc.pid}\n")
        self._open_log()
        self._slots = {}
        if routing is not None and routing.releases:
            await self.apply(routing)  # a fresh HAProxy has no servers: put the last routing back
        log.info("haproxy managed: started pid=%s listen=%s", self._proc.pid, self.cfg.listen)

    async def stop(self) -> None:
        if self.mode != "managed":
            return
        pid = self._pid()
        if pid is None:
            return
        log.info("haproxy managed: stopping pid=%s", pid)
        try:
            p = psutil.Process(pid)
            p.send_signal(signal.SIGUSR1)  # soft stop: stop listening, finish what is in flight
            try:
                await asyncio.to_thread(p.wait, self.cfg.drain_timeout + 10)
            except psutil.TimeoutExpired:
                p.terminate()
                try:
                    await asyncio.to_thread(p.wait, 5)
                except psutil.TimeoutExpired:
                    p.kill()
        except psutil.NoSuchProcess:
            pass
        if self._proc is not None:
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            self._proc = None
        if self._tail is not None:
            self._tail.close()
            self._tail = None

    async def alive(self) -> bool:
        return await self._answers()

    # -- routing --------------------------------------------------------
    async def apply(self, routing: RouteTable) -> None:
        p = plan(routing)
        if self.mode == "external":
            async with self._lock:
                await self._apply_external(routing, p)
            return
        matches = match_entries(p, self.key)  # RouterError for match names the config cannot see
        resolved = await self._resolve_all(p)
        async with self._lock:
            started = time.monotonic()
            state = await self._slot_state()
            old_slots = dict(self._slots)
            slots = assign_slots(old_slots, [r.name for r in p.usable], {s: len(v) for s, v in state.items()})

            # 1. Additive: every live target is a ready server in its release's slot. Traffic unchanged.
            added: list[tuple[str, str]] = []
            try:
                for r in p.usable:
                    be = backend_name(self.app, slots[r.name])
                    for t in r.live_targets:
                        srv = server_name(t.addr)
                        have = state.get(slots[r.name], {}).get(srv)
                        if have is None:
                            await self.api.command(f"add server {be}/{srv} {resolved[t.addr]}", expect="New server registered")
                            added.append((be, srv))
                            await self.api.command(f"enable server {be}/{srv}")
                        else:
                            await self.api.command(f"set server {be}/{srv} state ready")
            except RouterError:
                await self._forget(added)
                raise
            # 2. Switch: new releases reachable, then the split, then the old releases unreachable.
            both = {**{n: s for n, s in old_slots.items()}, **slots}
            await self.api.replace_map(self.paths.map("release"), [(n, backend_name(self.app, s)) for n, s in both.items()])
            splits = len(set(p.by_bucket)) > 1  # the bucket cookie is sent only while buckets matter
            await self.api.replace_map(
                self.paths.map("settings"), [("sticky", sticky_setting(routing.sticky)), ("split", "1" if splits else "0")]
            )
            if not self.key.empty:  # without match names the config never loads match.map
                await self.api.replace_map(self.paths.map("match"), matches)
            await self.api.replace_map(self.paths.map("bucket"), bucket_entries(p))
            await self.api.replace_map(self.paths.map("release"), [(n, backend_name(self.app, s)) for n, s in slots.items()])
            self._slots = slots
            # 3. Everything not live any more stops getting new requests; in-flight ones finish.
            live = {(slots[r.name], server_name(t.addr)) for r in p.usable for t in r.live_targets}
            for slot, servers in state.items():
                for srv, (_, admin) in servers.items():
                    if (slot, srv) not in live and not admin & (_MAINT | _DRAIN):
                        await self.api.command(f"set server {backend_name(self.app, slot)}/{srv} state drain")
            self._save_sidecar(routing)
            log.info(
                "haproxy apply done in %.2fs: %s",
                time.monotonic() - started,
                ", ".join(f"{r.name}={r.weight}%" for r in routing.releases) or "(nothing)",
            )

    async def _apply_external(self, routing: RouteTable, p) -> None:
        be = self.external_backend
        if p.matchers:
            raise RouterError(
                "haproxy mode external cannot honour match rules (nonstop owns only the backend's servers); "
                "use mode managed or drop strategy.match"
            )
        if routing.sticky and len(p.usable) > 1 and not self._warned_sticky:
            log.warning("haproxy external: weights split requests, not users (sticky needs mode managed)")
            self._warned_sticky = True
        resolved = await self._resolve_all(p)
        current = await self.api.servers(be)
        live: dict[str, int] = {}
        for srv, (weight, release) in server_weights(p).items():
            live[srv] = weight
            self._server_release[srv] = release
        added: list[tuple[str, str]] = []
        try:
            for r in p.usable:
                for t in r.live_targets:
                    srv = server_name(t.addr)
                    if srv not in current:
                        await self.api.command(
                            f"add server {be}/{srv} {resolved[t.addr]} weight {live[srv]}", expect="New server registered"
                        )
                        added.append((be, srv))
        except RouterError:
            await self._forget(added)
            raise
        for srv, w in live.items():
            await self.api.command(f"set server {be}/{srv} weight {w}")
            await self.api.command(f"set server {be}/{srv} state ready")
        for srv, (_, admin) in current.items():
            if srv.startswith("t_") and srv not in live and not admin & (_MAINT | _DRAIN):
                await self.api.command(f"set server {be}/{srv} state drain")
        self._save_sidecar(routing)

    async def _resolve_all(self, p) -> dict[str, str]:
        resolved, aliases = await resolve_targets(p)
        self._alias.update(aliases)
        return resolved

    async def _forget(self, added: list[tuple[str, str]]) -> None:
        """Undo servers added by a failed apply (best effort; they never got traffic)."""
        for be, srv in added:
            try:
                await self.api.command(f"set server {be}/{srv} state maint")
                await self.api.command(f"del server {be}/{srv}", expect="Server deleted")
            except RouterError as e:
                log.warning("haproxy: could not remove %s/%s after a failed apply: %s", be, srv, e)

    async def current(self) -> RouteTable | None:
        try:
            data = json.loads(self.sidecar.read_text())
        except FileNotFoundError:
            return None
        except ValueError as e:
            log.warning("haproxy: unreadable %s: %s", self.sidecar, e)
            return None
        return RouteTable.from_dict(data["routing"]) if "routing" in data else None

    async def drain(self, addrs: list[str], timeout: float) -> bool:
        """Wait until the servers of ``addrs`` that are out of the routing have no session; then delete them."""
        want = set(addrs)
        deadline = time.monotonic() + timeout
        while True:
            stats = await self._show_stat()
            mine = [s for s in stats if s.addr in want and self._ours(s) and not self._is_live(s)]
            busy = sum(s.scur for s in mine)
            if busy == 0:
                await self._delete(mine)
                return True
            if time.monotonic() >= deadline:
                log.info("haproxy drain: %d session(s) still on %s after %.1fs", busy, sorted(want), timeout)
                return False
            await asyncio.sleep(0.05)

    async def stats(self) -> StatsSnapshot:
        stat = await self._show_stat()
        ours = [s for s in stat if self._ours(s)]
        in_flight: dict[str, int] = {}
        by_backend: dict[str, int] = {}
        for s in ours:
            in_flight[s.addr] = in_flight.get(s.addr, 0) + s.scur
            by_backend[s.backend] = by_backend.get(s.backend, 0) + s.scur
        if self.mode == "managed":
            if self._tail is None:
                self._open_log()
            lines = await asyncio.to_thread(self._tail.read)
            records = [haproxy_record(line, self.app) for line in lines]
            for rec in records:
                if rec and rec["target"] in self._alias:
                    rec["target"] = self._alias[rec["target"]]
            self._book.add_all(records)
            self._maybe_truncate_log()
            snap = self._book.snapshot(in_flight)
            for name, slot in self._slots.items():
                if name in snap["releases"]:
                    snap["releases"][name]["in_flight"] = by_backend.get(backend_name(self.app, slot), 0)
            return snap
        return self._external_stats(ours)

    def info(self) -> RouterInfo:
        return RouterInfo(
            type="haproxy",
            mode=self.mode,
            detail={
                "pid": self._pid() if self.mode == "managed" else None,
                "socket": self.api.socket_path,
                "config": self.paths.conf if self.mode == "managed" else None,
                "backend": self.external_backend,
                "slots": dict(self._slots),
            },
        )

    # -- internals ------------------------------------------------------
    def _config_text(self) -> str:
        return render_config(
            self.app,
            self.cfg.listen,
            self.paths,
            self.key,
            user=_drop_to(),
            hold_timeout=self.cfg.hold_timeout,
            drain_timeout=self.cfg.drain_timeout,
            trusted_proxies=self.cfg.trusted_proxies,
            split_key=self.split_key,
        )

    async def _show_stat(self) -> list[ServerStat]:
        """``show stat``, addresses named as the routing names them (a resolved name shows as its IP)."""
        return [
            dataclasses.replace(s, addr=self._alias[s.addr]) if s.addr in self._alias else s
            for s in await self.api.show_stat()
        ]

    def _ours(self, s: ServerStat) -> bool:
        if self.mode == "external":
            return s.backend == self.external_backend and s.name.startswith("t_")
        return s.backend.startswith(f"nonstop_{ident(self.app)}_r")

    def _is_live(self, s: ServerStat) -> bool:
        if self.mode == "external":
            return s.status not in ("DRAIN", "MAINT") and "DRAIN" not in s.status and "MAINT" not in s.status
        for name, slot in self._slots.items():
            if backend_name(self.app, slot) == s.backend:
                return not ("DRAIN" in s.status or "MAINT" in s.status)
        return False

    async def _delete(self, servers: list[ServerStat]) -> None:
        for s in servers:
            try:
                await self.api.command(f"set server {s.backend}/{s.name} state maint")
                await self.api.command(f"del server {s.backend}/{s.name}", expect="Server deleted")
                if self.mode == "external":
                    prev = self._retired.get(s.addr)
                    self._retired[s.addr] = sum_stat(prev, self._last_seen.get((s.backend, s.name), s))
                    self._last_seen.pop((s.backend, s.name), None)
            except RouterError as e:
                # A straggler (a keep-alive request arriving right now): it stays in drain; next drain retries.
                log.info("haproxy: %s/%s not deleted yet: %s", s.backend, s.name, e.message)

    async def _slot_state(self) -> dict[int, dict[str, tuple[str, int]]]:
        out = {}
        for s in range(SLOTS):
            out[s] = await self.api.servers(backend_name(self.app, s))
        return out

    def _external_stats(self, ours: list[ServerStat]) -> StatsSnapshot:
        targets: dict[str, Any] = {}
        releases: dict[str, Any] = {}
        per_addr: dict[str, ServerStat] = dict(self._retired)
        for s in ours:
            self._last_seen[(s.backend, s.name)] = s
            per_addr[s.addr] = sum_stat(per_addr.get(s.addr), s)
        for addr, s in per_addr.items():
            snap = stat_snapshot(s)
            targets[addr] = snap
            rel = self._server_release.get(server_name(addr))
            if rel:
                releases[rel] = add_snapshots(releases.get(rel), snap)
        return {"releases": releases, "targets": targets}

    async def _answers(self) -> bool:
        try:
            out = await self.api.raw("show info")
            return "Name: HAProxy" in out
        except RouterError:
            return False

    def _pid(self) -> int | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        try:
            pid = int(Path(self.paths.pid).read_text().strip())
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE and "haproxy" in " ".join(p.cmdline()):
                return pid
        except (FileNotFoundError, ValueError, psutil.Error):
            pass
        return None

    def _save_sidecar(self, routing: RouteTable) -> None:
        data = {"routing": routing.to_dict(), "slots": self._slots, "server_release": self._server_release}
        write_atomic(self.sidecar, json.dumps(data, indent=2) + "\n")

    def _load_sidecar(self) -> None:
        try:
            data = json.loads(self.sidecar.read_text())
        except (FileNotFoundError, ValueError):
            return
        self._slots = {k: int(v) for k, v in (data.get("slots") or {}).items()}
        self._server_release = dict(data.get("server_release") or {})

    def _open_log(self) -> None:
        if self.mode == "managed" and self._tail is None:
            self._tail = LogTail(self.paths.access_log, from_end=True)
            self._tail.read()

    def _maybe_truncate_log(self) -> None:
        """HAProxy writes its log to its stdout, which cannot be reopened: past the limit, the file is
        truncated in place right after being read (opened O_APPEND, so writes continue at 0). Lines
        written between that read and the truncation are lost from stats (a few at most)."""
        try:
            if os.path.getsize(self.paths.access_log) >= LOG_TRUNCATE_BYTES:
                os.truncate(self.paths.access_log, 0)
        except OSError as e:
            log.warning("haproxy managed: cannot truncate %s: %s", self.paths.access_log, e)

    def _error_tail(self) -> str:
        return error_tail(self.paths.error_log)


def _drop_to() -> str | None:
    """As root, HAProxy drops to nobody after binding (it opens nothing later but its socket, made before)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return None
    import grp

    for g in ("nogroup", "nobody"):
        try:
            grp.getgrnam(g)
            return f"nobody {g}"
        except KeyError:
            continue
    return None
