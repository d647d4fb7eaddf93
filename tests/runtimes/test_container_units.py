"""The container runtime's pure parts: event parsing and ordering, log stamps, /proc/net/tcp, names.

The event and log lines are ones the real engines printed on this machine (docker 20.10, podman 4.3).
"""

from __future__ import annotations

from nonstop.agent.runtimes.container import container_name
from nonstop.agent.runtimes.inside import Listener, describe_listening, parse_proc_net_tcp
from nonstop.agent.runtimes.logfollow import split_stamp
from nonstop.agent.runtimes.states import (
    ContainerState,
    ContainerStates,
    exit_status,
    format_time_ns,
    parse_event,
    parse_time_ns,
)

DOCKER_DIE = {
    "status": "die",
    "id": "3774309fb3ef",
    "from": "sig:1",
    "Type": "container",
    "Action": "die",
    "Actor": {"ID": "3774309fb3ef", "Attributes": {"exitCode": "3", "image": "sig:1", "name": "t1"}},
    "scope": "local",
    "time": 1796118865,
    "timeNano": 1796118865742589485,
}
DOCKER_KILL = {**DOCKER_DIE, "status": "kill", "Action": "kill"}
PODMAN_DIED = {
    "ContainerExitCode": 137,
    "ID": "0a4c18b22a61",
    "Image": "localhost/sig:1",
    "Name": "t2",
    "Status": "died",
    "Time": "2026-12-01T09:56:51.185368958Z",
    "Type": "container",
}
PODMAN_DIED_0 = {k: v for k, v in PODMAN_DIED.items() if k != "ContainerExitCode"}  # omitempty
PODMAN_START = {**PODMAN_DIED_0, "Status": "start", "Time": "2026-12-01T09:56:51.113984463Z"}


def test_events_of_both_engines():
    ev = parse_event(DOCKER_DIE)
    assert (ev.id, ev.action, ev.exit_code, ev.time_ns) == ("3774309fb3ef", "die", 3, 1796118865742589485)
    assert parse_event(DOCKER_KILL) is None  # a kill changes nothing until the die
    ev = parse_event(PODMAN_DIED)
    assert (ev.action, ev.exit_code, ev.time_ns) == ("die", 137, parse_time_ns("2026-12-01T09:56:51.185368958Z"))
    assert parse_event(PODMAN_DIED_0).exit_code == 0
    assert parse_event(PODMAN_START).action == "start"
    assert parse_event({**PODMAN_START, "Status": "remove"}).action == "destroy"
    assert parse_event({**PODMAN_START, "Type": "image"}) is None


def test_an_event_older_than_an_observation_is_ignored():
    """The stream starts with --since in the past: a replayed start must not revive a dead container."""
    s = ContainerStates()
    t = 1_000_000_000_000
    s.observe("c", ContainerState(False, 0, as_of_ns=t))
    start = parse_event({**PODMAN_START, "ID": "c", "Time": format_time_ns(t - 5)})
    assert not s.apply(start) and not s.get("c").running
    assert s.apply(parse_event({**PODMAN_START, "ID": "c", "Time": format_time_ns(t + 5)}))
    assert s.get("c").running
    s.apply(parse_event({**PODMAN_DIED, "ID": "c", "Time": format_time_ns(t + 9)}))
    s.apply(parse_event({**PODMAN_START, "Status": "remove", "ID": "c", "Time": format_time_ns(t + 10)}))
    st = s.get("c")
    assert (st.running, st.exit_code, st.removed) == (False, 137, True)  # how it ended outlives the removal
    # run returned after the die event arrived: the event wins
    s.apply(parse_event({**PODMAN_DIED, "ID": "d", "Time": format_time_ns(t)}))
    s.started("d", t - 100)
    assert not s.get("d").running


def test_times_and_exit_status():
    ns = parse_time_ns("2026-12-01T09:55:45.657373100Z")
    assert format_time_ns(ns) == "2026-12-01T09:55:45.657373100Z"
    assert parse_time_ns("2026-12-01T10:55:45.5+01:00") == parse_time_ns("2026-12-01T09:55:45.500000000Z")
    assert parse_time_ns("yesterday") is None
    assert [exit_status(c) for c in (0, 3, 137, 143, 255, None)] == [0, 3, -9, -15, 255, None]


def test_log_stamps():
    assert split_stamp(b"2026-12-01T09:55:45.657373100Z line0\n") == (parse_time_ns("2026-12-01T09:55:45.657373100Z"), b"line0\n")
    assert split_stamp(b"no stamp here\n") == (None, b"no stamp here\n")
    # podman: an app's line written in pieces carries each piece's stamp
    ns, text = split_stamp(
        b"2026-12-01T10:02:09.186422788Z Started App in 2026-12-01T10:02:09.286422788Z 0.271 seconds\n", True
    )
    assert text == b"Started App in 0.271 seconds\n" and ns == parse_time_ns("2026-12-01T10:02:09.286422788Z")


TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:2382 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0100007F:1F90 0100007F:D0A2 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 20 4 30 10 -1
"""
TCP6 = """  sl  local_address                         remote_address                        st tx_queue rx_queue
   0: 00000000000000000000000000000000:2382 00000000000000000000000000000000:0000 0A 00000000:00000000
   1: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000
"""


def test_proc_net_tcp_and_the_diagnosis():
    assert parse_proc_net_tcp(TCP) == {Listener("0.0.0.0", 8080), Listener("127.0.0.1", 9090)}
    assert parse_proc_net_tcp(TCP6) == {Listener("::", 9090), Listener("::1", 80)}
    assert describe_listening(8080, parse_proc_net_tcp(TCP)) is None
    msg = describe_listening(8081, parse_proc_net_tcp(TCP))
    assert msg.startswith("nothing listens on container_port 8081 inside the container; it listens on 8080, 9090")
    assert "only on 127.0.0.1" in describe_listening(9090, {Listener("127.0.0.1", 9090)})
    assert "nothing listens at all" in describe_listening(8080, set())
    assert describe_listening(8080, None) is None


def test_container_names_are_engine_safe_and_per_state_dir():
    assert container_name("room escape", "v1+build/2", 8081, "ab12cd34") == "nonstop-room-escape-v1-build-2-8081-ab12cd34"
    assert container_name("a", "r", 1, "k1") != container_name("a", "r", 1, "k2")


def test_a_pid_is_watched_only_when_its_process_started_with_the_container():
    import os

    import psutil

    from nonstop.agent.runtimes.pidwatch import same_process

    started = int(psutil.Process().create_time() * 1e9)
    assert same_process(os.getpid(), started)
    assert not same_process(os.getpid(), started - int(60e9))  # a recycled pid: another start time
    assert not same_process(os.getpid(), None)
    assert not same_process(0, started)
