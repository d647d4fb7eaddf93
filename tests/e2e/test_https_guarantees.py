"""The zero-downtime guarantees over TLS (issue 15): what the plain-HTTP tests prove, on the embedded
proxy's ``tls.listen``, under HTTPS load (keep-alive and new connections, each new one a full handshake,
and POSTs with bodies), every request from one address and no client keeping cookies (the production
shape behind a load balancer).

- hand-over: the proxy replaced by a socket hand-over while HTTPS traffic flows, by both paths that start
  one: the agent's (``EmbeddedRouter.upgrade``, what an agent runs when it finds a proxy of another
  nonstop version after ``nonstop up`` of an upgraded package; called here on the stack's own config and
  state dir, since no older release has a ``tls:`` block to upgrade from) and the proxy's own SIGHUP
  (it starts the same command with ``--takeover``). Zero failed requests; the new proxy accepts on the
  very same TLS listening socket (same inode, no second socket bound) and serves handshakes after the old
  one has exited; the agent keeps the new proxy (starts none of its own);
- kill -9 of the proxy: no connection refused on the TLS port while the agent starts a new proxy; the
  failures are bounded by what was in flight in the dead proxy (``test_faults.assert_only_the_dead_process_lost``);
- hold: a ``recreate`` deploy over HTTPS: requests are held while no instance runs (the gap is real,
  over 0.3 s), none fails;
- canary split: at weight 20% the canary receives 15–25% of the HTTPS requests of one address without
  cookies, and the rollout finishes with zero failed requests.

The plain-HTTP proofs of the same guarantees: docs/guarantees.md.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from tests.e2e._canary_helpers import warm
from tests.e2e._https_helpers import https_load, https_stack
from tests.e2e.artifacts import good_and_faulty, make_artifact
from tests.e2e.helpers import wait_for
from tests.e2e.test_canary_split import event_window
from tests.e2e.helpers import alive as _alive
from tests.e2e.helpers import assert_only_the_dead_process_lost, in_flight_at

# keep-alive and new connections (a TLS handshake each), POSTs, one-second requests; one address, no cookies
LOAD = dict(rate=80, keepalive=3, new=2, post=2, slow=1, slow_ms=1000, timeout=20)


def listening_inodes(port: int) -> set[int]:
    """Inodes of the sockets listening on ``port`` (all processes: a socket shared by fd passing is one)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                found.add(int(f[9]))
    return found


def holds_socket(pid: int, inode: int) -> bool:
    d = f"/proc/{pid}/fd"
    for fd in os.listdir(d):
        try:
            if os.readlink(f"{d}/{fd}") == f"socket:[{inode}]":
                return True
        except OSError:
            pass
    return False


def hand_over(st, old: int, how: str) -> None:
    if how == "sighup":
        os.kill(old, signal.SIGHUP)
        return
    from nonstop.agent.routers.embedded import EmbeddedRouter
    from nonstop.config import load

    asyncio.run(EmbeddedRouter(load(st.cfg_path), st.state).upgrade())


@pytest.mark.parametrize("how", ["agent-upgrade", "sighup"])
def test_the_proxy_handed_over_under_https_load_fails_no_request(stack_factory, tmp_path, ca, how):
    good = make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.3")
    st, _, _ = https_stack(stack_factory, tmp_path, ca)
    st.deploy("v1", "--artifact", str(good))
    (sock,) = listening_inodes(st.tls_port)
    old = st.pid("proxy")
    assert holds_socket(old, sock)
    with https_load(st, **LOAD) as load:
        warm(load, 100, stack=st)
        hand_over(st, old, how)
        new = wait_for(lambda: (p := st.pid("proxy")) not in (None, old) and p, timeout=20, interval=0.02,
                       what="the successor proxy")
        wait_for(lambda: not _alive(old), timeout=30, interval=0.02, what="the old proxy to drain and exit")
        t_gone = time.monotonic()
        warm(load, 150, stack=st)
    result = load.result
    after = [r for r in result.records if r.ok and r.start > t_gone]
    shakes = [t for t, _ in load.handshakes if t > t_gone]
    print(f"\nhand-over ({how}) over HTTPS: {result.total} requests, {result.failed} failed; after the old proxy exited: "
          f"{len(after)} served, {len(shakes)} handshakes")
    assert result.failed == 0, result.format()
    # the new proxy accepts from the very socket the old one listened on: no second socket was bound
    assert listening_inodes(st.tls_port) == {sock}
    assert holds_socket(new, sock)
    assert shakes and {r.kind for r in after} >= {"keepalive", "new", "post"}
    # the agent took the successor as its proxy: it started none of its own
    assert st.pid("proxy") == new and _alive(new)
    assert st.status()["live_release"] == "v1"


