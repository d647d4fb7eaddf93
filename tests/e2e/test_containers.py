"""Containers through the whole stack, under load: the real CLI, agent, proxy (or nginx / HAProxy) and
containers of the Java example app, in an own dockerd (and podman) started by the tests.

The images come from ``examples/app/image.sh`` (tests/runtimes/containers.py builds them once per
session); each test's stack passes the engine's environment (``DOCKER_HOST``, or podman's
``CONTAINERS_CONF`` …) to the CLI, whose ``up`` starts the agent with it. The load is the project's
LoadClient (keep-alive, new connections, POSTs with bodies, 1-second requests; one address, no
cookies); every test asserts 0 failed requests unless its scenario bounds them.
"""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from nonstop.testing.load import LoadClient
from tests.e2e._canary_helpers import StatusSampler, serving, warm
from tests.e2e.helpers import wait_for
from tests.e2e.test_canary import canary_bound
from tests.runtimes.containers import ROOT, dockerd, example_image, podman_env  # noqa: F401  (fixtures)

LOAD = dict(rate=80, keepalive=3, new=2, post=2, slow=2, slow_ms=1000, timeout=15)
WARM = 25  # requests served before and after each change (a third of a second of load)
BOOT = "app.boot-seconds=0.05"  # baked into each image (a run.args value would override a baked one)
TAKE_OUT = 0.02  # seconds from a container's death to nonstop taking it out of the split (pidfd → routes)
ENGINE_VARS = ("DOCKER_HOST", "CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "PATH")


@pytest.fixture(scope="module")
def images(dockerd, example_image):  # noqa: F811
    """The example app's images in the test dockerd: ``roomescape:v1..v3`` plus a few bad builds."""
    return {
        "v1": example_image(dockerd, "v1", BOOT),
        "v2": example_image(dockerd, "v2", BOOT),
        "v3": example_image(dockerd, "v3", BOOT),
        "down": example_image(dockerd, "v2", BOOT, "app.health=DOWN", name="roomescape-down"),
        "faulty": example_image(dockerd, "v2", BOOT, "app.fail-rate=0.33", name="roomescape-faulty"),
    }


def engine_env(bed) -> dict[str, str]:
    return {k: bed.env[k] for k in ENGINE_VARS if k in bed.env}


def container_stack(stack_factory, bed, *, n_ports: int = 2, run: dict | None = None, **kw):
    """A stack whose instances are containers of ``roomescape:{version}`` in ``bed``'s engine."""
    kw.setdefault("health", {})
    kw["health"] = {"path": "/actuator/health", "interval": "50ms", "startup_timeout": "20s", **kw["health"]}
    return stack_factory(
        n_ports=n_ports,
        env=engine_env(bed),
        run={"runtime": bed.name, "command": None, "image": "roomescape:{version}", "container_port": 8080,
             "stop_timeout": "10s", **(run or {})},
        **kw,
    )


def ours(bed, st, *filters: str) -> list[dict]:
    """``inspect`` of every container of this stack's app (by label), running or not."""
    ids = bed.cli("ps", "-a", "-q", "--no-trunc", "--filter", "label=nonstop.app=e2e",
                  "--filter", f"label=nonstop.state={st.state.resolve()}", *filters).stdout.split()
    return json.loads(bed.cli("container", "inspect", *ids).stdout) if ids else []


def running_ids(bed, st, release: str) -> list[str]:
    return [c["Id"] for c in ours(bed, st, "--filter", f"label=nonstop.release={release}") if c["State"]["Running"]]


def image_of(st, release: str) -> str:
    """The image id the release recorded (releases/<id>/image.json)."""
    return json.loads((st.state / "releases" / release / "image.json").read_text())["id"]


def versions(result) -> list[str]:
    return [r.version for r in sorted(result.records, key=lambda r: r.end) if r.ok and r.kind != "slow"]


def events(res: dict, type_: str) -> list[dict]:
    return [e for e in res["events"] if e["type"] == type_]


# -- blue-green, rollback, canary --------------------------------------------------------------------


def test_blue_green_rollbacks_refused_images_and_a_faulty_canary(stack_factory, dockerd, images):  # noqa: F811
    """One stack, under one load throughout, 0 failed requests:

    - blue-green v1 → v2: each release runs its recorded image by id, in a labelled container published
      on loopback only; v1's very container is kept warm;
    - warm rollback: the very same v1 container answers again, nothing started;
    - an image that never turns healthy is refused (exit 1), traffic untouched, its container removed;
      so is one whose app does not listen on run.container_port, the failure saying where it listens;
    - cold rollback (keep_previous elapsed): a new container of v1's recorded image id, though the tag
      roomescape:v1 has moved since.

    Then a canary of a faulty image, rolled back by the analysis with bounded failures."""
    st = container_stack(stack_factory, dockerd)
    st.deploy("v1")
    (v1_container,) = running_ids(dockerd, st, "v1")
    load = LoadClient(st.url, **LOAD).start()
    try:
        warm(load, WARM, stack=st)
        res = st.deploy("v2")
        assert res["ok"] and res["release"] == "v2", res
        warm(load, WARM, stack=st)
        seen = versions(load.snapshot())
        assert "v1" in seen and seen[-1] == "v2" and "v1" not in seen[seen.index("v2") + 5:], load.snapshot().format()
        assert image_of(st, "v1") == images["v1"] and image_of(st, "v2") == images["v2"]
        (v2,) = [c for c in ours(dockerd, st) if c["Config"]["Labels"]["nonstop.release"] == "v2"]
        assert v2["Image"] == images["v2"] and v2["State"]["Running"]
        labels = v2["Config"]["Labels"]
        assert labels["nonstop.instance"] == f"v2@{labels['nonstop.port']}"
        assert v2["HostConfig"]["PortBindings"] == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": labels["nonstop.port"]}]}
        assert v2["HostConfig"]["RestartPolicy"]["Name"] in ("no", "")
        s = st.status()
        assert s["live_release"] == "v2" and [r["release"] for r in s["routes"]] == ["v2"]
        (warm_v1,) = [i for i in s["instances"] if i["release"] == "v1"]
        assert warm_v1["alive"] and not warm_v1["routed"] and warm_v1["warm_until"]
        assert running_ids(dockerd, st, "v1") == [v1_container]

        # warm rollback: v1's container again, no start
        r = st.cli("rollback", "--json")
        assert r.code == 0, r.out + r.err
        warm(load, WARM, stack=st)
        assert versions(load.snapshot())[-1] == "v1"
        assert any(e.get("instant") for e in r.json["events"]) and not events(r.json, "instance_starting"), r.json["events"]
        assert running_ids(dockerd, st, "v1") == [v1_container]
        assert running_ids(dockerd, st, "v2") == []  # a release rolled back as bad is stopped, not kept warm

        # a never-healthy image: refused, and nothing else changes
        st.write_config(health={"startup_timeout": "1.5s"})  # the JVM answers DOWN ~0.5 s after its start
        t0 = time.monotonic()
        res = st.deploy("bad", "--image", "roomescape-down:v2", expect=1)
        warm(load, WARM, stack=st)
        assert not res["ok"] and "did not become healthy" in res["reason"], res
        assert any("DOWN" in c for c in res["detail"]["checks"]), res["detail"]
        assert "Started App" in res["detail"]["log_tail"]  # the container's own output explains it
        assert {r.label for r in load.snapshot().records if r.ok and r.start >= t0} == {"v1"}
        assert st.status()["live_release"] == "v1"
        assert [c["Id"] for c in ours(dockerd, st)] == [v1_container], "the refused image's container was left"
        assert st.cli("history", "--json", check=True).json["deployments"][0]["outcome"] in ("failed", "rolled_back")
        # run.container_port that the app does not listen on: refused, and the failure says what it listens on
        st.write_config(run={"container_port": 9090}, health={"startup_timeout": "2s"})
        res = st.deploy("wrong-port", "--image", "roomescape:v2", expect=1)
        assert "nothing listens on container_port 9090 inside the container; it listens on 8080" in res["reason"], res
        assert st.status()["live_release"] == "v1" and [c["Id"] for c in ours(dockerd, st)] == [v1_container]
        st.write_config(run={"container_port": 8080}, health={"startup_timeout": "20s"})

        # cold rollback: v3 live with keep_previous 0s stops and removes v1's container at the switch
        st.write_config(strategy={"type": "blue-green", "keep_previous": "0s"})
        st.deploy("v3")
        wait_for(lambda: not ours(dockerd, st, "--filter", "label=nonstop.release=v1"), timeout=20, what="v1 removed")
        dockerd.cli("tag", images["v3"], "roomescape:v1")  # the tag moves; the release keeps its bytes
        try:
            warm(load, WARM, stack=st)
            r = st.cli("rollback", "--to", "v1", "--json")
            assert r.code == 0, r.out + r.err
            warm(load, WARM, stack=st)
        finally:
            dockerd.cli("tag", images["v1"], "roomescape:v1")
        assert events(r.json, "instance_starting"), "v1 was cold: the rollback must start it"
        (cold,) = ours(dockerd, st, "--filter", "label=nonstop.release=v1")
        assert cold["Id"] != v1_container and cold["Image"] == images["v1"] == image_of(st, "v1")
        assert versions(load.snapshot())[-1] == "v1"
    finally:
        result = load.stop()
    assert result.failed == 0, result.format()
    print(f"\nblue-green story: {result.total} requests, 0 failed")

    # a canary of a faulty image (500 for a third of `GET /`): rolled back by the analysis, what failed
    # bounded by what the canary could receive before the rollback (tests/e2e/test_canary.py)
    weight, min_req, interval, limit, rate = 50, 10, 0.5, 2, 60.0
    st.write_config(strategy={"type": "canary", "sticky": False,
                              "steps": [{"weight": weight, "pause": "60s"}, {"weight": 100, "pause": "1s"}],
                              "analysis": {"interval": f"{interval}s", "min_requests": min_req, "max_error_rate": 0.05,
                                           "failure_limit": limit}})
    with LoadClient(st.url, rate=rate, keepalive=4, new=2, post=0, slow=0, timeout=15) as load:
        warm(load, WARM, stack=st)
        res = st.deploy("faulty", "--image", "roomescape-faulty:v2", expect=1)
        warm(load, WARM, stack=st)
    result = load.result
    assert res["state"] == "rolled_back" and "canary 5xx rate" in res["reason"], res
    bound = canary_bound(weight / 100, rate, min_req, interval, limit, slack=3.0)
    failures = result.failures
    print(f"faulty canary container: {len(failures)} failed of {result.total}; bound {bound:.0f}")
    assert 0 < len(failures) <= bound, result.format()
    assert all(r.status == 500 and r.version == "v2" for r in failures), result.format()
    assert all(r.ok for r in result.records if r.start > max(r.end for r in failures) + 0.5)
    assert st.status()["live_release"] == "v1"
    assert [c["Id"] for c in ours(dockerd, st)] == [cold["Id"]]


# -- rolling ---------------------------------------------------------------------------------------


def test_recreate_holds_requests_while_no_container_runs(stack_factory, dockerd, images):  # noqa: F811
    """The seed's own script, with containers: the v1 container is stopped before v2's is started, on the
    same port; the proxy holds what arrives meanwhile (``hold_timeout``), so the load sees a pause and
    no error. Then a rollback the same way."""
    st = container_stack(stack_factory, dockerd, n_ports=1, strategy={"type": "recreate"}, hold_timeout="30s")
    st.deploy("v1")
    with LoadClient(st.url, **LOAD) as load:
        warm(load, WARM, stack=st)
        res = st.deploy("v2")
        assert res["ok"] and res["state"] == "promoted", res
        warm(load, WARM, stack=st)
        back = st.cli("rollback", "--json")
        assert back.code == 0, back.out + back.err
        warm(load, WARM, stack=st)
    result = load.result
    gap = result.longest_gap().seconds
    print(f"\nrecreate with containers: {result.total} requests, {result.failed} failed; "
          f"longest gap without a success {gap * 1000:.0f} ms")
    assert result.failed == 0, result.format()
    assert gap > 0.3, "no pause: was anything stopped before the new container started?"
    assert versions(result)[-1] == "v1" and "v2" in versions(result)
    (c,) = [c for c in ours(dockerd, st) if c["State"]["Running"]]
    assert c["Config"]["Labels"]["nonstop.release"] == "v1" and c["Image"] == images["v1"]


def test_rolling_over_three_containers_then_one_killed_from_outside(stack_factory, dockerd, images):  # noqa: F811
    """Rolling v1 → v2 over three containers (surge 1): 0 failed, the floor of 3 serving never breached.
    Then ``docker kill`` of one: out of the split at once, restarted, back in.

    What the kill may fail, from the load client's own records: the requests the container had when it
    died (they end at its death: the first failure's end marks it), and any sent to it in the few
    milliseconds before nonstop took it out (docker-proxy still accepts for a dead container and
    closes after the request was written, which the proxy must not retry; docs/containers.md)."""
    n = 3
    st = container_stack(stack_factory, dockerd, n_ports=n + 1, run={"instances": n},
                         strategy={"type": "rolling", "max_surge": 1, "max_unavailable": 0})
    st.deploy("v1")
    assert serving(st.status()) == n
    load = LoadClient(st.url, **LOAD).start()
    try:
        with StatusSampler(st) as sampler:
            warm(load, WARM, stack=st)
            res = st.deploy("v2")
            warm(load, WARM, stack=st)
        assert res["ok"] and res["state"] == "promoted", res
        rolled = load.snapshot()
        assert rolled.failed == 0, rolled.format()
        counts = [serving(s) for _, s in sampler.samples]
        print(f"\nrolling containers: {len(counts)} samples, serving min {min(counts)} max {max(counts)} (floor {n})")
        assert len(counts) >= 5 and min(counts) >= n, counts
        assert max(len(s["instances"]) for _, s in sampler.samples) <= n + 1
        assert sorted(c["Config"]["Labels"]["nonstop.release"] for c in ours(dockerd, st)) == ["v2"] * n

        victim = next(i for i in st.status()["instances"] if i["routed"])
        (cid,) = [c["Id"] for c in ours(dockerd, st, "--filter", f"label=nonstop.instance={victim['id']}")]
        t_kill = time.monotonic()
        dockerd.cli("kill", cid)
        wait_for(
            lambda: any(i["id"] == victim["id"] and i["routed"] and i["state"] == "healthy" and i["restarts"] == 1
                        for i in st.status()["instances"]),
            timeout=30, what="the killed container restarted and routed again",
        )
        warm(load, WARM, stack=st)
    finally:
        result = load.stop()
    failures = result.failures
    death = min((f.end for f in failures), default=t_kill)
    in_flight = [r for r in result.records if r.start <= death <= r.end]
    window = [r for r in result.records if death < r.start <= death + TAKE_OUT]
    print(f"docker kill: {len(failures)} failed of {result.total} ({result.failure_reasons()}); "
          f"{len(in_flight)} in flight at the death, {len(window)} sent in the {TAKE_OUT * 1000:.0f} ms after it")
    assert death >= t_kill
    assert all(f.start <= death + TAKE_OUT for f in failures), result.format()
    assert len(failures) <= len(in_flight) + len(window), result.format()
    assert all(f.error.startswith("status 502") for f in failures), result.format()  # answered, none hung
    (again,) = [c for c in ours(dockerd, st, "--filter", f"label=nonstop.instance={victim['id']}") if c["State"]["Running"]]
    assert again["Id"] != cid and again["Image"] == images["v2"]
    assert serving(st.status()) == n


# -- failures --------------------------------------------------------------------------------------


def test_agent_killed_mid_deployment_restarted_agent_re_adopts_and_finishes(stack_factory, dockerd, images):  # noqa: F811
    """kill -9 of the agent mid-deployment, twice, under load (0 failed): while v2's container is starting
    (an image never healthy: it stays starting), `nonstop up` re-adopts v1's very container (by its
    stored handle; a stray of ours the store never recorded is found by label and stopped, containers
    not ours are left alone) and rolls the deployment back; after v3's switch, while
    it is watched, the restarted agent adopts both colors, watches on and finishes the switch. Killed
    once more, ``down`` without the agent stops its containers."""
    st = container_stack(stack_factory, dockerd)
    st.deploy("v1")
    (v1_container,) = running_ids(dockerd, st, "v1")
    load = LoadClient(st.url, **LOAD).start()
    try:
        warm(load, WARM, stack=st)
        dep = st.cli_async("deploy", "--version", "v2", "--image", "roomescape-down:v2")
        wait_for(lambda: running_ids(dockerd, st, "v2"), timeout=20, what="v2's container started")
        os.kill(st.pid("agent"), signal.SIGKILL)
        dep.communicate(timeout=30)
        assert dep.returncode != 0
        warm(load, WARM, stack=st)  # no agent at all: the proxy and the v1 container carry on
        # the ports its containers publish are this app's own, not "in use by another program"
        r = st.cli("check")
        assert r.code == 0, r.out + r.err
        # a container of ours the store never recorded (started just before a crash), one of another
        # state dir and one without labels: found by label, the first is stopped; the others are left
        labels = ["--label", "nonstop.app=e2e", "--label", "nonstop.release=v9", "--label", "nonstop.instance=v9@1",
                  "--label", "nonstop.port=1"]
        stray = dockerd.cli("run", "-d", *labels, "--label", f"nonstop.state={st.state.resolve()}", images["v1"]).stdout.strip()
        other = dockerd.cli("run", "-d", *labels, "--label", "nonstop.state=/elsewhere", images["v1"]).stdout.strip()
        plain = dockerd.cli("run", "-d", images["v1"]).stdout.strip()
        st.cli("up", "--detach", "--timeout", "60", check=True)
        s = wait_for(lambda: (lambda s: s if s["deployment"] is None else None)(st.status()), timeout=30, what="recovery")
        warm(load, WARM, stack=st)
        assert load.snapshot().failed == 0, load.snapshot().format()
        assert s["live_release"] == "v1" and {i["release"] for i in s["instances"]} == {"v1"}, s["instances"]
        # the same v1 container (adopted, not restarted); v2's container and the stray stopped and removed
        assert [c["Id"] for c in ours(dockerd, st)] == [v1_container]
        assert dockerd.cli("inspect", stray, check=False).returncode != 0
        for cid in (other, plain):
            assert json.loads(dockerd.cli("inspect", cid).stdout)[0]["State"]["Running"], "a container not ours was touched"
            dockerd.cli("rm", "-f", cid)
        dep_row = st.cli("history", "--json", check=True).json["deployments"][0]
        assert dep_row["outcome"] == "rolled_back" and "agent" in dep_row["reason"]

        # killed after the switch, while v3 is watched: the restarted agent watches on and finishes the switch
        st.write_config(strategy={"type": "blue-green", "keep_previous": "10m",
                                  "analysis": {"watch": "2s", "interval": "1s", "min_requests": 10000}})
        warm(load, WARM, stack=st)
        dep = st.cli_async("deploy", "--version", "v3")
        wait_for(lambda: (st.status()["deployment"] or {}).get("phase") == "watching", timeout=30, interval=0.1,
                 what="v3 switched and watched")
        (v3_container,) = running_ids(dockerd, st, "v3")
        os.kill(st.pid("agent"), signal.SIGKILL)
        dep.communicate(timeout=30)
        warm(load, WARM, stack=st)
        st.cli("up", "--detach", "--timeout", "60", check=True)
        s = wait_for(lambda: (lambda s: s if s["deployment"] is None else None)(st.status()), timeout=30, what="recovery")
        warm(load, WARM, stack=st)
    finally:
        result = load.stop()
    assert result.failed == 0, result.format()
    assert s["live_release"] == "v3" and versions(result)[-1] == "v3"
    assert running_ids(dockerd, st, "v3") == [v3_container]  # adopted, not restarted
    assert running_ids(dockerd, st, "v1") == [v1_container]  # still the warm previous color
    dep_row = st.cli("history", "--json", check=True).json["deployments"][0]
    assert dep_row["outcome"] == "promoted", dep_row
    # the agent dies again; `down` without it stops and removes the containers it left
    os.kill(st.pid("agent"), signal.SIGKILL)
    r = st.cli("down", "--json")
    assert r.code == 0 and r.json["agent"] is False, r.out + r.err
    assert sorted(r.json["stopped"]["instances"]) == sorted(i["id"] for i in s["instances"]), r.json
    assert not ours(dockerd, st)


# -- podman ----------------------------------------------------------------------------------------


def test_blue_green_on_podman(stack_factory, podman_env, example_image):  # noqa: F811
    example_image(podman_env, "v1", BOOT)
    v2 = example_image(podman_env, "v2", BOOT)
    st = container_stack(stack_factory, podman_env)
    st.deploy("v1")
    with LoadClient(st.url, **LOAD) as load:
        warm(load, WARM, stack=st)
        res = st.deploy("v2")
        assert res["ok"] and res["release"] == "v2", res
        warm(load, WARM, stack=st)
    result = load.result
    assert result.failed == 0, result.format()
    assert versions(result)[-1] == "v2"
    (c,) = [c for c in ours(podman_env, st) if c["Config"]["Labels"]["nonstop.release"] == "v2"]
    assert c["Image"] in (v2, v2.removeprefix("sha256:")) and c["State"]["Running"]
    s = st.status()
    assert s["live_release"] == "v2" and any(i["release"] == "v1" and i["alive"] and not i["routed"] for i in s["instances"])


# -- nginx and HAProxy -----------------------------------------------------------------------------

RELOAD_RACE = ("connection closed by server after the request was sent",
               "connection lost after the request was sent: ConnectionResetError")


@pytest.mark.parametrize("router", ["nginx", "haproxy"])
def test_blue_green_through_nginx_and_haproxy(stack_factory, dockerd, images, router):  # noqa: F811
    """HAProxy loses nothing; nginx may lose, per reload, one request per kept-alive connection of the
    load, only of the kind a reload causes (docs/routers.md, "The reload drop")."""
    cfg = {"type": "nginx", "worker_shutdown_timeout": "15s"} if router == "nginx" else {"type": "haproxy"}
    st = container_stack(stack_factory, dockerd, router=cfg)
    try:
        st.deploy("v1")
        with LoadClient(st.url, **LOAD) as load:
            warm(load, WARM, stack=st)
            res = st.deploy("v2")
            assert res["ok"], res
            warm(load, WARM, stack=st)
    finally:
        st.cli("down", timeout=60)  # before the stack's own teardown: nginx / HAProxy stop gracefully
    result = load.result
    print(f"\n{router} + containers: {result.total} requests, {result.failed} failed {result.failure_reasons()}")
    assert versions(result)[-1] == "v2", result.format()
    if router == "haproxy":
        assert result.failed == 0, result.format()
    else:
        assert result.failed <= LOAD["keepalive"] + LOAD["post"], result.format()
        assert all(r.status is None and r.error.startswith(RELOAD_RACE) for r in result.failures), result.format()
    assert not ours(dockerd, st), "down left containers"


# -- logs, history, status, pruning ------------------------------------------------------------------


def test_built_images_logs_history_status_and_pruned_images(stack_factory, dockerd):  # noqa: F811
    """Each deploy builds its image (``build.commands``: examples/app/image.sh {version}, as a user's
    ``docker build -t roomescape:{version} .``), which the release records by id; with keep_releases 2
    the images of pruned releases leave the engine, the live and previous ones stay. Then logs,
    history, status and down with containers, and history and logs with the agent down."""
    build = {"workdir": str(ROOT), "commands": [["examples/app/image.sh", "{version}", BOOT]]}
    st = container_stack(stack_factory, dockerd, build=build, keep_releases=2,
                         strategy={"type": "blue-green", "keep_previous": "0s"})
    ids = {}
    for v in ("p1", "p2", "p3"):
        res = st.deploy(v)
        assert any(e.get("phase") == "build" for e in res["events"]), res["events"]
        ids[v] = image_of(st, v)  # the image the build just made, by id
        assert ids[v] == dockerd.cli("image", "inspect", "--format", "{{.Id}}", f"roomescape:{v}").stdout.strip()
    present = {v: dockerd.cli("image", "inspect", iid, check=False).returncode == 0 for v, iid in ids.items()}
    assert present == {"p1": False, "p2": True, "p3": True}, present
    assert not (st.state / "releases" / "p1").exists()
    s = st.status()
    (inst,) = s["instances"]
    assert inst["release"] == "p3" and inst["alive"] and inst["routed"] and inst["state"] == "healthy"
    (c,) = ours(dockerd, st)
    assert c["Image"] == ids["p3"] and inst["container"] == c["Id"][:12], inst
    human = st.cli("status", check=True).out
    assert c["Id"][:12] in human, human
    logs = st.cli("logs", check=True).out
    assert "==> p3-" in logs and "Started App" in logs and f"image={ids['p3']}" in logs, logs
    assert "Started App" in st.cli("logs", "p2", check=True).out
    hist = st.cli("history", "--json", check=True).json
    assert [r["id"] for r in hist["releases"]] == ["p3", "p2"]
    assert [d["outcome"] for d in hist["deployments"]] == ["promoted"] * 3
    # without the agent: down stops the container; history and logs read the state dir
    assert st.cli("down").code == 0
    assert not ours(dockerd, st)
    assert st.cli("history", "--json", check=True).json["offline"]
    assert "Started App" in st.cli("logs", check=True).out
