"""The dashboard and ``/metrics``: a second HTTP server of the agent, on loopback (DESIGN.md §5, §7).

Routes (all served by one starlette app on ``dashboard.listen``):

=========================  ==============================================================
``GET  /``                 the page (``static/index.html`` + ``app.js`` + ``app.css``)
``GET  /api/state``        everything the page shows, as JSON (status, history, timeline, samples)
``GET  /api/events``       server-sent events: ``state`` on connect, then ``tick`` every
                           second (a sample + the status) and ``event`` per agent event
``GET  /metrics``          Prometheus text (``nonstop.agent.metrics``)
``GET  /api/auth``         204 when the token is right (the page checks the one it was given)
``POST /api/promote``      ``{"full": bool}``: next step, or all the way
``POST /api/abort``
``POST /api/rollback``     ``{"to": release | null}``
=========================  ==============================================================

Reading needs nothing; changing needs ``Authorization: Bearer <token>``
(``<state_dir>/token``): no header → 401, a wrong one → 403, compared in
constant time. The page takes the token from the URL fragment
(``#token=…``, never sent to a server) or asks for it, and sends it as that
header. The buttons call the same ``Deployer`` methods as the control API.

Only loopback addresses are served unless the operator opts in
(``NONSTOP_DASHBOARD_ALLOW_REMOTE=1``); on loopback, requests whose
``Host`` is not a loopback name are refused (a DNS-rebinding page cannot
read the dashboard), and a POST from another origin is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn  # noqa: F401  (uvicorn.Config below)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from nonstop import __version__
from nonstop.agent import api
from nonstop.agent.api import json_body
from nonstop.agent.metrics import CONTENT_TYPE, Family, MetricsInput, render
from nonstop.agent.sampler import Sampler
from nonstop.errors import ConfigError, NonstopError
from nonstop.protocol import RollbackRequest, SteerRequest, event_json

__all__ = ["Dashboard", "start_dashboard", "check_listen", "ALLOW_REMOTE_ENV"]

log = logging.getLogger("nonstop.dashboard")

STATIC = Path(__file__).parent / "static"
ALLOW_REMOTE_ENV = "NONSTOP_DASHBOARD_ALLOW_REMOTE"
# Events that change the history / deployment picture: the next tick carries a fresh history.
_HISTORY_EVENTS = frozenset({"start", "result", "release", "recover"})
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


# -- the address -------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(listen: str, allow_remote: bool) -> tuple[str, int]:
    """(host, port) of ``dashboard.listen``; a non-loopback host raises ``ConfigError`` unless ``allow_remote``."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if not is_loopback(host) and not allow_remote:
        raise ConfigError(
            f"dashboard.listen: {listen} is not a loopback address. The dashboard shows your deployments to anyone "
            f"who can reach it (changes still need the token); serve it on 127.0.0.1 and reach it through an SSH "
            f"tunnel or a proxy with TLS, or set {ALLOW_REMOTE_ENV}=1 in the agent's environment to allow it."
        )
    return host, int(port)


def allow_remote(cfg) -> bool:
    return bool(getattr(cfg.dashboard, "allow_remote", False)) or os.environ.get(ALLOW_REMOTE_ENV, "") in ("1", "true", "yes")


# -- the live side -------------------------------------------------------------------------


