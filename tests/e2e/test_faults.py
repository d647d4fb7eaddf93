"""Faults a process suffers, under load (DESIGN §5): nothing is lost but what was in flight in the dead process.

- kill -9 of the only live instance: the requests it had not received are held (every target refusing
  is a wait, not a 502) until the fleet has restarted it; failures are bounded by what was in flight on
  it at that instant, counted from the load client's own records;
- kill -9 of the proxy: the agent holds the listening socket, so no connection is refused while it starts a
  new proxy; failures are bounded by what was in flight in the dead proxy.
"""

from __future__ import annotations

import os
import signal
import time

from nonstop.testing.load import LoadClient
from tests.e2e._canary_helpers import warm
from tests.e2e.artifacts import RUN_COMMAND, make_artifact
from tests.e2e.helpers import alive
from tests.e2e.helpers import assert_only_the_dead_process_lost, in_flight_at, wait_for

# keep-alive and new connections, POSTs, one-second requests; every request from one address, no cookies
LOAD = dict(rate=80, keepalive=3, new=2, post=2, slow=2, slow_ms=1000, timeout=20)


def _wait_dead(pid: int, timeout: float = 5.0) -> float:
    """The moment the process is a zombie or gone (its sockets are closed by then)."""
    deadline = time.monotonic() + timeout
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.0005)
    return time.monotonic()


def test_kill_9_of_the_only_live_instance_loses_only_what_was_in_flight_on_it(stack_factory, tmp_path):
    good = make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.3")
    st = stack_factory(run={"command": RUN_COMMAND}, hold_timeout="15s")
    st.deploy("v1", "--artifact", str(good))
    with LoadClient(st.url, **LOAD) as load:
        warm(load, 100, stack=st)
        (inst,) = [i for i in st.status()["instances"] if i["routed"]]
        t_kill = time.monotonic()
        os.kill(inst["pid"], signal.SIGKILL)
        t_dead = _wait_dead(inst["pid"])
        wait_for(lambda: any(i["restarts"] >= 1 and i["state"] == "healthy" for i in st.status()["instances"]),
                 timeout=30, interval=0.2, what="the instance restarted")
        warm(load, 100, stack=st)
    result = load.result
    # a killed process takes a few ms to die (its memory is freed before its sockets are closed): a request
    # written to it in that time went to it as surely as one written before the signal
    dying = [r for r in result.records if r.start <= t_dead and (r.end == 0 or r.end >= t_kill)]
    print(f"\nkill -9 of the instance: {result.failed} failed of {result.total}; {len(dying)} were in flight on "
          f"it while it died ({(t_dead - t_kill) * 1000:.1f} ms)")
    # only requests that were in flight while it died may fail; the rest were held and served
    assert result.failed <= len(dying), result.format()
    assert all(r.start <= t_dead + 0.05 for r in result.failures), result.format()
    assert not [r for r in result.failures if "502" in (r.error or "") and r.start > t_dead], result.format()
    served_after = [r for r in result.records if r.ok and r.start > t_kill]
    assert served_after, "nothing was served after the kill"


def test_kill_9_of_the_proxy_refuses_no_connection(stack_factory, tmp_path):
    good = make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.3")
    st = stack_factory(run={"command": RUN_COMMAND})
    st.deploy("v1", "--artifact", str(good))
    with LoadClient(st.url, **LOAD) as load:
        warm(load, 100, stack=st)
        old = st.pid("proxy")
        t_kill = time.monotonic()
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: st.pid("proxy") not in (None, old) and alive(st.pid("proxy")), timeout=30, interval=0.05,
                 what="a new proxy")
        warm(load, 150, stack=st)
    result = load.result
    at_kill = in_flight_at(result.records, t_kill)
    refused = [r for r in result.failures if "refused" in (r.error or "").lower()]
    print(f"\nkill -9 of the proxy: {result.failed} failed of {result.total}; {len(at_kill)} were in flight in it; "
          f"refused {len(refused)}")
    assert refused == [], result.format()
    assert_only_the_dead_process_lost(result, t_kill, LOAD["keepalive"] + LOAD["post"])
    events = st.cli("status", "--json", check=True).json
    assert events["live_release"] == "v1"
