"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import os
import time

from nonstop.testing.ports import free_ports

# Ports for the apps and proxies of whole-stack tests: below the kernel's ephemeral range
# (32768-60999), so no port-0 bind or outgoing connection elsewhere can take a port that a
# test's instance has just released, and one block per xdist worker, so parallel tests never
# collide. (A dead instance's port picked up by a neighbour test made a request "succeed" in
# connecting and then fail.)
# NONSTOP_TEST_PORTS=LO-HI moves the range (two checkouts testing side by side on one machine).
_LO, _HI = (int(x) for x in os.environ.get("NONSTOP_TEST_PORTS", "20000-32000").split("-"))
_BLOCK = (_HI - _LO) // 3
_BASE = _LO


def stack_ports(n: int) -> list[int]:
    """``n`` distinct ports that are free now, from this xdist worker's own block."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    lo = _BASE + (index % 3) * _BLOCK
    return free_ports(n, lo, lo + _BLOCK - 1)


def wait_for(pred, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def assert_events_carry_their_fields(events: list[dict]) -> None:
    """Every event of a type ``nonstop.protocol.EVENT_FIELDS`` knows carries those fields (clients read them)."""
    from nonstop.protocol import EVENT_FIELDS

    for ev in events:
        missing = [f for f in EVENT_FIELDS.get(ev["type"], ()) if f not in ev]
        assert not missing, f"event {ev['type']} lacks {missing}: {ev}"


def in_flight_at(records, t: float) -> list:
    return [r for r in records if r.start <= t and (r.end == 0 or r.end >= t)]


RACE = ("connection closed by server after the request was sent", "connection lost after the request was sent")


def assert_only_the_dead_process_lost(result, t_kill: float, keepalive_conns: int) -> None:
    """Every failure was in flight in the killed process at that instant, or is the one race a client of
    a dead process cannot avoid: a request written on its kept-alive connection to it before the
    connection's close reached the client (at most one per such connection, within 50 ms; browsers and
    HTTP libraries send those again, as for an nginx reload)."""
    at_kill = {id(r) for r in in_flight_at(result.records, t_kill)}
    raced = [r for r in result.failures if id(r) not in at_kill]
    for r in raced:
        assert r.kind in ("keepalive", "post") and r.start <= t_kill + 0.05 and (r.error or "").startswith(RACE), result.format()
    assert len(raced) <= keepalive_conns, result.format()


def alive(pid: int) -> bool:
    """The process runs (not gone, not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
