"""The nginx and HAProxy routers against the real binaries, one scenario parametrised over router kinds.

Kinds: nginx managed / external, HAProxy managed / external (see conftest.routed).
Backends are tests/routers/backend.py processes on loopback; releases are
named after the backend's version so ``X-App-Version`` tells who answered.
"""

from __future__ import annotations

import asyncio
import collections
import time

import pytest
import uvloop
from routerstack import KINDS, kinds, routed
from routerkit import get, load, wait_serving

from nonstop.agent.routers.base import Release, RouteTable, Target
from nonstop.errors import RouterError

# nginx reload under keep-alive load: an old worker closes its idle keep-alive connections at
# once, so a naive client that reuses one at that moment gets no response. Each connection can
# lose at most its one next request, so the bound is one per client per reload; measured:
# about 14 of 20 busy clients (docs/routers.md). A retrying client, or no client keep-alive, loses none.
CLIENTS = 20


def one(name: str, addr: str, weight: int = 100, **kw) -> Release:
    return Release(name, weight, (Target(addr),), **kw)


def run(coro):
    """On uvloop, as the agent runs (its subprocess handling differs from asyncio's in ways that matter)."""
    return uvloop.run(asyncio.wait_for(coro, 120))


def version(resp) -> str:
    return resp.body.decode().strip()


@pytest.mark.parametrize("kind", kinds("embedded", *KINDS))
def test_apply_routes_traffic_and_current_reads_it_back(kind, tmp_path):
    """Every router, the embedded one too: what ``apply`` was given, ``current`` reads back (the revision
    is the router's own business: the embedded proxy numbers its tables)."""
    async def go():
        async with routed(kind, tmp_path) as (router, cfg, (b1, b2)):
            routing = RouteTable(releases=(one("v1", b1.addr),))
            await router.apply(routing)
            r = await wait_serving(cfg.listen)
            assert r.status == 200 and version(r) == "v1"
            assert r.headers.get("x-seen-forwarded-for") == "127.0.0.1"
            if kind != "haproxy-external":
                assert r.headers["x-nonstop-release"] == "v1"
            assert (await router.current()).with_revision(0) == routing
            # match names are written into a managed HAProxy's config at start (strategy.match): none here
            match = () if kind.startswith("haproxy") else (("x-canary", "1"),)
            canary = RouteTable(releases=(one("v2", b2.addr, 20, match_headers=match), one("v1", b1.addr, 80)),
                                sticky="client_ip")
            if kind != "haproxy-external":  # an external HAProxy backend splits by server weight only
                await router.apply(canary)
                assert (await router.current()).with_revision(0) == canary
            assert await router.alive()

    run(go())


def _switch_cases():
    cases = []
    for p in kinds():
        kind = p.values[0]
        clients = ["naive"] if kind.startswith("haproxy") else ["naive", "retrying"]
        if kind == "nginx-managed":
            clients.append("no-keepalive")
        cases += [pytest.param(kind, c, marks=p.marks, id=f"{kind}-{c}") for c in clients]
    return cases


@pytest.mark.parametrize("kind,client", _switch_cases())
def test_switch_under_load(kind, client, tmp_path):
    """v1 → v2 while 20 keep-alive clients send requests back to back.

    HAProxy (no reload): zero failures. nginx: a naive client loses at most one request per
    connection per reload (asserted), a retrying client none, and no client keep-alive none.
    """

    async def go():
        async with routed(kind, tmp_path) as (router, cfg, (b1, b2)):
            if client == "no-keepalive":
                router.client_keepalive_timeout = 0
                await router.stop()
                await router.start()
            await router.apply(RouteTable(releases=(one("v1", b1.addr),)))
            await wait_serving(cfg.listen)
            task = asyncio.create_task(load(cfg.listen, 3.0, clients=CLIENTS, retry=client == "retrying"))
            await asyncio.sleep(1.0)
            t0 = time.monotonic()
            await router.apply(RouteTable(releases=(one("v2", b2.addr),)))
            switched = time.monotonic() - t0
            assert await router.drain([b1.addr], 20)
            res = await task
            after = await get(cfg.listen)
            assert version(after) == "v2"
            assert res.ok > 100, res
            assert res.by_release, res
            if kind.startswith("haproxy") or client != "naive":
                assert res.failed == 0, res
            else:
                assert res.failed <= CLIENTS, res
                assert set(res.errors) <= {"ClosedBeforeResponse"}, res  # never a half answer: retry-safe
            print(f"{kind}/{client}: {res.total} requests, {res.failed} failed, {res.retried} retried, "
                  f"switch {switched * 1000:.0f} ms")

    run(go())


