"""The container test bed: real engines, started and cleaned up by the tests themselves.

Fixtures (session scope, self-cleaning; import them into a conftest to use them):

- ``dockerd`` — an own dockerd in a temp dir (data root, exec root, socket,
  pid file), reached through ``DOCKER_HOST`` in ``bed.env`` (never the
  process's own environment, never a dockerd left running elsewhere). It runs
  on an own bridge (``nsd<pid>``, a /24 picked free) with iptables off, so two
  of them (two xdist workers, two checkouts) never fight over ``docker0`` or
  the DOCKER chains; published ports then go through docker-proxy on
  127.0.0.1. At the end: its containers removed, dockerd stopped by PID (TERM,
  then KILL), the bridge deleted, the temp dir removed.
- ``podman_env`` — podman with ``CONTAINERS_CONF`` / ``CONTAINERS_STORAGE_CONF``
  in a temp dir (graph root, run root, events file), ``runtime = "runc"`` and
  the ulimits runc needs here; no service. At the end its containers and
  images are removed and the dir deleted.
- ``example_image`` — ``example_image(bed, version, *props) -> image id``:
  the example app (examples/app/image.sh), about a second per version once
  the JRE layer exists.
- ``sig_image`` — ``sig_image(bed) -> image id``: a 2 MB busybox image running
  ``sigapp.sh`` (serves $PORT, logs the signals it gets).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from nonstop.agent.runtimes.container import ContainerRuntime
from nonstop.agent.runtimes.engine import Engine

ROOT = Path(__file__).resolve().parents[2]
SIGAPP = Path(__file__).with_name("sigapp.sh")
_PATH = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"

__all__ = ["EngineBed", "dockerd", "podman_env", "example_image", "sig_image", "start_dockerd", "make_podman_env"]


@dataclass
class EngineBed:
    """One engine for tests: its name and the environment its CLI needs to find it."""

    name: str
    env: dict[str, str]
    root: Path
    images: dict[tuple, str] = field(default_factory=dict)

    def engine(self) -> Engine:
        return Engine(self.name, env=self.env)

    def runtime(self, state_dir: Path, app: str = "demo", **kw) -> ContainerRuntime:
        return ContainerRuntime(self.engine(), app=app, state_dir=state_dir, **kw)

    def cli(self, *args: str, check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess:
        """The engine's CLI, as a user would run it (``docker kill …`` from outside)."""
        res = subprocess.run([self.name, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"{self.name} {' '.join(args)} failed ({res.returncode}): {res.stderr.strip()}")
        return res


def _wait(pred, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def _unmount_under(root: Path) -> None:
    """Mounts an engine left under its temp dir (overlay layers, shm) go before the dir does."""
    try:
        mounts = [l.split()[1] for l in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return
    for m in sorted((m for m in mounts if m.startswith(str(root) + "/")), key=len, reverse=True):
        subprocess.run(["umount", "-l", m], capture_output=True)


def _free_subnet() -> str:
    """A 172.30.X.0/24 no route of this machine uses (the own bridge's network)."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    rng = random.Random(os.getpid())
    for _ in range(200):
        x = rng.randrange(1, 255)
        if f"172.30.{x}." not in routes:
            return f"172.30.{x}"
    raise RuntimeError("no free 172.30.X.0/24 for the test dockerd's bridge")


def _need(binary: str, package: str) -> str:
    path = shutil.which(binary, path=_PATH)
    if path is None:
        raise RuntimeError(f"{binary} is not installed: run scripts/setup.sh --test (Debian package {package})")
    return path


def start_dockerd(root: Path) -> tuple[EngineBed, subprocess.Popen, str]:
    """dockerd in ``root`` on an own bridge; returns the bed, the process and the bridge's name."""
    dockerd = _need("dockerd", "docker.io")
    _need("docker", "docker.io")
    bridge = f"nsd{os.getpid() % 10**8}"[:15]
    net = _free_subnet()
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)  # a leftover of a killed run
    try:
        for cmd in (
            ["ip", "link", "add", "name", bridge, "type", "bridge"],
            ["ip", "addr", "add", f"{net}.1/24", "dev", bridge],
            ["ip", "link", "set", bridge, "up"],
        ):
            subprocess.run(cmd, check=True, capture_output=True)
        return _start_dockerd_on(root, dockerd, bridge)
    except BaseException:
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)  # never leave the bridge behind
        raise


def _start_dockerd_on(root: Path, dockerd: str, bridge: str) -> tuple[EngineBed, subprocess.Popen, str]:
    sock = root / "docker.sock"
    log = open(root / "dockerd.log", "ab")
    proc = subprocess.Popen(
        [
            dockerd,
            "--ip", "127.0.0.1",
            "--bridge", bridge,
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            "--userland-proxy=true",
            "--data-root", str(root / "data"),
            "--exec-root", str(root / "exec"),
            "--pidfile", str(root / "dockerd.pid"),
            "-H", f"unix://{sock}",
            "--log-level", "warn",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        env={**os.environ, "PATH": _PATH},
        start_new_session=True,
    )
    log.close()
    bed = EngineBed("docker", {**os.environ, "PATH": _PATH, "DOCKER_HOST": f"unix://{sock}"}, root)
    bed.env.pop("DOCKER_CONTEXT", None)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"dockerd exited ({proc.returncode}): {(root / 'dockerd.log').read_text()[-2000:]}")
        return sock.exists() and bed.cli("version", check=False, timeout=10).returncode == 0

    try:
        _wait(up, 30.0, "dockerd to answer")
    except BaseException:
        if proc.poll() is None:  # ours, by its own handle
            proc.kill()
            proc.wait(10)
        raise
    return bed, proc, bridge


def stop_dockerd(bed: EngineBed, proc: subprocess.Popen, bridge: str) -> None:
    try:
        ids = bed.cli("ps", "-aq", check=False, timeout=20).stdout.split()
        if ids:
            bed.cli("rm", "-f", *ids, check=False, timeout=60)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        _unmount_under(bed.root)
        shutil.rmtree(bed.root, ignore_errors=True)


def make_podman_env(root: Path) -> EngineBed:
    _need("podman", "podman")
    conf = root / "containers.conf"
    conf.write_text(
        "[containers]\n"
        'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
        f'events_logfile_path = "{root}/events.log"\n'
        f'tmp_dir = "{root}/tmp"\n'
    )
    storage = root / "storage.conf"
    storage.write_text(f'[storage]\ndriver = "overlay"\ngraphroot = "{root}/graph"\nrunroot = "{root}/run"\n')
    env = {**os.environ, "PATH": _PATH, "CONTAINERS_CONF": str(conf), "CONTAINERS_STORAGE_CONF": str(storage)}
    env.pop("CONTAINER_HOST", None)
    return EngineBed("podman", env, root)


def clean_podman(bed: EngineBed) -> None:
    try:
        bed.cli("rm", "-fa", "-t", "0", check=False, timeout=60)
        bed.cli("rmi", "-fa", check=False, timeout=60)
    finally:
        _unmount_under(bed.root)
        shutil.rmtree(bed.root, ignore_errors=True)


@pytest.fixture(scope="session")
def dockerd() -> Iterator[EngineBed]:
    root = Path(tempfile.mkdtemp(prefix="nonstop-dockerd-"))
    bed, proc, bridge = start_dockerd(root)
    try:
        yield bed
    finally:
        stop_dockerd(bed, proc, bridge)


@pytest.fixture(scope="session")
def podman_env() -> Iterator[EngineBed]:
    bed = make_podman_env(Path(tempfile.mkdtemp(prefix="nonstop-podman-")))
    try:
        yield bed
    finally:
        clean_podman(bed)


def build_example_image(bed: EngineBed, version: str, *props: str, name: str = "roomescape") -> str:
    """examples/app/image.sh for ``version`` (baked ``key=value`` props) → the image id."""
    key = ("example", name, version, props)
    if key not in bed.images:
        res = subprocess.run(
            [str(ROOT / "examples/app/image.sh"), version, *props],
            env={**bed.env, "ENGINE": bed.name, "IMAGE": name},
            capture_output=True,
            text=True,
            timeout=300,
        )
        if res.returncode != 0:
            raise RuntimeError(f"image.sh {version} failed: {res.stderr.strip()}")
        bed.images[key] = res.stdout.strip().splitlines()[-1]
    return bed.images[key]


def build_sig_image(bed: EngineBed, tag: str = "nonstop-test-sig:1") -> str:
    """The busybox test app (sigapp.sh) as an image → its id."""
    key = ("sig", tag)
    if key not in bed.images:
        ctx = bed.root / "sig-ctx"
        (ctx / "bin").mkdir(parents=True, exist_ok=True)
        busybox = _need("busybox", "busybox-static")
        shutil.copy(busybox, ctx / "bin/busybox")
        for applet in ("sh", "sleep", "httpd", "kill", "mkdir", "cat"):
            if not (ctx / "bin" / applet).exists():
                os.symlink("busybox", ctx / "bin" / applet)
        shutil.copy(SIGAPP, ctx / "app.sh")
        (ctx / "Dockerfile").write_text(
            'FROM scratch\nCOPY bin/ /bin/\nCOPY app.sh /app.sh\nENV PATH=/bin\nENTRYPOINT ["/bin/sh", "/app.sh"]\n'
        )
        bed.cli("build", "-q", "-t", tag, str(ctx), timeout=120)
        bed.images[key] = bed.cli("image", "inspect", "--format", "{{.Id}}", tag).stdout.strip()
    iid = bed.images[key]
    return iid if iid.startswith("sha256:") else f"sha256:{iid}"


@pytest.fixture(scope="session")
def example_image():
    return build_example_image


@pytest.fixture(scope="session")
def sig_image():
    return build_sig_image
