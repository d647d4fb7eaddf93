"""Lifecycles as transition tables: deployments and instances.

Every state change of a deployment (``Store.update_deployment``) and of an
instance (``Store.update_instance``) goes through ``check_transition``; an
illegal one raises ``LifecycleError`` and changes nothing. The tables are the
one place that says which moves exist.
"""

from __future__ import annotations

from nonstop.errors import NonstopError

__all__ = [
    "LifecycleError",
    "DEPLOYMENT_STATES",
    "DEPLOYMENT_ACTIVE",
    "DEPLOYMENT_FINISHED",
    "DEPLOYMENT_TRANSITIONS",
    "INSTANCE_STATES",
    "INSTANCE_TRANSITIONS",
    "TABLES",
    "check_transition",
    "is_finished",
]


class LifecycleError(NonstopError):
    """A state change that the lifecycle's transition table does not allow."""


# -- deployments -----------------------------------------------------------
# pending → progressing ⇄ paused → promoted (success) | aborted | rolled_back | failed
DEPLOYMENT_TRANSITIONS: dict[str, frozenset[str]] = {
    "pending": frozenset({"progressing", "aborted", "rolled_back", "failed"}),
    "progressing": frozenset({"paused", "promoted", "aborted", "rolled_back", "failed"}),
    "paused": frozenset({"progressing", "promoted", "aborted", "rolled_back", "failed"}),
    "promoted": frozenset(),
    "aborted": frozenset(),
    "rolled_back": frozenset(),
    "failed": frozenset(),
}
DEPLOYMENT_STATES = frozenset(DEPLOYMENT_TRANSITIONS)
DEPLOYMENT_FINISHED = frozenset({"promoted", "aborted", "rolled_back", "failed"})
DEPLOYMENT_ACTIVE = DEPLOYMENT_STATES - DEPLOYMENT_FINISHED

# -- instances -------------------------------------------------------------
# starting → healthy ⇄ unhealthy → draining → stopped; starting → failed;
# any → stopped (crash, exit, stop). A stopped or failed instance may be
# started again under the same id (a restart with backoff: restarts += 1).
INSTANCE_TRANSITIONS: dict[str, frozenset[str]] = {
    "starting": frozenset({"healthy", "failed", "draining", "stopped"}),
    "healthy": frozenset({"unhealthy", "draining", "stopped"}),
    "unhealthy": frozenset({"healthy", "draining", "stopped"}),
    "draining": frozenset({"stopped"}),
    "failed": frozenset({"stopped", "starting"}),
    "stopped": frozenset({"starting"}),
}
INSTANCE_STATES = frozenset(INSTANCE_TRANSITIONS)

TABLES: dict[str, dict[str, frozenset[str]]] = {
    "deployment": DEPLOYMENT_TRANSITIONS,
    "instance": INSTANCE_TRANSITIONS,
}


def is_finished(state: str) -> bool:
    """True for a deployment state that ends the deployment."""
    return state in DEPLOYMENT_FINISHED


def check_transition(kind: str, old: str, new: str) -> None:
    """Raise ``LifecycleError`` unless ``old → new`` is allowed for ``kind``
    (``"deployment"`` or ``"instance"``). Staying in the same state is allowed."""
    table = TABLES.get(kind)
    if table is None:
        raise ValueError(f"unknown lifecycle {kind!r}; expected one of {sorted(TABLES)}")
    if new not in table:
        raise LifecycleError(
            f"unknown {kind} state {new!r}; expected one of {', '.join(sorted(table))}",
            detail={"kind": kind, "from": old, "to": new},
        )
    if old not in table:
        raise LifecycleError(
            f"unknown {kind} state {old!r}; expected one of {', '.join(sorted(table))}",
            detail={"kind": kind, "from": old, "to": new},
        )
    if old == new:
        return
    if new not in table[old]:
        allowed = ", ".join(sorted(table[old])) or "nothing (it is final)"
        raise LifecycleError(
            f"{kind} cannot go from {old} to {new}; from {old} it can go to {allowed}",
            detail={"kind": kind, "from": old, "to": new},
        )
