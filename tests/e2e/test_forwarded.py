"""The seed's set-up: a real nginx in front of nonstop, and who the app believes the client is.

The client connects to nginx from 127.0.0.2; nginx connects to nonstop from 127.0.0.3 (``proxy_bind``),
which is nonstop's only ``trusted_proxies`` entry. The app (``GET /headers``) must see the original
client, and a client that talks to nonstop directly must not be able to name another one.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import time

import pytest

from tests.e2e.artifacts import RUN_COMMAND, make_artifact
from tests.e2e.helpers import stack_ports

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def headers_seen(port: int, source: str, headers: dict | None = None) -> dict:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))
    try:
        c.request("GET", "/headers", headers=headers or {})
        r = c.getresponse()
        body = r.read()
        assert r.status == 200, (r.status, body)
        return json.loads(body)["headers"]
    finally:
        c.close()


@pytest.fixture
def front_nginx(tmp_path):
    """A plain nginx on 127.0.0.1:PORT proxying to nonstop from 127.0.0.3, as a user would write it."""
    procs = []

    def start(upstream_port: int) -> int:
        (port,) = stack_ports(1)
        d = tmp_path / "front"
        (d / "tmp").mkdir(parents=True)
        conf = d / "nginx.conf"
        conf.write_text(f"""
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body; proxy_temp_path {d}/tmp/proxy; fastcgi_temp_path {d}/tmp/fcgi;
    uwsgi_temp_path {d}/tmp/uwsgi; scgi_temp_path {d}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream_port};
            proxy_bind 127.0.0.3;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
        }}
    }}
}}
""")
        p = subprocess.Popen([NGINX, "-c", str(conf), "-e", str(d / "error.log")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        procs.append(p)
        deadline = time.monotonic() + 10
        while True:
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
                return port
            except OSError:
                assert p.poll() is None and time.monotonic() < deadline, p.stderr.read() if p.poll() is not None else "nginx did not start"
                time.sleep(0.05)

    yield start
    for p in procs:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def test_nginx_in_front_names_the_client_and_direct_clients_cannot_forge_it(stack_factory, front_nginx, tmp_path):
    good = make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.2")
    st = stack_factory(run={"command": RUN_COMMAND}, trusted_proxies=["127.0.0.3/32"])
    st.deploy("v1", "--artifact", str(good))
    front = front_nginx(st.listen)

    # through nginx: the app sees the original client (127.0.0.2), and the scheme nginx says
    h = headers_seen(front, "127.0.0.2")
    assert h["x-forwarded-for"] == "127.0.0.2, 127.0.0.3" and h["x-real-ip"] == "127.0.0.2", h
    assert h["x-forwarded-proto"] == "https", h
    # a client forging X-Forwarded-For through nginx: nginx appends the real address; the forged hop,
    # left of the first untrusted one, is dropped
    h = headers_seen(front, "127.0.0.2", {"X-Forwarded-For": "6.6.6.6"})
    assert h["x-forwarded-for"] == "127.0.0.2, 127.0.0.3" and h["x-real-ip"] == "127.0.0.2", h
    # the same client straight to nonstop, forging everything: not believed
    h = headers_seen(st.listen, "127.0.0.2", {"X-Forwarded-For": "6.6.6.6", "X-Real-IP": "6.6.6.6",
                                              "X-Forwarded-Proto": "https", "Forwarded": "for=6.6.6.6"})
    assert h["x-forwarded-for"] == "127.0.0.2" and h["x-real-ip"] == "127.0.0.2", h
    assert h["x-forwarded-proto"] == "http" and "forwarded" not in h, h
