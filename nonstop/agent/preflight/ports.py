"""Addresses nonstop will listen on: free now, or already held by this app's own processes.

A port counts as ours when the process that listens on it is the state dir's
agent, router or one of its instances, or a descendant of one (an instance's
shell runs the app): when the agent restarts while its proxy and instances
still serve, their ports are in use by them, and that is how it should be.
"""

from __future__ import annotations

import errno
import os
import socket

import psutil

from nonstop.agent.preflight.base import Env, Problem

__all__ = ["listen", "dashboard", "run_ports", "busy_run_ports", "run_ports_problem", "distinct", "bind_error", "holder"]


def _addr(value: str, field: str = "") -> tuple[str, int]:
    """(host, port) of a HOST:PORT the config validated (an empty host: every address)."""
    host, _, port = value.rpartition(":")
    return (host.strip("[]") or "0.0.0.0"), int(port)


def bind_error(host: str, port: int) -> OSError | None:
    """The error a listening socket on (host, port) would get now; None when it could bind."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        return e
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT leftovers do not count
        s.bind((host, port))
        return None
    except OSError as e:
        return e
    finally:
        s.close()


def holder(port: int) -> psutil.Process | None:
    """The process listening on TCP ``port`` (any address), when this user may see it."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            try:
                return psutil.Process(c.pid)
            except psutil.Error:
                return None
    return None


def _who(p: psutil.Process | None) -> str:
    if p is None:
        return "another program"
    try:
        cmd = " ".join(p.cmdline()) or p.name()
    except psutil.Error:
        return f"another program (pid {p.pid})"
    return f"another program (pid {p.pid}: {cmd[:120]})"


def _address_problem(env: Env, field: str, value: str, what: str, owner: int | None) -> list[Problem]:
    """``value`` (HOST:PORT) can be listened on, or is held by this app's ``owner`` process (or one of ours)."""
    host, port = _addr(value, field)
    if port == 0:
        return []  # any free port, picked at bind
    err = bind_error(host, port)
    if err is None:
        return []
    if err.errno == errno.EADDRINUSE:
        p = holder(port)
        if env.owned.holds(p.pid if p else None) or (p is None and owner is not None):
            return []  # this app's own process (its proxy after an agent restart, ...)
        return [env.problem(field, f"{value} is in use by {_who(p)}, so {what} cannot listen there; stop it, "
                                   "or choose another port")]
    if err.errno == errno.EACCES:
        return [env.problem(field, f"{value}: port {port} is below 1024 and needs root (or CAP_NET_BIND_SERVICE) for "
                                   f"{what}; choose a port above 1023")]
    if err.errno == errno.EADDRNOTAVAIL:
        return [env.problem(field, f"{value}: {host} is not an address of this machine")]
    return [env.problem(field, f"{value}: {what} cannot listen there: {err.strerror or err}")]


def listen(env: Env) -> list[Problem]:
    """The public address (and ``tls.listen``) the router listens on: managed routers only (an external
    nginx or HAProxy already listens where it does)."""
    cfg = env.cfg
    r = cfg.router
    if getattr(r, "mode", "managed") == "external":
        return []
    if os.environ.get("LISTEN_FDS") or os.environ.get("NONSTOP_LISTEN_FDS"):
        return []  # the listening socket is handed in, bound already (systemd, a supervisor): not ours to bind
    owner_file = {"embedded": "proxy.pid", "nginx": "nginx/nginx.pid", "haproxy": "haproxy/haproxy.pid"}[r.type]
    owner = env.owned.routers.get(owner_file)
    what = {"embedded": "the proxy", "nginx": "nginx", "haproxy": "HAProxy"}[r.type]
    out = _address_problem(env, "listen", cfg.listen, what, owner)
    if cfg.tls is not None:
        out += _address_problem(env, "tls.listen", cfg.tls.listen, what, owner)
    return out


def dashboard(env: Env) -> list[Problem]:
    """``dashboard.listen``: loopback (unless allowed), and free, or this app's agent's own."""
    d = env.cfg.dashboard
    if not d.enabled:
        return []
    from nonstop.agent.dashboard import allow_remote, is_loopback

    host, _port = _addr(d.listen, "dashboard.listen")
    if not is_loopback(host) and not allow_remote(env.cfg):
        return [env.problem("dashboard.listen", f"{d.listen} is not a loopback address; the dashboard shows your "
                                                "deployments to anyone who can reach it. Serve it on 127.0.0.1, or "
                                                "set NONSTOP_DASHBOARD_ALLOW_REMOTE=1 in the agent's environment")]
    return _address_problem(env, "dashboard.listen", d.listen, "the dashboard", env.owned.agent)


def busy_run_ports(env: Env) -> list[tuple[int, psutil.Process | None]]:
    """The ports of ``run.ports`` something listens on that is not this app's own process."""
    from nonstop.agent.runtimes.process import port_in_use

    busy = []
    for port in env.cfg.run.port_list:
        if not port_in_use(port):
            continue
        p = holder(port)
        if env.owned.holds(p.pid if p else None) or (p is None and port in env.owned.instances):
            continue
        busy.append((port, p))
    return busy


def run_ports_problem(env: Env, busy: list[tuple[int, psutil.Process | None]]) -> list[Problem]:
    if not busy:
        return []
    shown = "; ".join(f"{port} by {_who(p)}" for port, p in busy)
    return [env.problem("run.ports", f"{len(busy)} of the instance ports {env.cfg.run.ports} in use: {shown}. "
                                     "An instance started there would fail (or another program would answer its "
                                     "health checks); stop it, or choose other ports")]


def run_ports(env: Env) -> list[Problem]:
    """``run.ports``: each free, or held by this app's own instance on it."""
    return run_ports_problem(env, busy_run_ports(env))


def distinct(env: Env) -> list[Problem]:
    """The dashboard's port is none of the others (``listen``, ``tls.listen``, ``run.ports``)."""
    cfg = env.cfg
    if not cfg.dashboard.enabled or cfg.run.runtime == "kubernetes":
        return []
    dport = _addr(cfg.dashboard.listen, "dashboard.listen")[1]
    if dport == 0:
        return []
    if dport in cfg.run.port_list:
        return [env.problem("dashboard.listen", f"port {dport} is also in run.ports")]
    if dport == cfg.listen_addr[1]:
        return [env.problem("dashboard.listen", f"port {dport} is also the listen port")]
    if cfg.tls is not None and dport == _addr(cfg.tls.listen, "tls.listen")[1]:
        return [env.problem("dashboard.listen", f"port {dport} is also the tls.listen port")]
    return []
