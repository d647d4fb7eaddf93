"""The CLI's client of the agent's control API (HTTP/1.1 over ``agent.sock``).

Standard library only (``http.client`` on a Unix socket): a command like
``nonstop rollback`` must reach the agent in milliseconds, and importing an
HTTP library costs more than the whole round trip. Failures become nonstop's
own errors here, at one boundary: an agent that does not answer is
``AgentUnreachable`` (exit 3); an error answer is re-raised with the agent's
exit code.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from nonstop.errors import AgentUnreachable, NonstopError
from nonstop.unixsock import reachable


class RemoteError(NonstopError):
    """An error the agent answered with; carries the agent's exit code."""

    def __init__(self, message: str, exit_code: int, detail: dict | None = None) -> None:
        super().__init__(message, detail=detail)
        self.exit_code = exit_code


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("agent", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            with reachable(self._path) as where:
                s.connect(where)
        except OSError:
            s.close()
            raise
        self.sock = s


class AgentClient:
    """One typed request per verb to the agent at ``socket``."""

    def __init__(self, socket_path: Path, timeout: float = 30.0) -> None:
        self.socket = socket_path
        self.timeout = timeout

    def _open(self, method: str, path: str, body: dict | None, timeout: float | None) -> http.client.HTTPResponse:
        if not self.socket.exists():
            raise AgentUnreachable(f"the agent is not running (no socket at {self.socket}); start it with `nonstop up`")
        conn = _UnixConnection(str(self.socket), timeout)
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        try:
            conn.request(method, path, body=data, headers=headers)
            r = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            raise AgentUnreachable(f"the agent does not answer on {self.socket}: {e}; start it with `nonstop up`") from None
        if r.status >= 400:
            raw = r.read()
            conn.close()
            try:
                err = json.loads(raw)
            except ValueError:
                raise RemoteError(f"agent answered {r.status}: {raw[:200]!r}", 1) from None
            detail = {k: v for k, v in err.items() if k not in ("error", "message", "exit_code")}
            raise RemoteError(err.get("message", "error"), int(err.get("exit_code", 1)), detail)
        return r

    def _read(self, method: str, path: str, body: dict | None = None) -> bytes:
        r = self._open(method, path, body, self.timeout)
        try:
            return r.read()
        except (OSError, http.client.HTTPException) as e:
            raise AgentUnreachable(f"lost the agent on {self.socket}: {e}") from None
        finally:
            r.close()

    @staticmethod
    def _path(path: str, params: dict[str, Any]) -> str:
        q = {k: v for k, v in params.items() if v is not None}
        return f"{path}?{urlencode(q)}" if q else path

    def get(self, path: str, **params: Any) -> Any:
        return json.loads(self._read("GET", self._path(path, params)))

    def text(self, path: str, **params: Any) -> str:
        return self._read("GET", self._path(path, params)).decode("utf-8", "replace")

    def post(self, path: str, body: dict | None = None) -> Any:
        return json.loads(self._read("POST", path, body or {}))

    def stream(self, path: str, body: dict) -> Iterator[dict]:
        """POST and yield NDJSON events until the stream ends (the ``result`` event is last)."""
        r = self._open("POST", path, body, None)
        try:
            while True:
                try:
                    line = r.readline()
                except (OSError, http.client.HTTPException) as e:
                    raise AgentUnreachable(f"lost the agent on {self.socket}: {e}") from None
                if not line:
                    return
                if line.strip():
                    yield json.loads(line)
        finally:
            r.close()

    def alive(self) -> bool:
        try:
            self.get("/ping")
            return True
        except NonstopError:
            return False
