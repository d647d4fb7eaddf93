"""The sd_listen_fds protocol, with sockets passed by the real ``systemd-socket-activate``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nonstop.proxy import listenfds
from tests.e2e.helpers import stack_ports

ROOT = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import fcntl, json, os, sys
    from nonstop.proxy import listenfds
    names = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")
    before = {k: os.environ.get(k) for k in names}
    socks = listenfds.listen_fds()
    http, https = sys.argv[1], sys.argv[2]
    report = {
        "pid": os.getpid(),
        "before": before,
        "after": {k: os.environ.get(k) for k in names},
        "socks": [{"name": s.name, "fd": s.fd, "addr": s.address(),
                   "cloexec": bool(fcntl.fcntl(s.fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC)} for s in socks],
        "for_http": listenfds.for_address(socks, http).name,
        "for_https": listenfds.for_address(socks, https).name,
        "for_other": listenfds.for_address(socks, "127.0.0.1:1"),
        "named": sorted(listenfds.named(socks)),
    }
    conn, _ = listenfds.named(socks)["http"].accept()
    conn.sendall(json.dumps(report).encode())
    conn.close()
""")


def _read_all(port: int, timeout: float = 10.0) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            break
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    with s:
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_sockets_from_systemd_socket_activate() -> None:
    activate = shutil.which("systemd-socket-activate")
    assert activate, "systemd-socket-activate (Debian's systemd package) is needed"
    p_http, p_https = stack_ports(2)
    http, https = f"127.0.0.1:{p_http}", f"127.0.0.1:{p_https}"
    proc = subprocess.Popen(
        [activate, "-l", http, "-l", https, "--fdname=http:https", sys.executable, "-c", CHILD, http, https],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        report = json.loads(_read_all(p_http))
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert report["before"] == {"LISTEN_PID": str(report["pid"]), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http:https"}
    assert report["after"] == {"LISTEN_PID": None, "LISTEN_FDS": None, "LISTEN_FDNAMES": None}
    assert report["socks"] == [
        {"name": "http", "fd": 3, "addr": http, "cloexec": True},
        {"name": "https", "fd": 4, "addr": https, "cloexec": True},
    ]
    assert (report["for_http"], report["for_https"], report["for_other"]) == ("http", "https", None)
    assert report["named"] == ["http", "https"]


def test_sockets_meant_for_another_process_are_left_alone() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http:https"}
    assert listenfds.listen_fds(env) == []
    assert env == {}  # unset all the same, so no child of ours takes them for its own
    assert listenfds.listen_fds({}) == []


def test_names_that_do_not_add_up_are_refused() -> None:
    env = {"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "2", "LISTEN_FDNAMES": "http"}
    with pytest.raises(listenfds.ListenFdsError, match="names 1 sockets but LISTEN_FDS is 2"):
        listenfds.listen_fds(env)
    with pytest.raises(listenfds.ListenFdsError, match="not a number"):
        listenfds.listen_fds({"LISTEN_PID": str(os.getpid()), "LISTEN_FDS": "x"})


def test_a_descriptor_that_is_not_listening_is_refused() -> None:
    script = textwrap.dedent("""
        import os, socket
        from nonstop.proxy import listenfds
        s = socket.socket()                  # bound nowhere, not listening
        os.dup2(s.fileno(), 3)
        os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS="1", LISTEN_FDNAMES="http")
        try:
            listenfds.listen_fds()
        except listenfds.ListenFdsError as e:
            print(e.message)
    """)
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert "file descriptor 3 (http) from systemd is not a listening stream socket" in out.stdout, out.stderr


def test_for_address_matches_dual_stack_and_names() -> None:
    with socket.create_server(("::", 0), family=socket.AF_INET6, dualstack_ipv6=True) as dual, \
            socket.create_server(("127.0.0.1", 0)) as v4:
        socks = [listenfds.Inherited("http", dual), listenfds.Inherited("https", v4)]
        dport, vport = dual.getsockname()[1], v4.getsockname()[1]
        assert listenfds.for_address(socks, f"0.0.0.0:{dport}").name == "http"
        assert listenfds.for_address(socks, f"[::]:{dport}").name == "http"
        assert listenfds.for_address(socks, f"localhost:{vport}").name == "https"
        assert listenfds.for_address(socks, f"127.0.0.2:{vport}") is None
        assert listenfds.for_address(socks, f"127.0.0.1:{dport}") is None
        with pytest.raises(listenfds.ListenFdsError, match="two sockets named"):
            listenfds.named([listenfds.Inherited("http", dual), listenfds.Inherited("http", v4)])
