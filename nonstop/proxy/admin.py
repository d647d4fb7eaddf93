"""The admin API: HTTP/1.1 + JSON on a Unix socket (mode 0600). Each handler is a few lines over ProxyServer.

One request per connection (answers carry ``Connection: close``); bodies
need a Content-Length. ``POST /takeover`` is for a new proxy process only: its
answer carries the listening socket as SCM_RIGHTS ancillary data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time

from nonstop import __version__
from nonstop.errors import NonstopError
from nonstop.proxy import stats
from nonstop.proxy.drain import Action, DrainPlan
from nonstop.proxy.routes import InvalidRoutes, RouteTable, StaleRevision

log = logging.getLogger("nonstop.proxy")

_MAX_BODY = 4 * 1024 * 1024


class _Reply(Exception):
    def __init__(self, status: int, payload, content_type: str = "application/json") -> None:
        self.status = status
        self.payload = payload
        self.content_type = content_type


def _error(status: int, err: NonstopError | str, name: str = "ProxyError") -> _Reply:
    if isinstance(err, NonstopError):
        return _Reply(status, err.to_dict())
    return _Reply(status, {"error": name, "message": err})


class AdminAPI:
    """The admin endpoints of one proxy process (``server`` is its ProxyServer)."""

    def __init__(self, server) -> None:
        self.server = server

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                method, path, body = await asyncio.wait_for(_read_request(reader), 10)
                result = await self.dispatch(method, path, body, writer)
                if result is None:  # answered already (takeover)
                    return
                reply = _Reply(200, result) if not isinstance(result, _Reply) else result
            except _Reply as r:
                reply = r
            except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                return
            except Exception as e:  # a bug must not take the admin socket down
                log.exception("admin request failed")
                reply = _error(500, f"{type(e).__name__}: {e}")
            if isinstance(reply.payload, str):
                body_out = reply.payload.encode()
            else:
                body_out = json.dumps(reply.payload).encode()
            writer.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
                % (reply.status, b"OK" if reply.status == 200 else b"Error", reply.content_type.encode(),
                   len(body_out))
                + body_out
            )
            await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def dispatch(self, method: str, path: str, body: bytes, writer):
        path, _, query = path.partition("?")
        if path == "/health" and method == "GET":
            return await self.health()
        if path == "/routes":
            if method == "GET":
                return self.server.state.table.to_dict()
            if method == "PUT":
                return await self.put_routes(body)
        if path == "/drain" and method == "POST":
            return await self.drain(_json(body))
        if path == "/stats" and method == "GET":
            return await self.stats(pairs="pairs=1" in query)
        if path == "/metrics" and method == "GET":
            return _Reply(200, stats.prometheus(await self.pairs()), "text/plain; version=0.0.4")
        if path == "/takeover" and method == "POST":
            self.server.hand_over(writer)
            return None
        if path == "/share" and method == "POST":
            self.server.share(writer)
            return None
        if path == "/tls" and method == "PUT":
            return await self.put_tls(_json(body))
        if path == "/tls" and method == "GET":
            return self.get_tls()
        raise _error(404, f"no {method} {path}", "NotFound")

    async def health(self) -> dict:
        srv = self.server
        return {
            "ok": True,
            "version": __version__,
            "pid": os.getpid(),
            "revision": srv.state.table.revision,
            "started_at": srv.state.started_at,
            "listen": srv.listen_addr,
            "tls_listen": srv.tls_addr,
            "stopping": srv.state.closing,
        }

    async def put_tls(self, req) -> dict:
        """New certificate files (``{"certificates": [{"field", "cert", "key"}]}``): checked, then swapped in."""
        from nonstop.proxy.certs import CertSource

        if not isinstance(req, dict) or not isinstance(req.get("certificates"), list):
            raise _error(400, "certificates: expected a list of {field, cert, key}", "InvalidRequest")
        try:
            sources = [CertSource(str(c["field"]), str(c["cert"]), str(c["key"])) for c in req["certificates"]]
        except (KeyError, TypeError):
            raise _error(400, "certificates: each needs field, cert and key", "InvalidRequest") from None
        try:
            self.server.replace_certificates(sources)
        except NonstopError as e:
            raise _error(400, e) from None
        log.info("certificates replaced: %s", ", ".join(s.field for s in sources))
        return {"certificates": len(sources)}

    def get_tls(self) -> dict:
        tls = getattr(self.server, "tls", None)
        return {"certificates": tls.describe(time.time()) if tls is not None else []}

    def check_routes(self, body: bytes) -> RouteTable:
        """Parse a ``PUT /routes`` body and settle its revision; raises the 400 / 409 reply."""
        state = self.server.state
        try:
            table = RouteTable.from_json(body)
        except InvalidRoutes as e:
            raise _error(400, e) from None
        try:
            return table.settle(state.table.revision)
        except StaleRevision as e:
            raise _error(409, e) from None

    def commit(self, table) -> None:
        """Save ``table``, then make it live. Saved first: when the disk write fails, nothing changed."""
        try:
            self.server.save_routes(table)
        except OSError as e:
            raise _error(500, f"cannot save routes: {e}") from None
        self.server.state.apply(table)

    async def put_routes(self, body: bytes) -> dict:
        table = self.check_routes(body)
        self.commit(table)
        log.info("routes applied revision=%d", table.revision)
        return {"revision": table.revision}

    async def drain(self, req) -> dict:
        addrs, timeout, up_t = parse_drain(req)
        state = self.server.state
        loop = asyncio.get_running_loop()
        plan = DrainPlan(started=loop.time(), timeout=timeout, upgraded_timeout=up_t)
        log.info("drain started targets=%s timeout=%.1fs", ",".join(addrs), timeout)
        while True:
            counts = [state.in_flight(a) for a in addrs]
            action, drained = plan.next(loop.time(), sum(c[0] for c in counts), sum(c[1] for c in counts))
            if action is Action.DONE:
                break
            if action is Action.CLOSE_TUNNELS:
                for a in addrs:
                    t = state.targets.get(a)
                    if t is not None:
                        for ex in list(t.tunnels):
                            ex.close_tunnel()
            await asyncio.sleep(0.02)
        in_flight = {a: sum(state.in_flight(a)) for a in addrs}
        log.info("drain done drained=%s", drained)
        return {"drained": drained, "in_flight": in_flight}

    async def pairs(self) -> list[tuple[str, str, stats.Counters]]:
        return list(self.server.state.iter_pairs())

    async def stats(self, pairs: bool = False) -> dict:
        state = self.server.state
        in_flight = {a: t.in_flight for a, t in state.targets.items()}
        out = report(await self.pairs(), in_flight, state.unrouted, state.rejected)
        out.update(revision=state.table.revision, started_at=state.started_at)
        if pairs:
            out["pairs"] = [[r, a, stats.to_dict(c)] for r, a, c in await self.pairs()]
        return out


def report(pairs, target_in_flight: dict[str, int], unrouted: stats.Counters, rejected: int) -> dict:
    """The body of ``GET /stats`` (without revision / started_at) from (release, target, counters) triples."""
    by_target: dict[str, stats.Counters] = {}
    by_release: dict[str, stats.Counters] = {}
    for rel, addr, c in pairs:
        by_target.setdefault(addr, stats.Counters()).add(c)
        by_release.setdefault(rel, stats.Counters()).add(c)
    # in-flight per target is the target's own count (a pair may be gone from the table)
    for addr, c in by_target.items():
        if addr in target_in_flight:
            c.in_flight = target_in_flight[addr]
    return {
        "time": time.time(),
        "targets": {a: stats.to_dict(c) for a, c in by_target.items()},
        "releases": {r: stats.to_dict(c) for r, c in by_release.items()},
        "unrouted": stats.to_dict(unrouted),
        "rejected": rejected,
    }


def parse_drain(req) -> tuple[list[str], float, float | None]:
    if not isinstance(req, dict) or not isinstance(req.get("targets"), list):
        raise _error(400, "targets: expected a list of HOST:PORT", "InvalidRequest")
    try:
        timeout = float(req.get("timeout", 30))
        up_t = req.get("upgraded_timeout")
        up_t = None if up_t is None else float(up_t)
    except (TypeError, ValueError):
        raise _error(400, "timeout: expected seconds", "InvalidRequest") from None
    return [str(a) for a in req["targets"]], timeout, up_t


def _json(body: bytes):
    try:
        return json.loads(body or b"{}")
    except ValueError as e:
        raise _error(400, f"body is not JSON: {e}", "InvalidRequest") from None


async def _read_request(reader: asyncio.StreamReader) -> tuple[str, str, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise _error(400, "bad request line", "InvalidRequest")
    method, path, _ = parts
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        lname = name.strip().lower()
        if lname == "content-length":
            try:
                length = int(value.strip())
            except ValueError:
                raise _error(400, "bad Content-Length", "InvalidRequest") from None
        elif lname == "transfer-encoding":
            raise _error(411, "send a Content-Length", "InvalidRequest")
    if length < 0 or length > _MAX_BODY:
        raise _error(413, "body too large", "InvalidRequest")
    body = await reader.readexactly(length) if length else b""
    return method, path, body
