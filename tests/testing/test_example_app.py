"""The Java example app (examples/app): built with build.sh, run like the seed's Spring Boot jar."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "examples" / "app" / "build.sh"


@pytest.fixture(scope="module")
def jar() -> Path:
    out = subprocess.run([str(BUILD), "v7"], capture_output=True, text=True, timeout=120, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


class JavaApp:
    """``java -jar`` on port 0; learns the port from Spring's "Started App" line."""

    def __init__(self, jar: Path, *args: str) -> None:
        self.proc = subprocess.Popen(["java", "-jar", str(jar), "--server.port=0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self.started = threading.Event()
        self.port = 0
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if m := re.search(r"Started App in [\d.]+ seconds \(port (\d+), version (\S+)\)", line):
                self.port = int(m.group(1))
                self.started.set()
        self.started.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def run_java(jar):
    apps: list[JavaApp] = []

    def start(*args: str) -> JavaApp:
        app = JavaApp(jar, *args)
        apps.append(app)
        assert app.started.wait(30) and app.port, app.lines
        return app

    yield start
    for app in apps:
        app.close()


def test_build_is_idempotent_and_fast(jar):
    t = time.monotonic()
    out = subprocess.run([str(BUILD), "v7"], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == str(jar)
    assert time.monotonic() - t < 1.0


def test_endpoints_version_baked_in_and_spring_args_ignored(run_java):
    app = run_java("--app.boot-seconds=0.2", "--spring.profiles.active=prod")
    with httpx.Client(base_url=app.url, timeout=5) as c:
        r = c.get("/")
        assert (r.status_code, r.text, r.headers["x-app-version"]) == (200, "hello from v7\n", "v7")
        assert c.get("/actuator/health").json() == {"status": "UP"}
        assert c.get("/version").text == "v7"
        body = bytes(range(256)) * 1024
        assert c.post("/echo", content=body).content == body
        assert c.post("/echo", content=iter([b"ab", b"cd"])).content == b"abcd"
        assert c.get("/slow", params={"ms": 50}).status_code == 200
        assert c.get("/nope").status_code == 404
    assert app.lines[0].startswith("Starting App v7")


def test_knobs_health_down_fail_rate_and_version_arg(run_java):
    app = run_java("--app.boot-seconds=0", "--app.version=v9", "--app.health=DOWN", "--app.fail-rate=0.5")
    with httpx.Client(base_url=app.url, timeout=5) as c:
        r = c.get("/actuator/health")
        assert (r.status_code, r.json()) == (503, {"status": "DOWN"})
        assert [c.get("/").status_code for _ in range(4)] == [200, 500, 200, 500]  # every second one
        assert c.get("/version").text == "v9"


def test_sigterm_drains_in_flight_then_exits_0(run_java):
    app = run_java("--app.boot-seconds=0")
    httpx.get(app.url + "/", timeout=5)  # warm the JIT up a little
    result: dict = {}

    def slow() -> None:
        r = httpx.get(app.url + "/slow?ms=1500", timeout=10)
        result["r"] = (r.status_code, r.headers.get("connection"))

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.5)
    app.proc.terminate()
    time.sleep(0.1)
    with pytest.raises(httpx.ConnectError):
        httpx.get(app.url + "/", timeout=2)
    t.join(10)
    assert result["r"] == (200, "close")
    assert app.proc.wait(10) == 0
    assert app.lines[-1] == "Stopped gracefully"


def test_missing_port_is_a_usage_error(jar):
    out = subprocess.run(["java", "-jar", str(jar)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--server.port" in out.stderr


def test_baked_properties_are_defaults_that_arguments_override(run_java):
    out = subprocess.run([str(BUILD), "v8", "app.health=DOWN", "app.boot-seconds=0"], capture_output=True,
                         text=True, timeout=120, check=True)
    jar8 = Path(out.stdout.strip().splitlines()[-1])
    down = JavaApp(jar8)
    up = JavaApp(jar8, "--app.health=UP")
    try:
        for app in (down, up):
            assert app.started.wait(30) and app.port, app.lines
        assert httpx.get(down.url + "/health", timeout=5).status_code == 503
        assert httpx.get(up.url + "/health", timeout=5).status_code == 200
        assert httpx.get(up.url + "/version", timeout=5).text == "v8"
    finally:
        down.close()
        up.close()
