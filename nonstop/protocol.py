"""The control API's contract: the typed requests the CLI (and the dashboard) send, and the JSON of events and errors.

One module both sides import (it imports nothing heavy: the CLI's quick path
reads it). A request is a frozen dataclass with ``to_json`` / ``from_json``;
``from_json`` refuses a wrong type with a ``UsageError`` naming the field.
Events are stored rows (``store.Event``) sent as ``event_json``: their meaning
is in their fields — ``EVENT_FIELDS`` lists what each type carries — never in
prose a client has to parse. Errors are ``error_json``: the root error's
fields plus the exit code the CLI should use.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from nonstop.errors import NonstopError, UsageError
from nonstop.names import STEER_ACTIONS, STRATEGIES

__all__ = [
    "DeployRequest", "RollbackRequest", "SteerRequest", "EVENT_FIELDS", "event_json", "error_json", "HTTP_STATUS",
]

HTTP_STATUS = {1: 500, 2: 400, 3: 503, 4: 409}
"""The HTTP status of an error, by its exit code."""


def _opt_str(d: Mapping[str, Any], key: str) -> str | None:
    v = d.get(key)
    if v is not None and not isinstance(v, str):
        raise UsageError(f"{key}: expected a string or null, got {type(v).__name__}", detail={"field": key})
    return v


def _bool(d: Mapping[str, Any], key: str, default: bool) -> bool:
    v = d.get(key, default)
    if not isinstance(v, bool):
        raise UsageError(f"{key}: expected true or false", detail={"field": key})
    return v


def _object(d: object) -> Mapping[str, Any]:
    if not isinstance(d, Mapping):
        raise UsageError("request body must be a JSON object")
    return d


@dataclass(frozen=True)
class DeployRequest:
    """``nonstop deploy``: build (if configured), store and roll out a release."""

    version: str | None = None
    artifact: str | None = None  # an absolute path on the agent's machine
    strategy: str | None = None
    image: str | None = None  # containers, Kubernetes: a prebuilt image instead of run.image
    follow: bool = True  # stream the deployment's events, or answer with its id at once

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: object) -> "DeployRequest":
        d = _object(d)
        strategy = _opt_str(d, "strategy")
        if strategy is not None and strategy not in STRATEGIES:
            raise UsageError(f"--strategy: unknown strategy {strategy!r} ({', '.join(STRATEGIES)})", detail={"field": "--strategy"})
        return cls(_opt_str(d, "version"), _opt_str(d, "artifact"), strategy, _opt_str(d, "image"), _bool(d, "follow", True))


@dataclass(frozen=True)
class RollbackRequest:
    """``nonstop rollback [--to RELEASE]`` (the dashboard's Roll back button too)."""

    to: str | None = None
    follow: bool = True

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: object) -> "RollbackRequest":
        d = _object(d)
        return cls(_opt_str(d, "to") or None, _bool(d, "follow", True))


@dataclass(frozen=True)
class SteerRequest:
    """``nonstop promote [--full] / abort / pause / resume`` (the dashboard's buttons too)."""

    action: str

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: object) -> "SteerRequest":
        d = _object(d)
        action = d.get("action")
        if action not in STEER_ACTIONS:
            raise UsageError(f"unknown action {action!r}; expected one of {', '.join(STEER_ACTIONS)}", detail={"field": "action"})
        return cls(action)


# What each event type carries besides id, deployment, ts, type and message (clients read these, not the message).
EVENT_FIELDS: dict[str, tuple[str, ...]] = {
    "start": ("strategy", "from_release"),
    "release": ("release",),
    "step": ("phase", "step"),
    "instance_starting": ("instance", "port"),
    "instance_healthy": ("instance", "seconds"),
    "instance_stopped": ("instance",),
    "switched": ("release",),
    "weight": ("weight", "release"),
    "draining": ("instances",),
    "drained": ("drained",),
    "analysis": ("verdict", "summary"),
    "analysis_failed": ("verdict", "summary"),
    "split_skew": ("weight", "received"),
    "watch": ("release", "until", "baseline"),
    "watch_passed": ("release",),
    "control": ("action",),
    "waiting": ("waiting_for", "kind"),
    "hook": ("hook",),
    "hook_failed": ("hook",),
    "tls_certificate": ("domains", "not_after", "serial"),
    "tls_error": ("domains", "stage", "problems"),
    "result": ("ok", "state", "reason", "seconds", "release", "detail"),
}


def event_json(ev) -> dict:
    """A stored event (``store.Event``) as the API, the dashboard and webhooks send it."""
    return {"id": ev.id, "deployment": ev.deployment_id, "ts": ev.ts, "type": ev.type, "message": ev.message, **(ev.data or {})}


def error_json(e: NonstopError) -> tuple[dict, int]:
    """An error's JSON body (with the exit code the CLI uses) and its HTTP status."""
    return {**e.to_dict(), "exit_code": e.exit_code}, HTTP_STATUS.get(e.exit_code, 500)