@pytest.mark.parametrize("kind", kinds("nginx-managed", "nginx-external", "haproxy-managed"))
def test_weights_split_users_by_bucket_and_raising_only_adds(kind, tmp_path):
    async def go():
        async with routed(kind, tmp_path) as (router, cfg, (b1, b2)):
            await router.apply(RouteTable(releases=(one("v2", b2.addr, 10), one("v1", b1.addr, 90))))
            await wait_serving(cfg.listen)
            before = {}
            for b in range(100):
                before[b] = version(await get(cfg.listen, headers={"Cookie": f"nonstop_bucket={b}"}))
            assert collections.Counter(before.values()) == {"v2": 10, "v1": 90}
            assert all(before[b] == "v2" for b in range(10))  # canary first: buckets 0..9
            await router.apply(RouteTable(releases=(one("v2", b2.addr, 25), one("v1", b1.addr, 75))))
            after = {}
            for b in range(100):
                after[b] = version(await get(cfg.listen, headers={"Cookie": f"nonstop_bucket={b}"}))
            assert collections.Counter(after.values()) == {"v2": 25, "v1": 75}
            # no user moves back: every v2 user stays on v2
            assert all(after[b] == "v2" for b, v in before.items() if v == "v2")

    run(go())


@pytest.mark.parametrize("kind", kinds("nginx-managed", "haproxy-managed"))
def test_new_user_gets_a_sticky_cookie_and_keeps_its_release(kind, tmp_path):
    async def go():
        async with routed(kind, tmp_path) as (router, cfg, (b1, b2)):
            await router.apply(RouteTable(releases=(one("v2", b2.addr, 50), one("v1", b1.addr, 50))))
            r = await wait_serving(cfg.listen)
            cookie = r.headers["set-cookie"]
            assert cookie.startswith("nonstop_bucket=") and "Max-Age=86400" in cookie
            bucket = cookie.split(";")[0]
            first = version(r)
            for _ in range(10):
                rr = await get(cfg.listen, headers={"Cookie": bucket})
                assert version(rr) == first
                assert "set-cookie" not in rr.headers
            # one release: nothing to pin, no cookie (as the embedded proxy)
            await router.apply(RouteTable(releases=(one("v1", b1.addr),)))
            assert "set-cookie" not in (await get(cfg.listen)).headers

    run(go())


@pytest.mark.parametrize("kind", kinds("nginx-managed", "haproxy-managed"))
def test_not_sticky_splits_requests(kind, tmp_path):
    async def go():
        async with routed(kind, tmp_path) as (router, cfg, (b1, b2)):
            await router.apply(RouteTable(releases=(one("v2", b2.addr, 30), one("v1", b1.addr, 70)), sticky=False))
            await wait_serving(cfg.listen)
            res = await load(cfg.listen, 1.5, clients=4)
            share = res.by_release["v2"] / res.total
            assert 0.2 < share < 0.4, res
            r = await get(cfg.listen)
            assert "set-cookie" not in r.headers

    run(go())


@pytest.mark.parametrize("kind", kinds("haproxy-external"))
def test_external_haproxy_weights_split_requests(kind, tmp_path):
    async def go():
        async with routed(kind, tmp_path) as (router, cfg, (b1, b2)):
            await router.apply(RouteTable(releases=(one("v2", b2.addr, 25), one("v1", b1.addr, 75))))
            await wait_serving(cfg.listen)
            seen = collections.Counter()
            for _ in range(200):
                seen[version(await get(cfg.listen))] += 1
            assert 30 <= seen["v2"] <= 70, seen  # roundrobin by weight: 25% of 200
            with pytest.raises(RouterError, match="match"):
                await router.apply(RouteTable(releases=(one("v2", b2.addr, 0, match_headers=(("X-Canary", "1"),)), one("v1", b1.addr))))

    run(go())


@pytest.mark.parametrize("kind", kinds("nginx-managed", "nginx-external", "haproxy-managed"))
def test_header_and_cookie_match_reach_a_release_at_weight_zero(kind, tmp_path):
    async def go():
        strategy = {"type": "canary", "match": {"header": {"X-Canary": "1"}, "cookie": {"beta": "yes"}}}
        async with routed(kind, tmp_path, strategy=strategy) as (router, cfg, (b1, b2)):
            await router.apply(
                RouteTable(releases=(one("v2", b2.addr, 0, match_headers=(("X-Canary", "1"),)), one("v1", b1.addr, 100)))
            )
            await wait_serving(cfg.listen)
            assert version(await get(cfg.listen)) == "v1"
            assert version(await get(cfg.listen, headers={"x-canary": "1"})) == "v2"  # name case-insensitive
            assert version(await get(cfg.listen, headers={"X-Canary": "2"})) == "v1"  # exact value
            assert version(await get(cfg.listen, headers={"X-Canary": "1", "Cookie": "nonstop_bucket=99"})) == "v2"
            await router.apply(
                RouteTable(releases=
                    (
                        one("v2", b2.addr, 0, match_headers=(("X-Canary", "1"),), match_cookies=(("beta", "yes"),)),
                        one("v1", b1.addr, 100),
                    )
                )
            )
            assert version(await get(cfg.listen, headers={"X-Canary": "1"})) == "v1"  # all entries must match
            both = {"X-Canary": "1", "Cookie": "a=b; beta=yes"}
            assert version(await get(cfg.listen, headers=both)) == "v2"

    run(go())


