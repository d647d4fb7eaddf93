"""The CLI's client of the agent's control API (HTTP over ``agent.sock``).

Foreign exceptions (httpx) become nonstop's own here, at one boundary:
an agent that does not answer is ``AgentUnreachable`` (exit 3); an error
answer is re-raised as the ``NonstopError`` subclass with the agent's exit code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from nonstop.errors import AgentUnreachable, NonstopError


class RemoteError(NonstopError):
    """An error the agent answered with; carries the agent's exit code."""

    def __init__(self, message: str, exit_code: int, detail: dict | None = None) -> None:
        super().__init__(message, detail=detail)
        self.exit_code = exit_code


class AgentClient:
    """One typed request per verb to the agent at ``socket``."""

    def __init__(self, socket: Path, timeout: float = 10.0) -> None:
        self.socket = socket
        self._client = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(socket)),
            base_url="http://agent",
            trust_env=False,
            timeout=httpx.Timeout(timeout, connect=2.0),
        )

    def _raise_for(self, r: httpx.Response) -> None:
        if r.status_code < 400:
            return
        try:
            body = r.json()
        except ValueError:
            raise RemoteError(f"agent answered {r.status_code}: {r.text[:200]}", 1) from None
        detail = {k: v for k, v in body.items() if k not in ("error", "message", "exit_code")}
        raise RemoteError(body.get("message", "error"), int(body.get("exit_code", 1)), detail)

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        if not self.socket.exists():
            raise AgentUnreachable(f"the agent is not running (no socket at {self.socket}); start it with `nonstop up`")
        try:
            r = self._client.request(method, path, **kw)
        except httpx.TransportError as e:
            raise AgentUnreachable(f"the agent does not answer on {self.socket}: {e}") from None
        self._raise_for(r)
        return r

    def get(self, path: str, **params: Any) -> Any:
        return self._call("GET", path, params={k: v for k, v in params.items() if v is not None}).json()

    def text(self, path: str, **params: Any) -> str:
        return self._call("GET", path, params={k: v for k, v in params.items() if v is not None}).text

    def post(self, path: str, body: dict | None = None) -> Any:
        return self._call("POST", path, json=body or {}).json()

    def stream(self, path: str, body: dict) -> Iterator[dict]:
        """POST and yield NDJSON events until the ``result`` event."""
        if not self.socket.exists():
            raise AgentUnreachable(f"the agent is not running (no socket at {self.socket}); start it with `nonstop up`")
        try:
            with self._client.stream("POST", path, json=body, timeout=httpx.Timeout(None, connect=2.0)) as r:
                if r.status_code >= 400:
                    r.read()
                    self._raise_for(r)
                for line in r.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.TransportError as e:
            raise AgentUnreachable(f"lost the agent on {self.socket}: {e}") from None

    def alive(self) -> bool:
        try:
            self.get("/ping")
            return True
        except NonstopError:
            return False
