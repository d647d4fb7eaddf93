"""The proxy's settings: one object, built by the command line (or a test) and passed everywhere."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ProxyConfig:
    """Every knob of one proxy process; durations in seconds, sizes in bytes."""

    listen: str = "127.0.0.1:8080"
    upstreams: list[str] = field(default_factory=list)
    admin_socket: str | None = None
    routes_file: str | None = None
    pid_file: str | None = None
    hold_timeout: float = 10.0
    connect_timeout: float = 2.0
    read_timeout: float = 60.0  # upstream response head, and any gap in a body, either way
    idle_timeout: float = 75.0  # a client keep-alive connection with no request
    header_timeout: float = 10.0  # from a request's first byte to the end of its head (slowloris)
    max_body: int | None = None
    max_header_bytes: int = 32 * 1024
    shutdown_timeout: float = 30.0
    idle_grace: float = 1.0  # on stop, idle keep-alive connections get this long to send one more request
    pool_idle_timeout: float = 4.0  # below common upstream keep-alive timeouts (uvicorn, Node: 5 s)
    pool_max_idle: int = 256
    backlog: int = 2048
    takeover: bool = False
    workers: int = 1  # > 1: a supervisor runs this many worker processes on one listening socket
    worker: bool = False  # this process is one of those workers
    tick: float = 0.1  # resolution of every timeout above
    trusted_proxies: list[str] = field(default_factory=list)  # CIDRs whose X-Forwarded-* are believed