@pytest.mark.parametrize("kind", kinds())
def test_bad_change_raises_and_the_old_routing_keeps_serving(kind, tmp_path):
    async def go():
        async with routed(kind, tmp_path) as (router, cfg, (b1, b2)):
            good = RouteTable(releases=(one("v1", b1.addr),))
            await router.apply(good)
            await wait_serving(cfg.listen)
            # A name nginx cannot resolve fails `nginx -t`; HAProxy refuses it in `add server`.
            bad = RouteTable(releases=(one("v2", "no-such-host.invalid:8080"),))
            with pytest.raises(RouterError) as e:
                await router.apply(bad)
            assert e.value.message
            if kind.startswith("nginx"):
                assert "no-such-host.invalid" in e.value.message
            assert await router.current() == good
            for _ in range(5):
                r = await get(cfg.listen)
                assert r.status == 200 and version(r) == "v1"
            # and the router still works after the failure
            await router.apply(RouteTable(releases=(one("v2", b2.addr),)))
            assert version(await get(cfg.listen)) == "v2"

    run(go())


@pytest.mark.parametrize("kind", kinds())
def test_drain_waits_for_a_slow_request(kind, tmp_path):
    async def go():
        async with routed(kind, tmp_path) as (router, cfg, (b1, b2)):
            await router.apply(RouteTable(releases=(one("v1", b1.addr),)))
            await wait_serving(cfg.listen)
            slow = asyncio.create_task(get(cfg.listen, "/slow?ms=1500"))
            await asyncio.sleep(0.3)
            if kind.startswith("haproxy"):  # HAProxy knows what is in flight (scur); nginx does not say
                assert (await router.stats())["targets"][b1.addr]["in_flight"] == 1
            await router.apply(RouteTable(releases=(one("v2", b2.addr),)))
            t0 = time.monotonic()
            assert not await router.drain([b1.addr], 0.3)  # still in flight
            assert await router.drain([b1.addr], 10)
            waited = time.monotonic() - t0
            r = await slow
            assert r.status == 200 and version(r) == "v1"
            assert slow.done()
            assert waited >= 0.7, waited  # it really waited for the request
            assert version(await get(cfg.listen)) == "v2"

    run(go())


@pytest.mark.parametrize("kind", kinds())
def test_stats_count_what_was_sent(kind, tmp_path):
    async def go():
        async with routed(kind, tmp_path) as (router, cfg, (b1, b2)):
            await router.apply(RouteTable(releases=(one("v2", b2.addr, 50), one("v1", b1.addr, 50))))
            await wait_serving(cfg.listen)
            await asyncio.sleep(0.3)  # the access-log line of that request is written after its response
            base = await router.stats()
            sent = collections.Counter()
            for b in range(40):
                r = await get(cfg.listen, headers={"Cookie": f"nonstop_bucket={b * 2 + 1}"})
                sent[version(r)] += 1
            await asyncio.sleep(0.3)  # access-log lines are written after the response
            snap = await router.stats()

            def requests(s, section, key):
                return s[section].get(key, {}).get("requests", 0)

            for v, addr in (("v1", b1.addr), ("v2", b2.addr)):
                got = requests(snap, "targets", addr) - requests(base, "targets", addr)
                assert got == sent[v], (v, got, sent, snap)
                assert requests(snap, "releases", v) - requests(base, "releases", v) == sent[v]
            t = snap["targets"][b1.addr]
            assert t["by_class"]["2xx"] >= sent["v1"] and t["proxy_errors"] == 0
            if kind != "haproxy-external":
                assert t["latency"]["count"] == t["requests"] and t["p99"] is not None
            else:
                assert t["latency"] is None and t["p99"] is None and t["avg_response_ms"] >= 0

    run(go())


@pytest.mark.parametrize("kind", kinds("nginx-managed", "haproxy-managed"))
def test_nothing_routable_answers_at_once(kind, tmp_path):
    async def go():
        async with routed(kind, tmp_path) as (router, cfg, (b1, b2)):
            await router.apply(RouteTable(releases=(Release("v1", 100, (Target(b1.addr, draining=True),)),)))
            t0 = time.monotonic()
            r = await get(cfg.listen)
            assert r.status in (502, 503) and time.monotonic() - t0 < 2

    run(go())


