"""Router test stacks: the real nginx / HAProxy, managed by nonstop or run "by the user".

Every process started here is stopped by PID in a ``finally``. Everything is
on loopback, on ports picked free, with configs and logs in ``tmp_path``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from routerkit import backends, free_port, make_cfg  # noqa: E402

from nonstop.agent.routers.haproxy import HaproxyRouter  # noqa: E402
from nonstop.agent.routers.nginx import NginxRouter  # noqa: E402

KINDS = ["nginx-managed", "nginx-external", "haproxy-managed", "haproxy-external"]

# Outside CI a developer without nginx/HAProxy may skip these; in CI (where scripts/setup.sh
# installs both) a missing binary must fail the run, never pass as a skip.
_IN_CI = bool(os.environ.get("CI"))
needs_nginx = pytest.mark.skipif(
    not _IN_CI and shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists(), reason="nginx not installed"
)
needs_haproxy = pytest.mark.skipif(
    not _IN_CI and shutil.which("haproxy") is None and not Path("/usr/sbin/haproxy").exists(), reason="haproxy not installed"
)
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"


def user_nginx_conf(root: Path, listen: str, include: Path, access_log: Path, app: str = "shop") -> Path:
    """The nginx config a user of ``mode: external`` writes (as docs/routers.md shows)."""
    t = root / "tmp"
    t.mkdir(parents=True, exist_ok=True)
    conf = root / "nginx.conf"
    # As root, workers would run as nobody, who cannot enter pytest's private tmp dir to buffer bodies.
    user = "user root;" if os.geteuid() == 0 else ""
    conf.write_text(
        f"""
{user}
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log notice;
worker_shutdown_timeout 30s;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {t}/body; proxy_temp_path {t}/proxy; fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi; scgi_temp_path {t}/scgi;
    include {include};
    server {{
        listen {listen};
        access_log {access_log} nonstop_{app}_json;
        location / {{
            proxy_pass http://$nonstop_{app}_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_next_upstream error timeout;
            add_header X-Nonstop-Release $nonstop_{app}_release always;
            add_header Set-Cookie $nonstop_{app}_set_cookie always;
        }}
    }}
}}
"""
    )
    return conf


def user_haproxy_conf(root: Path, listen: str, backend: str = "shop") -> Path:
    conf = root / "haproxy.cfg"
    conf.write_text(
        f"""
global
    stats socket {root}/admin.sock mode 600 level admin
    pidfile {root}/haproxy.pid
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    retries 3
    retry-on conn-failure
    option redispatch
    option forwardfor
frontend web
    bind {listen}
    default_backend {backend}
backend {backend}
    balance roundrobin
"""
    )
    return conf


@asynccontextmanager
async def routed(kind: str, tmp: Path, versions=("v1", "v2"), *, strategy: dict | None = None):
    """Backends for ``versions`` and a started router of ``kind``; yields (router, cfg, backends)."""
    extra = {"strategy": strategy} if strategy else {}
    procs: list[subprocess.Popen] = []
    state = tmp / ".nonstop"
    listen = f"127.0.0.1:{free_port()}"
    if kind == "nginx-managed":
        cfg = make_cfg(tmp, {"type": "nginx", "binary": NGINX, "worker_shutdown_timeout": "20s"}, listen=listen, **extra)
        router = NginxRouter(cfg, state)
    elif kind == "nginx-external":
        user = tmp / "user-nginx"
        user.mkdir()
        include = user / "service-url.inc"
        access = user / "access.json.log"
        conf = user_nginx_conf(user, listen, include, access)
        # The seed's set-up: nginx already runs, with an upstream include nonstop will own.
        from nonstop.agent.routers.base import RouteTable
        from nonstop.agent.routers.nginx_conf import render_upstreams

        include.write_text(render_upstreams("shop", RouteTable()))
        err = str(user / "error.log")
        subprocess.run([NGINX, "-c", str(conf), "-e", err], check=True, timeout=30)
        cfg = make_cfg(
            tmp,
            {
                "type": "nginx",
                "mode": "external",
                "upstream_file": str(include),
                "test_command": [NGINX, "-t", "-q", "-c", str(conf), "-e", err],
                "reload_command": [NGINX, "-s", "reload", "-c", str(conf), "-e", err],
                "access_log": str(access),
                "worker_shutdown_timeout": "30s",
            },
            listen=listen,
            **extra,
        )
        router = NginxRouter(cfg, state)
    elif kind == "haproxy-managed":
        cfg = make_cfg(tmp, {"type": "haproxy", "binary": HAPROXY}, listen=listen, **extra)
        router = HaproxyRouter(cfg, state)
    elif kind == "haproxy-external":
        user = tmp / "user-haproxy"
        user.mkdir()
        conf = user_haproxy_conf(user, listen)
        procs.append(subprocess.Popen([HAPROXY, "-db", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while not (user / "admin.sock").exists():
            assert time.monotonic() < deadline, "user haproxy did not start"
            time.sleep(0.05)
        cfg = make_cfg(
            tmp,
            {"type": "haproxy", "mode": "external", "socket": str(user / "admin.sock"), "backend": "shop"},
            listen=listen,
            **extra,
        )
        router = HaproxyRouter(cfg, state)
    elif kind == "embedded":
        from nonstop.agent.routers.embedded import EmbeddedRouter

        cfg = make_cfg(tmp, {"type": "embedded"}, listen=listen, **extra)
        router = EmbeddedRouter(cfg, state)
    else:  # pragma: no cover
        raise ValueError(kind)
    try:
        with backends(*versions) as bs:
            await router.start()
            try:
                yield router, cfg, bs
            finally:
                await router.stop()
    finally:
        if kind == "nginx-external":
            pid_file = tmp / "user-nginx" / "nginx.pid"
            try:
                pid = int(pid_file.read_text())
                os.kill(pid, signal.SIGTERM)
                _wait_gone(pid)
            except (FileNotFoundError, ValueError, ProcessLookupError):
                pass
        for p in procs:
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)


def _wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def marks_for(kind: str):
    if kind == "embedded":
        return []
    return [needs_nginx] if kind.startswith("nginx") else [needs_haproxy]


def kinds(*only: str):
    """pytest params for router kinds, each with its skip mark."""
    return [pytest.param(k, marks=marks_for(k), id=k) for k in (only or KINDS)]
