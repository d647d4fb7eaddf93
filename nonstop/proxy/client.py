"""AdminClient: the Python client of the proxy's admin API (used by the agent's embedded router and by tests).

Every failure (socket missing, refused, timeout, 4xx/5xx answer) becomes a
``nonstop.errors.ProxyError`` carrying the status and the proxy's message.
"""

from __future__ import annotations

import asyncio
import json as jsonlib

from nonstop.errors import ProxyError
from nonstop.unixsock import reachable
from nonstop.proxy.routes import RouteTable


class AdminClient:
    """Talks to one proxy's admin socket; one short-lived HTTP connection per call."""

    def __init__(self, socket_path: str, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    async def _call(self, method: str, path: str, *, json=None, timeout: float | None = None):
        t = self.timeout if timeout is None else timeout
        try:
            status, ctype, body = await asyncio.wait_for(self._exchange(method, path, json), t)
        except (OSError, asyncio.TimeoutError, ValueError) as e:
            raise ProxyError(
                f"proxy admin socket {self.socket_path}: {type(e).__name__}: {e}",
                detail={"socket": self.socket_path},
            ) from e
        is_json = ctype.startswith("application/json")
        if status >= 400:
            try:
                answer = jsonlib.loads(body)
            except ValueError:
                answer = {"message": body.decode("utf-8", "replace")}
            raise ProxyError(
                f"proxy refused {method} {path} ({status}): {answer.get('message', answer)}",
                detail={"status": status, "answer": answer},
            )
        return jsonlib.loads(body) if is_json else body.decode("utf-8", "replace")

    async def _exchange(self, method: str, path: str, json) -> tuple[int, str, bytes]:
        """One HTTP/1.1 request on a fresh Unix-socket connection (``Connection: close``).

        Hand-written rather than httpx: building an httpx client costs tens of
        milliseconds (an SSL context), and a traffic switch must not wait for that."""
        payload = b"" if json is None else jsonlib.dumps(json).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: proxy\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        with reachable(self.socket_path) as where:
            reader, writer = await asyncio.open_unix_connection(where)
        try:
            writer.write(head + payload)
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
        head_end = raw.find(b"\r\n\r\n")
        if head_end < 0:
            raise ValueError("incomplete answer from the proxy")
        lines = raw[:head_end].decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        body = raw[head_end + 4:]
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = _dechunk(body)
        elif "content-length" in headers:
            body = body[: int(headers["content-length"])]
        return status, headers.get("content-type", ""), body

    async def health(self) -> dict:
        return await self._call("GET", "/health")

    async def get_routes(self) -> RouteTable:
        return RouteTable.from_dict(await self._call("GET", "/routes"))

    async def put_routes(self, table: RouteTable | dict) -> int:
        """Apply a table; returns the revision it got. ProxyError with status 409 when stale."""
        data = table.to_dict() if isinstance(table, RouteTable) else table
        if isinstance(table, RouteTable) and table.revision == 0:
            data = {k: v for k, v in data.items() if k != "revision"}
        return (await self._call("PUT", "/routes", json=data))["revision"]

    async def drain(self, targets: list[str], timeout: float, upgraded_timeout: float | None = None) -> dict:
        """Wait until ``targets`` have nothing in flight; ``{"drained": bool, "in_flight": {addr: n}}``."""
        body = {"targets": list(targets), "timeout": timeout}
        if upgraded_timeout is not None:
            body["upgraded_timeout"] = upgraded_timeout
        wait = max(timeout, upgraded_timeout or 0) + self.timeout
        return await self._call("POST", "/drain", json=body, timeout=wait)

    async def stats(self) -> dict:
        return await self._call("GET", "/stats")

    async def get_tls(self) -> list[dict]:
        """The certificates serving now (names, validity, the last reload error)."""
        return (await self._call("GET", "/tls"))["certificates"]

    async def put_tls(self, certificates: list[dict]) -> dict:
        """Swap in new certificate files: ``[{"field", "cert", "key"}]`` (checked by the proxy first)."""
        return await self._call("PUT", "/tls", json={"certificates": certificates})

    async def metrics(self) -> str:
        return await self._call("GET", "/metrics")


def _dechunk(data: bytes) -> bytes:
    out, i = [], 0
    while True:
        j = data.index(b"\r\n", i)
        size = int(data[i:j].split(b";")[0], 16)
        if size == 0:
            return b"".join(out)
        out.append(data[j + 2 : j + 2 + size])
        i = j + 2 + size + 2