@pytest.mark.parametrize("kind", kinds("nginx-managed", "haproxy-managed"))
def test_restart_keeps_the_routing(kind, tmp_path):
    async def go():
        async with routed(kind, tmp_path) as (router, cfg, (b1, b2)):
            routing = RouteTable(releases=(one("v2", b2.addr),))
            await router.apply(routing)
            await router.stop()
            await router.start()
            assert await router.current() == routing
            r = await wait_serving(cfg.listen)
            assert version(r) == "v2"

    run(go())


@pytest.mark.parametrize("kind", kinds())
def test_targets_within_a_release_share_and_a_draining_one_gets_nothing_new(kind, tmp_path):
    async def go():
        async with routed(kind, tmp_path, versions=("a", "b")) as (router, cfg, (ba, bb)):
            both = RouteTable(releases=(Release("v1", 100, (Target(ba.addr), Target(bb.addr))),))
            await router.apply(both)
            await wait_serving(cfg.listen)
            res = await load(cfg.listen, 1.0, clients=4, path="/slow?ms=5")
            seen = collections.Counter()
            for _ in range(30):
                seen[version(await get(cfg.listen, "/slow?ms=5"))] += 1
            assert seen["a"] and seen["b"], (seen, res)
            one_left = RouteTable(releases=(Release("v1", 100, (Target(ba.addr, draining=True), Target(bb.addr))),))
            await router.apply(one_left)
            assert await router.drain([ba.addr], 10)
            for _ in range(20):
                assert version(await get(cfg.listen)) == "b"
            assert await router.current() == one_left

    run(go())


@pytest.mark.parametrize("kind", kinds("nginx-managed"))
def test_nginx_skips_the_reload_when_nginx_would_see_no_change(kind, tmp_path):
    async def go():
        async with routed(kind, tmp_path) as (router, cfg, (b1, b2)):
            await router.apply(RouteTable(releases=(one("v2", b2.addr), Release("v1", 0, (Target(b1.addr, draining=True),)))))
            master = router._master()
            workers = {c.pid for c in master.children()}
            await router.apply(RouteTable(releases=(one("v2", b2.addr),)))  # the draining release left out already
            assert {c.pid for c in master.children()} == workers  # no reload: same workers
            assert await router.current() == RouteTable(releases=(one("v2", b2.addr),))

    run(go())


@pytest.mark.parametrize("kind", kinds("haproxy-managed", "nginx-managed"))
def test_stats_keep_counting_across_log_rotation(kind, tmp_path, monkeypatch):
    import nonstop.agent.routers.haproxy as hp
    import nonstop.agent.routers.nginx as ng

    monkeypatch.setattr(hp, "LOG_TRUNCATE_BYTES", 1)  # truncate (HAProxy) / rotate (nginx) at every read
    monkeypatch.setattr(ng, "LOG_ROTATE_BYTES", 1)

    async def go():
        async with routed(kind, tmp_path) as (router, cfg, (b1, b2)):
            await router.apply(RouteTable(releases=(one("v1", b1.addr),)))
            await wait_serving(cfg.listen)
            await asyncio.sleep(0.2)
            base = (await router.stats())["releases"].get("v1", {}).get("requests", 0)
            for _ in range(3):
                for _ in range(10):
                    await get(cfg.listen)
                await asyncio.sleep(0.3)
                await router.stats()
            await asyncio.sleep(0.3)
            snap = await router.stats()
            assert snap["releases"]["v1"]["requests"] - base == 30

    run(go())


@pytest.mark.parametrize("kind", kinds("nginx-managed", "haproxy-managed"))
def test_a_new_router_object_adopts_the_running_server(kind, tmp_path):
    """The agent restarted: a fresh router object finds the running nginx / HAProxy and keeps serving."""

    async def go():
        async with routed(kind, tmp_path) as (router, cfg, (b1, b2)):
            routing = RouteTable(releases=(one("v2", b2.addr, 50), one("v1", b1.addr, 50)))
            await router.apply(routing)
            await wait_serving(cfg.listen)
            pid = router.info().detail["pid"]
            again = type(router)(cfg, tmp_path / ".nonstop")
            await again.start()
            assert again.info().detail["pid"] == pid
            assert await again.current() == routing
            await again.apply(RouteTable(releases=(one("v2", b2.addr),)))
            assert version(await get(cfg.listen, headers={"Cookie": "nonstop_bucket=99"})) == "v2"
            assert await again.drain([b1.addr], 10)

    run(go())