class Dashboard:
    """Owns the dashboard's live state: the sampler loop (router stats once a second into a ring buffer) and the SSE subscribers."""

    def __init__(self, agent, *, notifier=None, interval: float = 1.0, size: int = 300, window: int = 5) -> None:
        self.agent = agent
        self.notifier = notifier
        self.interval = interval
        self.sampler = Sampler(size=size, window=window)
        self._subs: set[asyncio.Queue] = set()
        self._history_dirty = False
        self._closing = asyncio.Event()
        self.url: str | None = None

    # -- agent events -> subscribers (an EventBus listener: never blocks) ------------
    def on_event(self, ev) -> None:
        if ev.type in _HISTORY_EVENTS:
            self._history_dirty = True
        self._publish("event", event_json(ev))

    def _publish(self, kind: str, data: Any) -> None:
        if not self._subs:
            return
        msg = _sse(kind, data)
        for q in list(self._subs):
            try:
                q.put_nowait(msg)
            except asyncio.QueueFull:  # a stalled browser: cut it off; EventSource reconnects and gets a fresh state
                self._subs.discard(q)
                with contextlib.suppress(asyncio.QueueFull):
                    q.put_nowait(None)

    # -- sampling ----------------------------------------------------------------------------
    async def stats(self) -> tuple[dict | None, str | None]:
        try:
            return await asyncio.wait_for(self.agent.router.stats(), timeout=max(self.interval, 2.0)), None
        except (NonstopError, asyncio.TimeoutError, OSError) as e:
            return None, str(e) or type(e).__name__
        except Exception as e:  # a router bug must not stop the charts for good
            log.warning("router stats failed: %r", e)
            return None, repr(e)

    def weights(self) -> dict[str, int]:
        return {r.name: r.weight for r in self.agent.traffic.split.table().releases}

    async def run(self) -> None:
        """Sample once per ``interval`` until the agent stops."""
        stopping: asyncio.Event = self.agent.stopping
        next_at = time.monotonic()
        while not stopping.is_set() and not self._closing.is_set():
            stats, _ = await self.stats()
            sample = self.sampler.add(time.time(), stats, self.weights())
            if self._subs:
                try:
                    tick: dict[str, Any] = {"sample": sample.to_json(), "status": await self.agent.status()}
                    if self._history_dirty:
                        self._history_dirty = False
                        tick["history"] = self.agent.history(50)
                    self._publish("tick", tick)
                except Exception:
                    log.exception("dashboard tick failed")
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind (a slow router): skip, never burst
                next_at = time.monotonic()
                delay = self.interval
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._closing.wait(), timeout=delay)

    def close(self) -> None:
        self._closing.set()
        for q in list(self._subs):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(None)
        self._subs.clear()

    # -- the pictures ----------------------------------------------------------------------------
    def timeline(self) -> dict:
        """The active deployment's events, else the latest one's."""
        store = self.agent.store
        dep = store.active_deployment()
        if dep is None:
            latest = store.list_deployments(1)
            dep = latest[0] if latest else None
        if dep is None:
            return {"deployment": None, "events": []}
        return {"deployment": dep.id, "events": [event_json(e) for e in store.events(dep.id)]}

    async def state(self) -> dict:
        a = self.agent
        return {
            "app": a.cfg.app,
            "version": __version__,
            "now": time.time(),
            "interval": self.interval,
            "window": self.sampler.window,
            "status": await a.status(),
            "history": a.history(50),
            "timeline": self.timeline(),
            "samples": self.sampler.to_json(),
        }

    async def metrics(self) -> str:
        a = self.agent
        stats, err = await self.stats()
        deps = [
            {
                "strategy": d.strategy,
                "state": d.state,
                "outcome": d.outcome,
                "seconds": (d.data or {}).get("seconds"),
                "started_at": d.started_at,
                "finished_at": d.finished_at,
            }
            for d in a.store.list_deployments(100_000)
        ]
        extra = []
        n = self.notifier
        if n:
            f = Family("nonstop_webhook_notifications_total", "counter", "Webhook notifications, by result (sent, failed, dropped).")
            for result, v in (("sent", n.sent), ("failed", n.failed), ("dropped", n.dropped)):
                f.add(v, result=result)
            extra.append(f)
        return render(MetricsInput(status=await a.status(), stats=stats, deployments=deps, version=__version__, stats_error=err, extra=extra))

    # -- SSE -------------------------------------------------------------------------------------
    async def stream(self) -> AsyncIterator[str]:
        q: asyncio.Queue = asyncio.Queue(maxsize=200)
        self._subs.add(q)
        try:
            yield "retry: 2000\n\n"
            yield _sse("state", await self.state())
            while not self._closing.is_set():
                try:
                    msg = await asyncio.wait_for(q.get(), timeout=15)
                except asyncio.TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if msg is None:
                    return
                yield msg
        finally:
            self._subs.discard(q)

    # -- the ASGI app -----------------------------------------------------------------------------
    def app(self, *, check_host: bool = True) -> ASGIApp:
        agent = self.agent

        def authorized(request: Request) -> Response | None:
            header = request.headers.get("authorization")
            if not header:
                return JSONResponse(
                    {"error": "Unauthorized", "message": "changing anything needs the token in <state_dir>/token, sent as 'Authorization: Bearer <token>'"},
                    status_code=401,
                    headers={"WWW-Authenticate": 'Bearer realm="nonstop"'},
                )
            scheme, _, token = header.partition(" ")
            # Digests first: compare_digest's time then depends on neither the value nor the length of the token.
            same = hmac.compare_digest(
                hashlib.sha256(token.strip().encode()).digest(), hashlib.sha256(agent.token.encode()).digest()
            )
            if scheme.lower() != "bearer" or not same:
                return JSONResponse({"error": "Forbidden", "message": "wrong token"}, status_code=403)
            return None

        async def index(request: Request) -> Response:
            return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

        async def state(request: Request) -> Response:
            return JSONResponse(await self.state(), headers={"Cache-Control": "no-store"})

        async def events(request: Request) -> Response:
            return StreamingResponse(
                self.stream(),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            )

        async def metrics(request: Request) -> Response:
            return Response(await self.metrics(), media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})

        async def auth(request: Request) -> Response:
            return authorized(request) or Response(status_code=204)

        # the buttons: the control API's own actions (nonstop/agent/api.py), behind the token
        async def promote(request: Request) -> Response:
            if (denied := authorized(request)) is not None:
                return denied
            body = await json_body(request)
            return JSONResponse(api.steer(agent, SteerRequest("promote_full" if body.get("full") else "promote")))

        async def abort(request: Request) -> Response:
            if (denied := authorized(request)) is not None:
                return denied
            return JSONResponse(api.steer(agent, SteerRequest("abort")))

        async def rollback(request: Request) -> Response:
            if (denied := authorized(request)) is not None:
                return denied
            req = RollbackRequest.from_json({**await json_body(request), "follow": False})
            dep_id = await api.start_rollback(agent, req)
            return JSONResponse({"ok": True, "deployment": dep_id, "action": "rollback"})

        async def handle_error(request: Request, exc: Exception) -> Response:
            if isinstance(exc, NonstopError):
                return api.error_response(exc)
            log.exception("dashboard request failed")
            return JSONResponse({"error": "InternalError", "message": repr(exc)}, status_code=500)

        routes = [
            Route("/", index),
            Route("/api/state", state),
            Route("/api/events", events),
            Route("/api/auth", auth),
            Route("/metrics", metrics),
            Route("/api/promote", promote, methods=["POST"]),
            Route("/api/abort", abort, methods=["POST"]),
            Route("/api/rollback", rollback, methods=["POST"]),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
        app = Starlette(routes=routes, exception_handlers={NonstopError: handle_error, Exception: handle_error})
        return _Guard(app, check_host=check_host)


class _Guard:
    """Security headers on every answer; loopback-only Host names; same-origin POSTs."""

    def __init__(self, app: ASGIApp, *, check_host: bool) -> None:
        self.app = app
        self.check_host = check_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if self.check_host and not is_loopback(_hostname(host)):
            await _plain(send, 421, "this dashboard answers to loopback host names only (127.0.0.1, localhost, [::1])")
            return
        origin = headers.get("origin")
        if scope["method"] not in ("GET", "HEAD") and origin and origin.split("://", 1)[-1] != host:
            await _plain(send, 403, "cross-origin request refused")
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                    (b"content-security-policy", _CSP.encode()),
                ]
                message = {**message, "headers": list(message.get("headers", [])) + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _hostname(host: str) -> str:
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


async def _plain(send: Send, status: int, text: str) -> None:
    body = (text + "\n").encode()
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _sse(kind: str, data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n"


# -- serving -----------------------------------------------------------------------------------------


class Running:
    """A started dashboard: its server task and sampler task; ``stop()`` ends both within a few seconds."""

    def __init__(self, dash: Dashboard, server: api.AgentServer | None, tasks: list[asyncio.Task], url_file: Path | None) -> None:
        self.dashboard = dash
        self.server = server
        self.tasks = tasks
        self.url_file = url_file

    async def stop(self) -> None:
        self.dashboard.close()
        if self.server is not None:
            self.server.should_exit = True
        for t in self.tasks:
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(t, 5)
        if self.url_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.url_file.unlink()


async def start_dashboard(agent, *, notifier=None) -> Running | None:
    """Serve the dashboard on ``cfg.dashboard.listen`` (the caller checked it with ``check_listen``).

    A port already taken is logged and the agent carries on without a dashboard:
    deploying matters more than watching. The address actually bound (port 0
    picks one) is written to ``<state_dir>/dashboard.url``.
    """
    cfg = agent.cfg
    remote = allow_remote(cfg)
    httpx_log = logging.getLogger("httpx")
    if httpx_log.level == logging.NOTSET:  # the sampler's once-a-second stats call would fill the agent log
        httpx_log.setLevel(logging.WARNING)
    host, port = check_listen(cfg.dashboard.listen, remote)
    dash = Dashboard(agent, notifier=notifier)
    agent.events.listen(dash.on_event)
    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(dash.run(), name="dashboard sampler")]
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=64, reuse_port=False)
    except OSError as e:
        log.error("dashboard: cannot listen on %s: %s; the agent runs without it (metrics and the page are off)", cfg.dashboard.listen, e)
        with contextlib.suppress(Exception):
            await agent.events.emit(None, "error", f"dashboard: cannot listen on {cfg.dashboard.listen}: {e.strerror or e}")
        return Running(dash, None, tasks, None)
    sock.setblocking(False)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if family == socket.AF_INET6 else bound[0]
    dash.url = f"http://{shown}:{bound[1]}/"
    server = api.AgentServer(
        uvicorn.Config(
            dash.app(check_host=not remote),
            log_level="warning",
            access_log=False,
            lifespan="off",
            proxy_headers=False,
            timeout_graceful_shutdown=1,
        )
    )
    tasks.append(loop.create_task(server.serve(sockets=[sock]), name="dashboard server"))
    url_file = agent.state / "dashboard.url"
    tmp = url_file.with_suffix(".tmp")
    tmp.write_text(dash.url + "\n")
    tmp.replace(url_file)
    log.info("dashboard on %s (metrics on %smetrics)", dash.url, dash.url)
    return Running(dash, server, tasks, url_file)
