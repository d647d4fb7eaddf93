"""Whole deployments through the real agent with nginx and HAProxy as the router (managed and external).

Reuses the e2e stack (tests/e2e/conftest.py): the real CLI, agent, app instances
and the project's load client (which reconnects when a keep-alive connection was
closed while idle, and never retries a request). HAProxy must lose nothing; nginx
may lose, per reload, at most one request per keep-alive worker of the load
(docs/routers.md, "The reload drop"), and only requests no byte of answer came for.
"""

from __future__ import annotations

import subprocess
import time

import psutil
import pytest
from routerstack import HAPROXY, NGINX, kinds, user_haproxy_conf, user_nginx_conf

from nonstop.agent.routers.base import RouteTable
from nonstop.agent.routers.nginx_conf import render_upstreams

from nonstop.testing.load import LoadClient
from tests.e2e.artifacts import RUN_COMMAND, make_artifact
from tests.e2e.conftest import stack_factory  # noqa: F401  (the fixture)

LOAD = dict(rate=80, keepalive=3, new=2, post=2, slow=2, slow_ms=1000, timeout=15)
KEEPALIVE_WORKERS = LOAD["keepalive"] + LOAD["post"]
RELOAD_RACE = ("connection closed by server after the request was sent",
               "connection lost after the request was sent: ConnectionResetError")  # post workers reuse their connection too


