"""Webhooks (``notify:``): a deployment's start, steps and outcome, and ACME's results, POSTed as JSON, never in its way.

``notification(ev, app, dep)`` is the pure mapping from an agent event to
a webhook body (or ``None`` for events no webhook hears about):

=====================================  ===========
agent event                            webhook ``event``
=====================================  ===========
``start``                              ``start``
``step``, ``switched``, ``weight``     ``step``
``result`` ok                          ``success`` (``rollback`` for a ``nonstop rollback``)
``result`` not ok, rolled back/aborted ``rollback``
``result`` not ok, otherwise           ``failure``
``tls_certificate``, ``tls_error``     ``certificate`` (ACME: issued or renewed, or refused)
=====================================  ===========

``Notifier`` attaches to the ``EventBus`` (``listen``). The listener only
builds the body and puts it on each hook's bounded queue (``put_nowait``;
a full queue drops the notification and logs it): a deployment never waits
for a webhook. One worker task per hook POSTs in order, each request
bounded by the hook's ``timeout``; a failure is logged and counted, never
retried in a loop and never raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from nonstop import __version__
from nonstop.config import NotifyConfig

__all__ = ["Notifier", "notification", "webhook_kind", "KINDS"]

log = logging.getLogger("nonstop.notify")

KINDS = ("start", "step", "success", "failure", "rollback", "certificate")
_STEP_TYPES = frozenset({"step", "switched", "weight"})
_ROLLED_BACK = frozenset({"rolled_back", "aborted"})
# Event data passed through to the body when present.
_PASS = ("phase", "step", "weight", "reason", "seconds", "state", "ok", "instant", "detail",
         "domains", "stage", "problems", "not_after", "retry_at", "serial")
_CERTIFICATE_TYPES = frozenset({"tls_certificate", "tls_error"})
# The agent events some webhook kind maps (the listener's cheap first filter; webhook_kind decides).
_NOTIFIED_TYPES = frozenset({"start", "result"}) | _STEP_TYPES | _CERTIFICATE_TYPES


def webhook_kind(type: str, data: dict, strategy: str | None) -> str | None:
    """Which webhook event an agent event is, if any."""
    if type == "start":
        return "start"
    if type in _STEP_TYPES:
        return "step"
    if type in _CERTIFICATE_TYPES:
        return "certificate"  # issued or renewed, or a CA that refused (its own words in "problems")
    if type == "result":
        if data.get("ok"):
            return "rollback" if strategy == "rollback" else "success"
        return "rollback" if data.get("state") in _ROLLED_BACK else "failure"
    return None


def notification(ev, app: str, dep) -> dict | None:
    """The JSON body for event ``ev`` (a ``store.Event``) of deployment ``dep`` (a ``store.Deployment`` or None)."""
    data = dict(ev.data or {})
    strategy = data.get("strategy") or (dep.strategy if dep else None)
    kind = webhook_kind(ev.type, data, strategy)
    if kind is None:
        return None
    body: dict[str, Any] = {
        "event": kind,
        "app": app,
        "deployment": ev.deployment_id,
        "release": data.get("release") or (dep.release if dep else None),
        "from_release": dep.from_release if dep else None,
        "strategy": strategy,
        "message": ev.message,
        "ts": ev.ts,
        "type": ev.type,
    }
    for k in _PASS:
        if k in data and k not in body:
            body[k] = data[k]
    return body


class _Hook:
    def __init__(self, cfg: NotifyConfig, maxsize: int) -> None:
        self.cfg = cfg
        self.queue: asyncio.Queue[dict] = asyncio.Queue(maxsize=maxsize)
        self.task: asyncio.Task | None = None

    def wants(self, kind: str) -> bool:
        return self.cfg.events is None or kind in self.cfg.events


class Notifier:
    """Owns the webhook queues and their delivery tasks. Counters: ``sent``, ``failed``, ``dropped``."""

    def __init__(
        self,
        hooks: Sequence[NotifyConfig],
        app: str,
        deployment: Callable[[int], Any] | None = None,
        *,
        maxsize: int = 100,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.app = app
        self._deployment = deployment or (lambda _id: None)
        self._hooks = [_Hook(h, maxsize) for h in hooks]
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self.sent = 0
        self.failed = 0
        self.dropped = 0

    def __bool__(self) -> bool:
        return bool(self._hooks)

    # -- the EventBus listener: never blocks, never raises --------------------------
    def __call__(self, ev) -> None:
        if not self._hooks or ev.type not in _NOTIFIED_TYPES:
            return
        dep = self._deployment(ev.deployment_id) if ev.deployment_id is not None else None
        body = notification(ev, self.app, dep)
        if body is None:
            return
        for h in self._hooks:
            if not h.wants(body["event"]):
                continue
            try:
                h.queue.put_nowait(body)
            except asyncio.QueueFull:
                self.dropped += 1
                log.warning("webhook %s: queue full (%d), dropped %s of deployment %s", _safe(h.cfg.url), h.queue.maxsize, body["event"], body["deployment"])

    # -- delivery --------------------------------------------------------------------------
    def start(self) -> None:
        """Start one delivery task per hook (call from the agent's event loop)."""
        if not self._hooks or self._client is not None:
            return
        self._client = httpx.AsyncClient(transport=self._transport, follow_redirects=False, trust_env=False)
        loop = asyncio.get_running_loop()
        for h in self._hooks:
            h.task = loop.create_task(self._deliver(h), name=f"webhook {_safe(h.cfg.url)}")

    async def _deliver(self, h: _Hook) -> None:
        assert self._client is not None
        headers = {"User-Agent": f"nonstop/{__version__}", **h.cfg.headers}
        while True:
            body = await h.queue.get()
            try:
                r = await self._client.post(h.cfg.url, json=body, headers=headers, timeout=h.cfg.timeout)
                if r.status_code >= 300:
                    self.failed += 1
                    log.warning("webhook %s: %s answered %d", _safe(h.cfg.url), body["event"], r.status_code)
                else:
                    self.sent += 1
            except Exception as e:  # httpx errors, timeouts, bad URLs: logged, never raised
                self.failed += 1
                log.warning("webhook %s: %s not delivered: %s", _safe(h.cfg.url), body["event"], _why(e))
            finally:
                h.queue.task_done()

    async def close(self, timeout: float = 2.0) -> None:
        """Give queued notifications up to ``timeout`` seconds in all, then stop."""
        if self._client is None:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(h.queue.join() for h in self._hooks)), timeout)
        for h in self._hooks:
            if h.task:
                h.task.cancel()
        for h in self._hooks:
            if h.task:
                with contextlib.suppress(BaseException):
                    await h.task
        left = sum(h.queue.qsize() for h in self._hooks)
        if left:
            self.dropped += left
            log.warning("webhooks: %d notification(s) not sent at shutdown", left)
        await self._client.aclose()
        self._client = None


def _safe(url: str) -> str:
    """The URL without credentials or query (tokens live there), for logs."""
    u = httpx.URL(url)
    return f"{u.scheme}://{u.host}{':' + str(u.port) if u.port else ''}{u.path}"


def _why(e: Exception) -> str:
    if isinstance(e, httpx.TimeoutException):
        return f"timed out ({type(e).__name__})"
    return str(e) or type(e).__name__
