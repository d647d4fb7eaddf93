"""ContainerRuntime against the real engines: an own dockerd (tests/runtimes/containers.py) and podman.

Each test drives the runtime the way the fleet will (start, alive, exit_code, stop, discover, adopt,
forget, images) and checks what the engine really did with the engine's own CLI. The app is
sigapp.sh in a busybox image (it logs the signals it gets); the listening diagnosis also runs the
real example app (examples/app/image.sh).
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import time
import uuid
from pathlib import Path

import pytest

from nonstop.agent.runtimes.base import Handle, InstanceSpec
from nonstop.agent.runtimes.container import ContainerRuntime, container_name
from nonstop.agent.runtimes.engine import Engine
from nonstop.errors import EngineUnreachable, InstanceError, UsageError
from tests.e2e.helpers import stack_ports
from tests.runtimes.containers import EngineBed

# Bounds measured on this machine (2 cores), with room: an outside `kill` is seen by alive() before
# the kill command has even returned (a pidfd on the container's main process; the engine's own
# event follows 10-60 ms later).
OUTSIDE_KILL_SEEN_WITHIN = 1.0


@pytest.fixture(params=["docker", "podman"])
def bed(request) -> EngineBed:
    return request.getfixturevalue("dockerd" if request.param == "docker" else "podman_env")


def make_spec(tmp_path: Path, image: str, port: int, *argv: str, release: str = "r1", **kw) -> InstanceSpec:
    return InstanceSpec(
        app="demo",
        id=f"{release}@{port}",
        release=release,
        version="v1",
        port=port,
        argv=argv,
        log_path=tmp_path / "state" / "logs" / f"{release}-{port}.log",
        image=image,
        container_port=kw.pop("container_port", 8080),
        **kw,
    )


async def until(pred, timeout: float = 10.0, what: str = "condition", interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return v
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def http_get(port: int) -> str:
    """One GET / on 127.0.0.1:port; "" when nothing answers (yet)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
            return data.decode(errors="replace")
    except OSError:
        return ""


def logged(spec: InstanceSpec) -> str:
    try:
        return spec.log_path.read_text()
    except FileNotFoundError:
        return ""


def inspect(bed: EngineBed, ref: str) -> dict | None:
    res = bed.cli("container", "inspect", ref, check=False)
    return json.loads(res.stdout)[0] if res.returncode == 0 else None


def with_runtime(bed: EngineBed, state: Path, body, **kw):
    async def main():
        rt = bed.runtime(state, **kw)
        try:
            return await body(rt)
        finally:
            await rt.close()

    return asyncio.run(main())


