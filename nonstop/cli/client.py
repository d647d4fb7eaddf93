"""The CLI's client of the agent's control API (HTTP/1.1 over ``agent.sock``).

Standard library sockets only, not even ``http.client``: a command like
``nonstop rollback`` must reach the agent in milliseconds, and importing an
HTTP library (http.client pulls in email parsing and ssl) costs more than the
whole round trip. The agent is ours and answers plain HTTP/1.1 (a body by
Content-Length, chunked, or until close), so the client is a page of code.
Failures become nonstop's own errors here, at one boundary: an agent that
does not answer is ``AgentUnreachable`` (exit 3); an error answer is
re-raised with the agent's exit code.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

from nonstop.errors import AgentUnreachable, NonstopError
from nonstop.unixsock import reachable

_MAX_HEAD = 64 * 1024


class RemoteError(NonstopError):
    """An error the agent answered with; carries the agent's exit code."""

    def __init__(self, message: str, exit_code: int, detail: dict | None = None) -> None:
        super().__init__(message, detail=detail)
        self.exit_code = exit_code


class _BadAnswer(OSError):
    """The agent's answer is not the HTTP/1.1 we expect."""


class _Response:
    """One answer read from a socket file: status, headers, then the body by its framing."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.f = sock.makefile("rb")
        line = self.f.readline(_MAX_HEAD)
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise _BadAnswer(f"not an HTTP answer: {line[:80]!r}")
        self.status = int(parts[1])
        self.headers: dict[bytes, bytes] = {}
        while True:
            line = self.f.readline(_MAX_HEAD)
            if not line.endswith(b"\n"):
                raise _BadAnswer("the answer ended inside its head")
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower()] = value.strip()
        self.chunked = b"chunked" in self.headers.get(b"transfer-encoding", b"").lower()
        length = self.headers.get(b"content-length")
        self.left = int(length) if length is not None and not self.chunked else -1  # -1: until close
        self.buf = b""

    def _more(self) -> bytes:
        """The next piece of the body; b"" at its end."""
        if self.chunked:
            size = self.f.readline(_MAX_HEAD)
            if not size.endswith(b"\n"):
                raise _BadAnswer("the answer ended inside a chunk size")
            n = int(size.split(b";")[0].strip() or b"0", 16)
            if n == 0:
                self.chunked = False
                self.left = 0
                return b""
            data = self.f.read(n + 2)
            if len(data) != n + 2:
                raise _BadAnswer("the answer ended inside a chunk")
            return data[:n]
        if self.left == 0:
            return b""
        data = self.f.read1(65536 if self.left < 0 else min(self.left, 65536))
        if not data and self.left > 0:
            raise _BadAnswer("the answer ended before its Content-Length")
        if self.left > 0:
            self.left -= len(data)
        return data

    def read(self) -> bytes:
        out = [self.buf]
        self.buf = b""
        while chunk := self._more():
            out.append(chunk)
        return b"".join(out)

    def readline(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self._more()
            if not chunk:
                line, self.buf = self.buf, b""
                return line
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line + b"\n"

    def close(self) -> None:
        self.f.close()
        self.sock.close()


def _request(path: str, method: str, target: str, body: bytes | None, timeout: float | None) -> _Response:
    """Send one request (Connection: close) on a new connection to the Unix socket at ``path``."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        with reachable(path) as where:
            s.connect(where)
        head = f"{method} {target} HTTP/1.1\r\nHost: agent\r\nConnection: close\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        s.sendall(head.encode("latin-1") + b"\r\n" + (body or b""))
        return _Response(s)
    except (OSError, ValueError):
        s.close()
        raise


class AgentClient:
    """One typed request per verb to the agent at ``socket``."""

    def __init__(self, socket_path: Path, timeout: float = 30.0) -> None:
        self.socket = socket_path
        self.timeout = timeout

    def _open(self, method: str, path: str, body: dict | None, timeout: float | None) -> _Response:
        if not self.socket.exists():
            raise AgentUnreachable(f"the agent is not running (no socket at {self.socket}); start it with `nonstop up`")
        data = json.dumps(body).encode() if body is not None else None
        try:
            r = _request(str(self.socket), method, path, data, timeout)
        except (OSError, ValueError) as e:
            raise AgentUnreachable(f"the agent does not answer on {self.socket}: {e}; start it with `nonstop up`") from None
        if r.status >= 400:
            try:
                raw = r.read()
            except (OSError, ValueError) as e:
                raise AgentUnreachable(f"lost the agent on {self.socket}: {e}") from None
            finally:
                r.close()
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
        except (OSError, ValueError) as e:
            raise AgentUnreachable(f"lost the agent on {self.socket}: {e}") from None
        finally:
            r.close()

    @staticmethod
    def _path(path: str, params: dict[str, object]) -> str:
        q = {k: v for k, v in params.items() if v is not None}
        return f"{path}?{urlencode(q)}" if q else path

    def _json(self, raw: bytes) -> object:
        try:
            return json.loads(raw)
        except ValueError:
            raise AgentUnreachable(f"the agent on {self.socket} answered something that is not JSON: {raw[:80]!r}") from None

    def get(self, path: str, **params: object) -> object:
        return self._json(self._read("GET", self._path(path, params)))

    def text(self, path: str, **params: object) -> str:
        return self._read("GET", self._path(path, params)).decode("utf-8", "replace")

    def post(self, path: str, body: dict | None = None) -> object:
        return self._json(self._read("POST", path, body or {}))

    def stream(self, path: str, body: dict) -> Iterator[dict]:
        """POST and yield NDJSON events until the stream ends (the ``result`` event is last)."""
        r = self._open("POST", path, body, None)
        try:
            while True:
                try:
                    line = r.readline()
                except (OSError, ValueError) as e:
                    raise AgentUnreachable(f"lost the agent on {self.socket}: {e}") from None
                if not line:
                    return
                if line.strip():
                    yield self._json(line)
        finally:
            r.close()

    def alive(self) -> bool:
        try:
            self.get("/ping")
            return True
        except NonstopError:
            return False