@pytest.fixture
def arts(tmp_path):
    return {"good": make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.5")}


@pytest.fixture
def router_stack(stack_factory):  # noqa: F811
    """stack_factory for a router kind. External kinds get "the user's" nginx / HAProxy first
    (configured as docs/routers.md says). Whatever nginx / HAProxy ran is stopped by PID at the end."""
    made = []
    user_procs: list[subprocess.Popen] = []

    def make(kind: str, **kw):
        # Not started by stack_factory: a failed `up` must still leave the stack in `made` for the cleanup.
        st = stack_factory(up=False, router={"type": "embedded"}, run={"command": RUN_COMMAND, **kw.pop("run", {})}, **kw)
        made.append(st)
        if not kind.endswith("external"):
            st.write_config(router=_router(kind))
            st.cli("up", "--detach", "--timeout", "60", check=True)
            return st
        user = st.dir / "user"
        user.mkdir()
        listen = f"127.0.0.1:{st.listen}"
        if kind == "nginx-external":
            include, access, err = user / "service-url.inc", user / "access.json.log", str(user / "error.log")
            include.write_text(render_upstreams("e2e", RouteTable()))
            conf = user_nginx_conf(user, listen, include, access, app="e2e")
            subprocess.run([NGINX, "-c", str(conf), "-e", err], check=True, timeout=30)
            router = {
                "type": "nginx", "mode": "external", "upstream_file": str(include),
                "test_command": [NGINX, "-t", "-q", "-c", str(conf), "-e", err],
                "reload_command": [NGINX, "-s", "reload", "-c", str(conf), "-e", err],
                "access_log": str(access), "worker_shutdown_timeout": "30s",
            }
        else:
            conf = user_haproxy_conf(user, listen, backend="e2e")
            user_procs.append(subprocess.Popen([HAPROXY, "-db", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            deadline = time.monotonic() + 10
            while not (user / "admin.sock").exists():
                assert time.monotonic() < deadline, "user haproxy did not start"
                time.sleep(0.05)
            router = {"type": "haproxy", "mode": "external", "socket": str(user / "admin.sock"), "backend": "e2e"}
        st.write_config(router=router)
        st.cli("up", "--detach", "--timeout", "60", check=True)
        return st

    try:
        yield make
    finally:
        # This runs before stack_factory's own teardown: stop the stacks the normal way first, so the
        # managed nginx / HAProxy stop gracefully (a SIGKILLed nginx master leaves its workers running).
        for st in made:
            try:
                st.cli("down", timeout=60)
            except subprocess.TimeoutExpired:
                pass
        for p in user_procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        for st in made:
            for pid_file in (st.state / "nginx" / "nginx.pid", st.state / "haproxy" / "haproxy.pid", st.dir / "user" / "nginx.pid"):
                _stop_tree(pid_file)


def _stop_tree(pid_file) -> None:
    """The nginx / HAProxy named by ``pid_file``, if still running: SIGTERM it, then SIGKILL it and its children."""
    try:
        p = psutil.Process(int(pid_file.read_text().split()[0]))
        if not any(n in " ".join(p.cmdline()) for n in ("nginx", "haproxy")):
            return
        children = p.children()
        p.terminate()  # nginx: fast shutdown, the master ends its workers
        try:
            p.wait(10)
        except psutil.TimeoutExpired:
            p.kill()
        for c in children:
            if c.is_running():
                c.kill()
    except (OSError, ValueError, psutil.Error):
        pass


def _router(kind: str) -> dict:
    if kind == "nginx-managed":
        return {"type": "nginx", "worker_shutdown_timeout": "15s"}
    return {"type": "haproxy"}


@pytest.mark.parametrize("kind", kinds())
def test_blue_green_under_load(kind, router_stack, arts):
    st = router_stack(kind)
    st.deploy("v1", "--artifact", str(arts["good"]))
    with LoadClient(st.url, **LOAD) as load:
        load.wait_served(100, timeout=30)
        res = st.deploy("v2", "--artifact", str(arts["good"]))
        assert res["ok"] and res["release"] == "v2"
        load.wait_served(load.served + 100, timeout=30)
    result = load.result
    versions = [r.version for r in sorted(result.records, key=lambda r: r.end) if r.ok and r.kind != "slow"]
    assert "v1" in versions and versions[-1] == "v2", result.format()
    print(f"\n{kind}: {result.total} requests, {result.failed} failed {result.failure_reasons()}")
    _allowed_router_losses(kind, result, switches=1, keepalive_conns=KEEPALIVE_WORKERS)
    s = st.status()
    assert s["live_release"] == "v2"
    assert [r["release"] for r in s["routes"]] == ["v2"]


@pytest.mark.parametrize("kind", kinds())
def test_rollback_under_load(kind, router_stack, arts):
    st = router_stack(kind)
    st.deploy("v1", "--artifact", str(arts["good"]))
    st.deploy("v2", "--artifact", str(arts["good"]))
    with LoadClient(st.url, **LOAD) as load:
        load.wait_served(100, timeout=30)
        r = st.cli("rollback", "--json", timeout=120)
        assert r.code == 0, r.out + r.err
        load.wait_served(load.served + 100, timeout=30)
    result = load.result
    print(f"\n{kind}: {result.total} requests, {result.failed} failed {result.failure_reasons()}")
    _allowed_router_losses(kind, result, switches=1, keepalive_conns=KEEPALIVE_WORKERS)
    assert st.status()["live_release"] == "v1"


@pytest.mark.parametrize("kind", kinds("nginx-managed", "haproxy-managed"))
def test_canary_with_sticky_users_and_header_match(kind, router_stack, tmp_path):
    """10% → 50% → 100% with analysis; users move v1 → v2 at most once, never back; X-Canary reaches v2 at once."""
    from tests.e2e._canary_helpers import StickyUsers, warm

    good = make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.3")
    st = router_stack(
        kind,
        strategy={
            "type": "canary",
            "steps": [{"weight": 10, "pause": "2s"}, {"weight": 50, "pause": "2s"}],
            "sticky": True,
            "match": {"header": {"X-Canary": "1"}},
            "analysis": {"interval": "1s", "min_requests": 10, "max_error_rate": 0.05, "failure_limit": 2},
        },
        health={"startup_timeout": "15s"},
    )
    st.deploy("v1", "--artifact", str(good), "--strategy", "blue-green")
    load_cfg = dict(rate=40, keepalive=3, new=2, post=0, slow=0, timeout=15)
    with LoadClient(st.url, **load_cfg) as load, StickyUsers("127.0.0.1", st.listen, users=20, rate=40) as users, \
         StickyUsers("127.0.0.1", st.listen, users=3, rate=10, headers={"X-Canary": "1"}) as matched:
        warm(load, 30, stack=st)
        res = st.deploy("v2", "--artifact", str(good))
        warm(load, 30, stack=st)
    assert res["ok"] and res["state"] == "promoted", res
    result = load.result
    print(f"\n{kind}: {result.total} load + {len(users.seen)} user requests, "
          f"{result.failed} + {len(users.failures)} failed {result.failure_reasons()}")
    flips = users.flips()
    for user, seq in flips.items():
        assert seq in (["v1"], ["v2"], ["v1", "v2"]), (user, users.buckets[user], seq)
    assert all(seq[-1] == "v2" for seq in flips.values()), flips
    # the header users saw v2 as soon as it was routed, while the others mostly still saw v1
    assert any(s.version == "v2" for s in matched.seen)
    if kind.startswith("haproxy"):
        assert result.failed == 0 and users.failures == [], result.format()
    else:
        # three reloads (10%, 50%, 100%), at most one loss per kept-alive connection each
        assert result.failed + len(users.failures) <= 3 * (load_cfg["keepalive"] + 20 + 3), result.format()


@pytest.mark.parametrize("kind", kinds("nginx-managed", "haproxy-managed"))
def test_rolling_watch_rolls_back_a_faulty_second_batch(kind, router_stack, tmp_path):
    """Rolling with analysis on nginx and HAProxy: the first batch passes its watch, the second (faulty)
    fails it from the router's own stats, and what was replaced goes back to v1."""
    from tests.e2e._canary_helpers import nth_start_fails_artifact, warm

    n, rate = 2, 60.0
    good = make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.3")
    bad = nth_start_fails_artifact(tmp_path / "artifacts", "second-faulty", (2,), "--boot-seconds", "0.3",
                                   when_failing=("--fail-rate", "0.5"))
    st = router_stack(
        kind, n_ports=n + 1, run={"instances": n},
        strategy={"type": "rolling", "max_surge": 1, "max_unavailable": 0,
                  "analysis": {"watch": "6s", "interval": "1s", "min_requests": 15, "max_error_rate": 0.05,
                               "failure_limit": 2}},
        health={"startup_timeout": "15s"},
    )
    st.deploy("v1", "--artifact", str(good))
    load_cfg = dict(rate=rate, keepalive=3, new=2, post=0, slow=0, timeout=15)
    with LoadClient(st.url, **load_cfg) as load:
        warm(load, 60, stack=st)
        res = st.deploy("v2", "--artifact", str(bad), expect=1)
        warm(load, 60, stack=st)
    assert res["state"] == "rolled_back" and "5xx" in res["reason"], (res["state"], res["reason"])
    passed = [e for e in res["events"] if e["type"] == "watch_passed"]
    assert len(passed) == 1 and "batch 1" in passed[0]["message"], [e["message"] for e in res["events"]]
    result = load.result
    app_500s = [r for r in result.failures if r.status == 500]
    assert app_500s and all(r.version == "v2" for r in app_500s), result.format()
    # nginx: a reload per batch and per step back
    _allowed_router_losses(kind, _without(result, app_500s), switches=6, keepalive_conns=load_cfg["keepalive"])
    s = st.status()
    assert s["live_release"] == "v1" and sum(1 for i in s["instances"] if i["release"] == "v1") == n


def _allowed_router_losses(kind: str, result, switches: int, keepalive_conns: int) -> None:
    """HAProxy: nothing lost. nginx: per reload at most one request per kept-alive connection,
    and only of the kind a reload causes (closed before any answer byte; the app never saw it)."""
    if kind.startswith("haproxy"):
        assert result.failed == 0, result.format()
        return
    lost = [r for r in result.failures if r.status is None]
    assert len(lost) == result.failed, result.format()
    assert len(lost) <= switches * keepalive_conns, result.format()
    # an old worker closing an idle kept-alive connection as the request arrives: FIN, or RST
    # when the request's bytes reach the closed socket
    assert all(r.error.startswith(RELOAD_RACE) for r in lost), result.format()


@pytest.mark.parametrize("kind", kinds())
def test_failed_deploy_never_gets_traffic(kind, router_stack, tmp_path):
    good = make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.3")
    down = make_artifact(tmp_path / "artifacts", "down", "--boot-seconds", "0.2", "--health", "DOWN")
    st = router_stack(kind, health={"startup_timeout": "3s"})
    st.deploy("v1", "--artifact", str(good))
    with LoadClient(st.url, **LOAD) as load:
        load.wait_served(60, timeout=30)
        res = st.deploy("v2", "--artifact", str(down), expect=1)
        load.wait_served(load.served + 60, timeout=30)
    assert not res["ok"] and "healthy" in res["reason"]
    result = load.result
    # the routing never changed: not even nginx reloaded
    assert result.failed == 0, result.format()
    assert set(result.by_version()) == {"v1"}
    assert st.status()["live_release"] == "v1"


@pytest.mark.parametrize("kind", kinds("nginx-managed", "haproxy-managed"))
def test_faulty_canary_is_rolled_back(kind, router_stack, tmp_path):
    good = make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.3")
    faulty = make_artifact(tmp_path / "artifacts", "faulty", "--boot-seconds", "0.3", "--fail-rate", "0.33")
    weight, min_req, interval, limit, rate = 20, 20, 1.0, 2, 60.0
    st = router_stack(
        kind,
        strategy={
            "type": "canary",
            "steps": [{"weight": weight, "pause": "60s"}, {"weight": 100, "pause": "1s"}],
            "sticky": False,
            "analysis": {"interval": f"{interval}s", "min_requests": min_req, "max_error_rate": 0.05, "failure_limit": limit},
        },
    )
    st.deploy("v1", "--artifact", str(good), "--strategy", "blue-green")
    load_cfg = dict(rate=rate, keepalive=4, new=2, post=0, slow=0, timeout=15)
    with LoadClient(st.url, **load_cfg) as load:
        load.wait_served(60, timeout=30)
        res = st.deploy("v2", "--artifact", str(faulty), expect=1)
        load.wait_served(load.served + 60, timeout=30)
    assert res["state"] == "rolled_back" and "analysis failed" in res["reason"], res
    result = load.result
    app_500s = [r for r in result.failures if r.status == 500]
    assert all(r.version == "v2" for r in app_500s)
    # what the canary could receive: failure_limit windows of min_requests + one interval, plus 3 s of slack
    per_s = weight / 100 * rate
    bound = limit * (min_req + per_s * interval) + per_s * 3.0
    assert 0 < len(app_500s) <= bound, result.format()
    _allowed_router_losses(kind, _without(result, app_500s), switches=2, keepalive_conns=load_cfg["keepalive"])
    s = st.status()
    assert s["live_release"] == "v1" and not [i for i in s["instances"] if i["release"] == "v2"]


@pytest.mark.parametrize("kind", kinds())
def test_rolling_over_three_instances(kind, router_stack, tmp_path):
    from tests.e2e._canary_helpers import StatusSampler, serving

    good = make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.3")
    st = router_stack(kind, n_ports=4, run={"instances": 3},
                      strategy={"type": "rolling", "max_surge": 1, "max_unavailable": 0})
    st.deploy("v1", "--artifact", str(good))
    load_cfg = dict(rate=60, keepalive=3, new=2, post=1, slow=0, timeout=15)
    with LoadClient(st.url, **load_cfg) as load, StatusSampler(st) as sampler:
        load.wait_served(60, timeout=30)
        res = st.deploy("v2", "--artifact", str(good))
        load.wait_served(load.served + 60, timeout=30)
    assert res["ok"], res
    counts = [serving(status) for _, status in sampler.samples]
    assert counts and min(counts) >= 3, counts
    # each batch changes the routing twice (new one in, old one out)
    _allowed_router_losses(kind, load.result, switches=6, keepalive_conns=load_cfg["keepalive"] + load_cfg["post"])
    s = st.status()
    assert s["live_release"] == "v2" and sorted(i["release"] for i in s["instances"]) == ["v2"] * 3


def _without(result, records):
    ids = {id(r) for r in records}
    from nonstop.testing.load import LoadResult

    return LoadResult([r for r in result.records if id(r) not in ids], result.started, result.ended)


def _headers_seen(port: int, source: str, headers: dict | None = None) -> dict:
    """GET /headers through ``port`` from the loopback address ``source``: what the app was forwarded."""
    import http.client
    import json

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        c.request("GET", "/headers", headers=headers or {})
        r = c.getresponse()
        assert r.status == 200, (r.status, r.read())
        return json.loads(r.read())["headers"]
    finally:
        c.close()


@pytest.mark.parametrize("kind", kinds("nginx-managed", "haproxy-managed"))
def test_split_from_one_address_and_forwarded_headers(kind, router_stack, tmp_path):
    """DESIGN §2 on nginx and HAProxy: a cookie-less client on one address is split by weight (random
    bucket, pinned in a cookie it never returns); forwarded headers believed only from trusted_proxies."""
    from tests.e2e._canary_helpers import warm

    good = make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.3")
    st = router_stack(
        kind,
        trusted_proxies=["127.0.0.3/32"],
        strategy={
            "type": "canary",
            "steps": [{"weight": 20, "pause": "5s"}],
            "analysis": {"interval": "1s", "min_requests": 10, "max_error_rate": 0.05},
        },
        health={"startup_timeout": "15s"},
    )
    st.deploy("v1", "--artifact", str(good), "--strategy", "blue-green")
    # an untrusted client forging every forwarding header: replaced by what the router saw
    h = _headers_seen(st.listen, "127.0.0.2", {"X-Forwarded-For": "6.6.6.6", "X-Real-IP": "6.6.6.6",
                                               "X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil"})
    assert h["x-forwarded-for"] == "127.0.0.2" and h["x-real-ip"] == "127.0.0.2", h
    assert h["x-forwarded-proto"] == "http" and h["x-forwarded-host"] != "evil", h
    # a trusted proxy (127.0.0.3) naming its client: believed
    h = _headers_seen(st.listen, "127.0.0.3", {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https"})
    assert h["x-real-ip"] == "203.0.113.9" and h["x-forwarded-for"] == "203.0.113.9, 127.0.0.3", h
    assert h["x-forwarded-proto"] == "https", h
    offset = time.time() - time.monotonic()
    with LoadClient(st.url, rate=60, keepalive=3, new=2, post=0, slow=0, timeout=15) as load:
        warm(load, 40, stack=st)
        res = st.deploy("v2", "--artifact", str(good))
        warm(load, 20, stack=st)
    assert res["state"] == "promoted", res
    t0 = next(e["ts"] for e in res["events"] if e["type"] == "weight") - offset
    t1 = next(e["ts"] for e in res["events"] if e["type"] == "switched") - offset
    during = [r for r in load.result.records if t0 + 0.5 < r.start < t1 - 0.2 and r.ok]
    share = sum(1 for r in during if r.version == "v2") / max(1, len(during))
    print(f"\n{kind}: canary got {share:.1%} of {len(during)} cookie-less requests from one address at 20%")
    assert len(during) >= 120 and 0.13 <= share <= 0.27, (share, len(during))


@pytest.mark.parametrize("kind", kinds("nginx-managed", "haproxy-managed"))
def test_blue_green_watch_switches_back_from_a_faulty_version(kind, router_stack, tmp_path):
    """DESIGN §2 (blue-green analysis) on nginx and HAProxy, from their own stats (access log, show stat)."""
    from tests.e2e._canary_helpers import warm

    good = make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.3")
    faulty = make_artifact(tmp_path / "artifacts", "faulty", "--boot-seconds", "0.3", "--fail-rate", "0.33")
    rate, interval, min_req = 60.0, 1.0, 20
    st = router_stack(
        kind,
        strategy={"type": "blue-green", "keep_previous": "10m",
                  "analysis": {"watch": "30s", "interval": f"{interval}s", "min_requests": min_req,
                               "max_error_rate": 0.05, "failure_limit": 2}},
        health={"startup_timeout": "15s"},
    )
    st.deploy("v1", "--artifact", str(good))
    load_cfg = dict(rate=rate, keepalive=3, new=2, post=0, slow=0, timeout=15)
    with LoadClient(st.url, **load_cfg) as load:
        warm(load, 60, stack=st)
        res = st.deploy("v2", "--artifact", str(faulty), expect=1)
        warm(load, 60, stack=st)
    assert res["state"] == "rolled_back" and "5xx" in res["reason"], res
    switched = [e["ts"] for e in res["events"] if e["type"] == "switched"]
    took = switched[1] - switched[0]
    print(f"\n{kind}: switched back {took:.2f}s after the switch")
    assert took <= min_req / rate + 2 * interval + 2.5, took
    result = load.result
    app_500s = [r for r in result.failures if r.status == 500]
    assert app_500s and all(r.version == "v2" for r in app_500s)
    assert len(app_500s) <= 0.34 * rate * (took + 0.5) + 5
    _allowed_router_losses(kind, _without(result, app_500s), switches=2, keepalive_conns=load_cfg["keepalive"])
    s = st.status()
    assert s["live_release"] == "v1" and not [i for i in s["instances"] if i["release"] == "v2"]


@pytest.mark.parametrize("kind", kinds("nginx-managed", "haproxy-managed"))
def test_a_split_key_pins_users_and_no_traffic_fails_at_the_progress_deadline(kind, router_stack, tmp_path):
    """DESIGN §2 "The split" on nginx and HAProxy: a ``split_key`` cookie keeps each of 24 users on one
    side for the whole step (nginx hashes it with MurmurHash2, HAProxy with CRC32: which side a user lands
    on differs between them, that every user stays on one does not), no bucket cookie is sent; then a canary
    that gets no traffic fails at ``progress_deadline`` naming the figures, traffic back on v1."""
    from tests.e2e._canary_helpers import StickyUsers
    from tests.e2e.test_canary_split import event_window

    good = make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.3")
    weight = 40
    st = router_stack(
        kind,
        strategy={"type": "canary", "steps": [{"weight": weight, "pause": "4s"}], "split_key": {"cookie": "account_id"},
                  "analysis": {"interval": "1s", "min_requests": 5, "progress_deadline": "30s"}},
        health={"startup_timeout": "15s"},
    )
    st.deploy("v1", "--artifact", str(good), "--strategy", "blue-green")
    ids = [f"acct-{i}" for i in range(24)]
    offset = time.time() - time.monotonic()
    with StickyUsers("127.0.0.1", st.listen, rate=80, app_cookies=[f"account_id={i}" for i in ids]) as users:
        time.sleep(1.0)
        res = st.deploy("v2", "--artifact", str(good))
    assert res["state"] == "promoted", res
    assert users.failures == []
    t0, t1 = event_window(res, weight, offset)
    sides: dict[str, set[str]] = {}
    for s in users.seen:
        if t0 + 0.3 < s.t < t1 - 0.1 and s.version:
            sides.setdefault(ids[s.user], set()).add(s.version)
    assert sum(1 for _ in sides) >= 20, sides
    assert all(len(v) == 1 for v in sides.values()), sides  # nobody moved during the step
    on_canary = sum(1 for v in sides.values() if v == {"v2"})
    print(f"\n{kind}: {on_canary} of {len(sides)} users on the canary at {weight}%")
    assert 0 < on_canary < len(sides), sides
    assert users.set_cookies == {}

    st.write_config(strategy={"type": "canary", "steps": [{"weight": 20, "pause": "1s"}],
                              "analysis": {"interval": "1s", "min_requests": 50, "progress_deadline": "4s"}})
    res = st.deploy("v3", "--artifact", str(good), expect=1)
    assert res["state"] == "rolled_back", res
    reason = res["reason"]
    assert "progress_deadline 4s" in reason and "canary received 0 request(s)" in reason, reason
    assert st.status()["live_release"] == "v2"