# -- start, watch, stop --------------------------------------------------------------------------
def test_start_serve_and_stop_with_the_configured_signal(bed, sig_image, tmp_path):
    image = sig_image(bed)
    [port] = stack_ports(1)
    spec = make_spec(tmp_path, image, port, "serve", env={"GREETING": "hi there"}, stop_signal="SIGUSR1")

    async def body(rt: ContainerRuntime):
        h = await rt.start(spec)
        assert await rt.alive(h)
        assert "hello from sigapp" in await until(lambda: http_get(port), what="the published port to answer")
        doc = inspect(bed, h.ref["id"])
        labels = doc["Config"]["Labels"]
        assert {k: labels[k] for k in ("nonstop.app", "nonstop.release", "nonstop.instance", "nonstop.port")} == {
            "nonstop.app": "demo",
            "nonstop.release": "r1",
            "nonstop.instance": f"r1@{port}",
            "nonstop.port": str(port),
        }
        assert labels["nonstop.state"] == str((tmp_path / "state").resolve())
        assert doc["Name"].lstrip("/") == h.ref["name"] == container_name("demo", "r1", port, rt.key)
        assert doc["Config"]["StopSignal"] in ("SIGUSR1", int(signal.SIGUSR1))  # podman shows the number
        assert doc["HostConfig"]["RestartPolicy"]["Name"] in ("no", "")
        assert doc["HostConfig"]["PortBindings"]["8080/tcp"] == [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
        assert "GREETING=hi there" in doc["Config"]["Env"] and "PORT=8080" in doc["Config"]["Env"]
        await until(lambda: "ready" in logged(spec), what="the app's traps")
        assert await rt.stop(h, "SIGUSR1", 5.0) == "exited"
        assert await rt.exit_code(h) == 7
        assert not await rt.alive(h)
        assert inspect(bed, h.ref["id"]) is None  # removed once stopped

    with_runtime(bed, tmp_path / "state", body)
    log = logged(spec)
    first = log.splitlines()[0]
    assert first.startswith("=== nonstop ") and f"instance=r1@{port}" in first and f"image={image}" in first
    assert "up mode=serve PORT=8080 GREETING=hi there" in log and "got SIGUSR1" in log


def test_killed_after_stop_timeout(bed, sig_image, tmp_path):
    [port] = stack_ports(1)
    spec = make_spec(tmp_path, sig_image(bed), port, "stubborn")

    async def body(rt: ContainerRuntime):
        h = await rt.start(spec)
        await until(lambda: "ready" in logged(spec), what="the app's traps")
        t = time.monotonic()
        assert await rt.stop(h, "SIGTERM", 1.0) == "killed"
        took = time.monotonic() - t
        assert 1.0 <= took < 4.0, took
        assert await rt.exit_code(h) == -9

    with_runtime(bed, tmp_path / "state", body)
    assert "got SIGTERM" in logged(spec)


def test_a_container_killed_from_outside_is_seen_by_alive(bed, sig_image, tmp_path):
    [port] = stack_ports(1)
    spec = make_spec(tmp_path, sig_image(bed), port, "serve")

    async def body(rt: ContainerRuntime):
        h = await rt.start(spec)
        await until(lambda: http_get(port), what="the app to serve")
        # what alive() costs while the event stream runs: a look-up, no engine call
        t = time.perf_counter()
        for _ in range(10_000):
            assert await rt.alive(h)
        per_call = (time.perf_counter() - t) / 10_000
        assert per_call < 50e-6 and rt.engine_calls == 0, (per_call, rt.engine_calls)
        await until(lambda: rt.pids.watching(h.ref["id"]), what="a pidfd on its main process")
        kill = asyncio.create_task(asyncio.to_thread(bed.cli, "kill", h.ref["id"]))
        t0 = time.monotonic()
        await until(lambda: kill.done(), what="docker kill")
        t1 = time.monotonic()

        async def dead() -> bool:
            return not await rt.alive(h)

        await until(dead, timeout=5, interval=0.005, what="alive() False")
        seen = time.monotonic()
        print(f"\n{bed.name}: alive() {per_call * 1e6:.1f} us; outside kill seen {seen - t1:.3f}s after the "
              f"command returned ({seen - t0:.3f}s after it was issued)")
        assert seen - t1 < OUTSIDE_KILL_SEEN_WITHIN
        assert await rt.exit_code(h) == -9
        assert rt.engine_calls == 0
        await rt.forget(h)
        assert inspect(bed, h.ref["id"]) is None

    with_runtime(bed, tmp_path / "state", body)


def test_exit_codes(dockerd, sig_image, tmp_path):
    [p1, p2] = stack_ports(2)
    crash = make_spec(tmp_path, sig_image(dockerd), p1, "exit", "3")
    clean = make_spec(tmp_path, sig_image(dockerd), p2, "exit", "0")

    async def body(rt: ContainerRuntime):
        h1, h2 = await rt.start(crash), await rt.start(clean)
        assert await rt.exit_code(h1) in (None, 3)  # None while it still runs
        await until(lambda: _gone(rt, h1) and _gone(rt, h2), what="both to exit")
        assert (await rt.exit_code(h1), await rt.exit_code(h2)) == (3, 0)
        assert not await rt.alive(h1)
        assert await rt.stop(h1, "SIGTERM", 1.0) == "gone"
        assert inspect(dockerd, h1.ref["id"]) is None
        await rt.forget(h2)
        assert inspect(dockerd, h2.ref["id"]) is None

    with_runtime(dockerd, tmp_path / "state", body)
    assert "up mode=exit" in logged(crash)


def _gone(rt: ContainerRuntime, h: Handle) -> bool:
    st = rt.states.get(h.ref["id"])
    return st is not None and not st.running


# -- after an agent restart -----------------------------------------------------------------------
def test_discover_and_adopt_after_a_restart_with_logs_resumed(bed, sig_image, tmp_path):
    """The agent "restarts": its runtime object closes (followers and event stream gone, containers
    kept), a new one finds the containers by label and resumes the log without a repeat or a gap."""
    state = tmp_path / "state"
    [p1, p2] = stack_ports(2)
    ticker = make_spec(tmp_path, sig_image(bed), p1, "tick")
    crasher = make_spec(tmp_path, sig_image(bed), p2, "exit", "5", release="r0")

    async def first(rt: ContainerRuntime):
        h1 = await rt.start(ticker)
        h2 = await rt.start(crasher)
        await until(lambda: logged(ticker).count("tick ") >= 5, what="ticks")
        await until(lambda: _gone(rt, h2), what="the crasher to exit")
        return h1, h2

    h1, h2 = with_runtime(bed, state, first)
    time.sleep(0.5)  # ticks while nobody follows: the new follower must fetch them, once

    async def second(rt: ContainerRuntime):
        found = {f.instance: f for f in await rt.discover()}
        assert set(found) == {f"r1@{p1}", f"r0@{p2}"}
        a, b = found[f"r1@{p1}"], found[f"r0@{p2}"]
        assert (a.release, a.port, a.running) == ("r1", p1, True)
        assert (b.release, b.port, b.running) == ("r0", p2, False)
        assert a.handle.ref["id"] == h1.ref["id"] and a.handle.ref["log"] == str(ticker.log_path.resolve())
        stored = Handle.from_json(json.loads(json.dumps(h1.to_json())))  # as the store keeps it
        assert await rt.adopt(stored) and await rt.alive(stored)
        assert not await rt.adopt(b.handle)
        assert await rt.exit_code(b.handle) == 5
        before = logged(ticker).count("tick ")
        await until(lambda: logged(ticker).count("tick ") > before + 5, what="ticks after the re-attach")
        assert await rt.stop(stored, "SIGTERM", 5.0) == "exited"
        await rt.forget(b.handle)
        assert await rt.discover() == []

    with_runtime(bed, state, second)
    log = logged(ticker)
    ticks = [int(n) for n in re.findall(r"^tick (\d+)$", log, re.M)]
    assert ticks == list(range(1, len(ticks) + 1)), "a tick repeated or missing around the re-attach"
    assert sum(l.startswith("=== nonstop ") for l in log.splitlines()) == 1
    assert "got SIGTERM" in log


def test_containers_nonstop_did_not_start_are_never_touched(dockerd, sig_image, tmp_path):
    bed, image = dockerd, sig_image(dockerd)
    state = tmp_path / "state"
    [p1, p2] = stack_ports(2)
    tag = uuid.uuid4().hex[:8]

    async def body(rt: ContainerRuntime):
        # a stranger holding the very name our instance would get
        name = container_name("demo", "r1", p1, rt.key)
        bed.cli("run", "-d", "--name", name, image, "serve")
        with pytest.raises(InstanceError, match="was not started by nonstop"):
            await rt.start(make_spec(tmp_path, image, p1))
        assert inspect(bed, name)["State"]["Running"]
        # the same app's container from another state dir (another checkout)
        other = f"other-{tag}"
        bed.cli("run", "-d", "--name", other, "--label", "nonstop.app=demo", "--label", "nonstop.state=/elsewhere", image)
        # our own leftover with the name of the next instance: stopped from outside, not removed
        spec = make_spec(tmp_path, image, p2)
        h = await rt.start(spec)
        bed.cli("stop", "-t", "5", h.ref["id"])
        found = await rt.discover()
        assert [(f.instance, f.running) for f in found] == [(f"r1@{p2}", False)]
        h2 = await rt.start(spec)  # the leftover is ours by label: removed first
        assert h2.ref["id"] != h.ref["id"] and inspect(bed, h.ref["id"]) is None
        assert await rt.stop(h2, "SIGTERM", 5.0) == "exited"
        for stranger in (name, other):
            assert inspect(bed, stranger)["State"]["Running"], stranger
        bed.cli("rm", "-f", name, other)

    with_runtime(bed, state, body)


def test_a_port_already_published_or_taken_is_refused_clearly(bed, sig_image, tmp_path):
    image = sig_image(bed)
    [p1, p2] = stack_ports(2)
    stranger = f"stranger-{uuid.uuid4().hex[:8]}"
    bed.cli("run", "-d", "--name", stranger, "-p", f"127.0.0.1:{p1}:8080", image)

    async def body(rt: ContainerRuntime):
        with pytest.raises(InstanceError, match=rf"port {p1} is already published by container {stranger} "):
            await rt.start(make_spec(tmp_path, image, p1))
        with socket.socket() as s:  # a plain process on the port
            s.bind(("127.0.0.1", p2))
            s.listen()
            with pytest.raises(InstanceError, match=rf"port {p2} on 127.0.0.1 is already in use by another process"):
                await rt.start(make_spec(tmp_path, image, p2))
        assert await rt.discover() == []  # the container that could not start was removed

    try:
        with_runtime(bed, tmp_path / "state", body)
    finally:
        bed.cli("rm", "-f", stranger)


# -- images ----------------------------------------------------------------------------------------
def test_resolve_and_remove_an_image(bed, sig_image, tmp_path):
    sig_image(bed)
    ctx = bed.root / "sig-ctx"
    # an image of its own (a unique label), named on a loopback "registry" so a pull stays local
    ref = f"127.0.0.1:1/nonstop-rm-{uuid.uuid4().hex[:8]}:v1"
    bed.cli("build", "-q", "--label", f"test={uuid.uuid4().hex}", "-t", ref, str(ctx))
    [port] = stack_ports(1)

    async def body(rt: ContainerRuntime):
        info = await rt.resolve_image(ref)
        assert info.ref == ref and re.fullmatch(r"sha256:[0-9a-f]{64}", info.id)
        assert (await rt.resolve_image(info.id)).id == info.id
        h = await rt.start(make_spec(tmp_path, info.id, port, "serve"))
        await rt.remove_image(info.id)  # in use by a running container: kept, no error
        assert (await rt.resolve_image(ref)).id == info.id
        await rt.stop(h, "SIGTERM", 5.0)
        await rt.remove_image(info.id)
        assert bed.cli("image", "inspect", info.id, check=False).returncode != 0
        await rt.remove_image(info.id)  # already gone: fine
        t = time.monotonic()
        with pytest.raises(UsageError, match=rf"image {re.escape(ref)} not found locally and could not be pulled: ") as e:
            await rt.resolve_image(ref)
        assert e.value.exit_code == 2 and time.monotonic() - t < rt.pull_timeout

    with_runtime(bed, tmp_path / "state", body)


def test_an_image_that_does_not_exist(bed, tmp_path):
    async def body(rt: ContainerRuntime):
        with pytest.raises(UsageError, match="image 127.0.0.1:1/nonstop-missing:v1 not found locally and could not be pulled"):
            await rt.resolve_image("127.0.0.1:1/nonstop-missing:v1")

    with_runtime(bed, tmp_path / "state", body)


# -- the engine itself --------------------------------------------------------------------------------
def test_an_engine_that_is_not_running_is_named(dockerd, podman_env, tmp_path):
    sock = tmp_path / "nothing-here.sock"

    async def body():
        rt = ContainerRuntime(
            Engine("docker", env={**dockerd.env, "DOCKER_HOST": f"unix://{sock}"}), app="demo", state_dir=tmp_path
        )
        problems = await rt.check()
        assert len(problems) == 1 and str(sock) in problems[0] and "not reachable" in problems[0], problems
        with pytest.raises(EngineUnreachable, match=re.escape(str(sock))) as e:
            await rt.resolve_image("roomescape:v1")
        assert e.value.exit_code == 2
        with pytest.raises(InstanceError, match=re.escape(str(sock))):
            await rt.start(make_spec(tmp_path, "sha256:" + "0" * 64, 1))
        assert await rt.check() == problems and await dockerd.runtime(tmp_path).check() == []
        await rt.close()

        pm = ContainerRuntime(
            Engine("podman", env={**podman_env.env, "CONTAINER_HOST": f"unix://{sock}"}), app="demo", state_dir=tmp_path
        )
        problems = await pm.check()
        assert len(problems) == 1 and str(sock) in problems[0], problems
        assert await podman_env.runtime(tmp_path).check() == []
        missing = ContainerRuntime(Engine("docker", binary=str(tmp_path / "no-docker")), app="demo", state_dir=tmp_path)
        assert "not installed" in (await missing.check())[0]

    asyncio.run(body())


# -- diagnosis ---------------------------------------------------------------------------------------
def test_what_listens_inside_the_example_app(dockerd, example_image, tmp_path):
    """The real example app: served through the published port, and the diagnosis when the app
    listens on another port than container_port."""
    image = example_image(dockerd, "v1")
    [p1, p2] = stack_ports(2)
    good = make_spec(tmp_path, image, p1, "--app.boot-seconds=0")
    wrong = make_spec(tmp_path, image, p2, "--app.boot-seconds=0", "--server.port=9090")

    async def body(rt: ContainerRuntime):
        h1, h2 = await rt.start(good), await rt.start(wrong)
        assert "hello from v1" in await until(lambda: http_get(p1), what="the example app")
        assert await rt.listening_ports(h1) == {8080} and await rt.diagnose(h1) is None
        await until(lambda: rt.listening_ports(h2), what="the app to listen")
        assert await rt.listening_ports(h2) == {9090}
        assert await rt.diagnose(h2) == (
            "nothing listens on container_port 8080 inside the container; it listens on 9090 "
            "(set run.container_port to the app's port, or make the app bind this one)"
        )
        assert await rt.stop(h1, "SIGTERM", 10.0) == "exited" and await rt.exit_code(h1) == 0
        await rt.stop(h2, "SIGTERM", 10.0)
        assert await rt.listening_ports(h2) is None  # gone

    with_runtime(dockerd, tmp_path / "state", body)
    assert "Stopped gracefully" in logged(good)


def test_what_listens_inside_on_podman(podman_env, sig_image, tmp_path):
    [port] = stack_ports(1)
    spec = make_spec(tmp_path, sig_image(podman_env), port, "other", "9191")

    async def body(rt: ContainerRuntime):
        h = await rt.start(spec)
        await until(lambda: rt.listening_ports(h), what="the app to listen")
        assert await rt.listening_ports(h) == {9191}
        assert "it listens on 9191" in await rt.diagnose(h)
        await rt.stop(h, "SIGTERM", 5.0)

    with_runtime(podman_env, tmp_path / "state", body)
