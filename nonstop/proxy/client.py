"""AdminClient: the Python client of the proxy's admin API (used by the agent's embedded router and by tests).

Every failure (socket missing, refused, timeout, 4xx/5xx answer) becomes a
``nonstop.errors.ProxyError`` carrying the status and the proxy's message.
"""

from __future__ import annotations

import httpx

from nonstop.errors import ProxyError
from nonstop.proxy.routes import RouteTable


class AdminClient:
    """Talks to one proxy's admin socket; one short-lived HTTP connection per call."""

    def __init__(self, socket_path: str, timeout: float = 10.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout

    async def _call(self, method: str, path: str, *, json=None, timeout: float | None = None):
        t = self.timeout if timeout is None else timeout
        transport = httpx.AsyncHTTPTransport(uds=self.socket_path)
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://proxy", timeout=t) as c:
                r = await c.request(method, path, json=json)
        except httpx.HTTPError as e:
            raise ProxyError(
                f"proxy admin socket {self.socket_path}: {type(e).__name__}: {e}",
                detail={"socket": self.socket_path},
            ) from e
        if r.status_code >= 400:
            try:
                body = r.json()
            except ValueError:
                body = {"message": r.text}
            raise ProxyError(
                f"proxy refused {method} {path} ({r.status_code}): {body.get('message', body)}",
                detail={"status": r.status_code, "answer": body},
            )
        if r.headers.get("content-type", "").startswith("application/json"):
            return r.json()
        return r.text

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

    async def metrics(self) -> str:
        return await self._call("GET", "/metrics")
