"""The agent's control API (HTTP + JSON over ``agent.sock``): each handler delegates in a line or two.

Long operations answer with a stream of NDJSON events ending in a
``{"type": "result", ...}`` line. Errors are JSON with the exit code the CLI
should use (``NonstopError.exit_code``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable

import uvicorn

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from nonstop import __version__
from nonstop.agent import logfiles
from nonstop.errors import NonstopError, UsageError
from nonstop.protocol import DeployRequest, RollbackRequest, SteerRequest, error_json, event_json

def error_response(e: NonstopError) -> JSONResponse:
    body, status = error_json(e)
    return JSONResponse(body, status_code=status)


class AgentServer(uvicorn.Server):
    """uvicorn serving the control API or the dashboard inside the agent: the agent handles signals itself."""

    def capture_signals(self):
        return contextlib.nullcontext()


# -- the control actions: the API's handlers and the dashboard's buttons both call these --------------
async def start_deploy(agent, req: DeployRequest) -> int:
    return await agent.deployer.deploy(req.version, req.artifact, req.strategy, req.image)


async def start_rollback(agent, req: RollbackRequest) -> int:
    return await agent.deployer.rollback(req.to)


def steer(agent, req: SteerRequest) -> dict:
    dep = agent.deployer.steer(req.action)
    return {"ok": True, "deployment": dep.id, "action": req.action}


async def json_body(request: Request) -> dict:
    """The request's JSON object body ({} when empty); ``UsageError`` otherwise."""
    raw = await request.body()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        raise UsageError("request body is not JSON") from None
    if not isinstance(data, dict):
        raise UsageError("request body must be a JSON object")
    return data


def make_app(agent, on_down: Callable[[], None]) -> Starlette:
    """The control API for ``agent`` (a ``nonstop.agent.daemon.Agent``)."""

    def stream_deployment(dep_id: int) -> StreamingResponse:
        async def gen() -> AsyncIterator[bytes]:
            async for ev in agent.events.follow(dep_id, until=lambda e: e.type == "result"):
                yield (json.dumps(event_json(ev)) + "\n").encode()

        return StreamingResponse(gen(), media_type="application/x-ndjson")

    async def ping(request: Request) -> Response:
        return JSONResponse({"ok": True, "app": agent.cfg.app, "version": __version__, "pid": os.getpid(),
                             "started_at": agent.started_at})

    async def status(request: Request) -> Response:
        return JSONResponse(await agent.status())

    async def history(request: Request) -> Response:
        limit = int(request.query_params.get("limit", "50"))
        if getattr(agent, "reread_cluster", None) is not None:  # kubernetes: the history is the cluster's; read it now
            await agent.reread_cluster()
        return JSONResponse(agent.history(limit))

    async def deploy(request: Request) -> Response:
        req = DeployRequest.from_json(await json_body(request))
        dep_id = await start_deploy(agent, req)
        return stream_deployment(dep_id) if req.follow else JSONResponse({"deployment": dep_id})

    async def rollback(request: Request) -> Response:
        req = RollbackRequest.from_json(await json_body(request))
        dep_id = await start_rollback(agent, req)
        return stream_deployment(dep_id) if req.follow else JSONResponse({"deployment": dep_id})

    async def steer_(request: Request) -> Response:
        return JSONResponse(steer(agent, SteerRequest.from_json(await json_body(request))))

    async def events(request: Request) -> Response:
        q = request.query_params
        dep = int(q["deployment"]) if q.get("deployment") else None
        after = int(q.get("after", "0"))
        if q.get("follow"):
            return stream_deployment(dep)
        evs = agent.store.events(dep, after_id=after)
        return JSONResponse([event_json(e) for e in evs])

    async def logs(request: Request) -> Response:
        q = request.query_params
        lines = int(q.get("lines", "100"))
        if getattr(agent, "runtime_logs", None) is not None:  # kubernetes: the pods' logs, from the API server (JSON)
            return JSONResponse(await agent.runtime_logs(q.get("release"), lines))
        release = q.get("release") or agent.traffic.live_release
        if release is None:
            raise UsageError("no release is live; name one: nonstop logs RELEASE")
        if agent.store.get_release(release) is None and release not in ("agent", "proxy"):
            raise UsageError(f"unknown release {release!r}")
        return PlainTextResponse(agent_logs(agent, release, lines))

    async def down(request: Request) -> Response:
        await agent.down()
        on_down()
        return JSONResponse({"ok": True})

    async def handle_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, NonstopError):
            return error_response(exc)
        if isinstance(exc, (ValueError, KeyError)):
            return error_response(UsageError(f"bad request: {exc}"))
        return JSONResponse({"error": "InternalError", "message": repr(exc), "exit_code": 1}, status_code=500)

    routes = [
        Route("/ping", ping),
        Route("/status", status),
        Route("/history", history),
        Route("/deploy", deploy, methods=["POST"]),
        Route("/rollback", rollback, methods=["POST"]),
        Route("/steer", steer_, methods=["POST"]),
        Route("/events", events),
        Route("/logs", logs),
        Route("/down", down, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={NonstopError: handle_error, ValueError: handle_error, KeyError: handle_error, Exception: handle_error})


def agent_logs(agent, release: str, lines: int) -> str:
    """Tail of each instance log of ``release`` (or of the agent / proxy log)."""
    logs_dir = agent.state / "logs"
    if release in ("agent", "proxy"):
        files = [logs_dir / f"{release}.log"]
    else:
        files = sorted(logs_dir.glob(f"{release}-*.log"))
    out = []
    for f in files:
        out.append(f"==> {f.name} <==")
        out.append(logfiles.tail(f, lines))
    return "\n".join(out) + "\n" if out else f"(no logs for {release})\n"