def test_kill_9_of_the_proxy_refuses_no_https_connection(stack_factory, tmp_path, ca):
    good = make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.3")
    st, _, _ = https_stack(stack_factory, tmp_path, ca)
    st.deploy("v1", "--artifact", str(good))
    with https_load(st, **LOAD) as load:
        warm(load, 100, stack=st)
        old = st.pid("proxy")
        t_kill = time.monotonic()
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: st.pid("proxy") not in (None, old) and _alive(st.pid("proxy")), timeout=30, interval=0.05,
                 what="a new proxy")
        warm(load, 150, stack=st)
    result = load.result
    at_kill = in_flight_at(result.records, t_kill)
    refused = [r for r in result.failures if "refused" in (r.error or "").lower()]
    shakes = [t for t, _ in load.handshakes if t > t_kill]
    print(f"\nkill -9 of the proxy over HTTPS: {result.failed} failed of {result.total}; {len(at_kill)} were in "
          f"flight in it; refused {len(refused)}; {len(shakes)} handshakes after the kill; failed: "
          f"{[(r.kind, round((r.start - t_kill) * 1000, 1), r.error) for r in result.failures]}")
    assert refused == [], result.format()
    assert_only_the_dead_process_lost(result, t_kill, LOAD["keepalive"] + LOAD["post"])
    assert shakes, "no TLS handshake with the new proxy"
    assert st.status()["live_release"] == "v1"


def test_recreate_over_https_holds_requests_instead_of_failing(stack_factory, tmp_path, ca):
    good = make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.5")
    st, _, _ = https_stack(stack_factory, tmp_path, ca, strategy={"type": "recreate"})
    st.deploy("v1", "--artifact", str(good))
    with https_load(st, **LOAD) as load:
        warm(load, 60, stack=st)
        st.deploy("v2", "--artifact", str(good))
        warm(load, 60, stack=st)
    result = load.result
    gap = result.longest_gap().seconds
    print(f"\nrecreate over HTTPS: {result.total} requests, {result.failed} failed; longest wait {gap:.2f} s")
    assert result.failed == 0, result.format()
    assert set(result.by_version()) == {"v1", "v2"}
    assert gap > 0.3  # nothing was running for a while: users only waited


def test_canary_split_over_https_from_one_address_without_cookies(stack_factory, tmp_path, ca):
    arts = good_and_faulty(tmp_path / "artifacts")
    st, _, _ = https_stack(
        stack_factory, tmp_path, ca, health={"startup_timeout": "15s"},
        strategy={"type": "canary", "steps": [{"weight": 20, "pause": "8s"}, {"weight": 50, "pause": "1s"}],
                  "analysis": {"interval": "1s", "min_requests": 20, "max_error_rate": 0.01, "progress_deadline": "60s"}},
    )
    st.deploy("v1", "--artifact", str(arts["good"]), "--strategy", "blue-green")
    offset = time.time() - time.monotonic()
    with https_load(st, rate=80, keepalive=4, new=2, post=1, slow=0, timeout=15) as load:
        warm(load, 60, stack=st)
        res = st.deploy("v2", "--artifact", str(arts["good"]))
        warm(load, 40, stack=st)
    result = load.result
    assert res["state"] == "promoted", res
    assert result.failed == 0, result.format()
    t0, t1 = event_window(res, 20, offset)
    during = [r for r in result.records if t0 + 0.3 < r.start < t1 - 0.1 and r.ok]
    share = sum(1 for r in during if r.version == "v2") / len(during)
    print(f"\ncanary over HTTPS, one address, no cookies: {share:.1%} of {len(during)} requests at weight 20%; "
          f"{result.failed} failed of {result.total}")
    # each request of a client without cookies gets a random bucket: ~560 requests keep 15–25% over 3 sigma wide
    assert len(during) >= 300, len(during)
    assert 0.15 <= share <= 0.25, share
    assert not [e for e in res["events"] if e["type"] == "split_skew"]
