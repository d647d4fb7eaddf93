"""The proxy's settings: one object, each setting declared once (default, command-line flag, help).

``ProxyConfig`` is built by ``nonstop proxy`` (its click options are generated
from these fields, ``command.py``), by the agent's embedded router (from
``nonstop.yml``) and by tests; ``to_argv()`` turns it back into the command
line that starts a proxy process with exactly these settings (the agent, and
the workers supervisor for its workers). Durations are seconds, sizes bytes.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from nonstop.proxy.pool import MAX_IDLE

__all__ = ["ProxyConfig", "CertFiles", "setting"]


def setting(default: Any, flag: str | None, help: str = "", *, kind: str = "str", hidden: bool = False) -> Any:
    """A field with its command-line form. ``kind``: str, address0 (HOST:PORT, port 0 allowed), upstream
    (HOST:PORT, repeatable), duration, int, count (1..64), bool, list (repeatable), path (a file), dir.
    ``flag`` None: not on the command line."""
    meta = {"flag": flag, "help": help, "kind": kind, "hidden": hidden}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class CertFiles:
    """A certificate chain and key, and the config field they came from (named in errors)."""

    field: str
    cert: str
    key: str


@dataclass
class ProxyConfig:
    """Every knob of one proxy process."""

    listen: str = setting("127.0.0.1:8080", "--listen", "HOST:PORT to serve (port 0: any free port)", kind="address0")
    upstreams: list[str] = setting([], "--upstream", "static table: one release 'static' (repeat for more)", kind="upstream")
    admin_socket: str | None = setting(None, "--admin-socket", "Unix socket of the admin API (mode 0600)", kind="path")
    routes_file: str | None = setting(None, "--routes-file", "routes.json: saved on every change, restored on start", kind="path")
    pid_file: str | None = setting(None, "--pid-file", kind="path")
    hold_timeout: float = setting(10.0, "--hold-timeout", "a request waits this long for a usable target (then 503)", kind="duration")
    connect_timeout: float = setting(2.0, "--connect-timeout", kind="duration")
    read_timeout: float = setting(60.0, "--read-timeout", "upstream response head / body gaps", kind="duration")
    idle_timeout: float = setting(75.0, "--idle-timeout", "idle client keep-alive connection", kind="duration")
    header_timeout: float = setting(10.0, "--header-timeout", "client request head (408)", kind="duration")
    max_body: int | None = setting(None, "--max-body", "request body limit in bytes (413)", kind="int")
    max_header_bytes: int = setting(32 * 1024, "--max-header-bytes", "request head limit (431)", kind="int")
    shutdown_timeout: float = setting(30.0, "--shutdown-timeout", kind="duration")
    idle_grace: float = setting(1.0, "--idle-grace", "on stop, idle keep-alive connections get this long to send one more request", kind="duration")
    pool_idle_timeout: float = setting(4.0, None)  # below common upstream keep-alive timeouts (uvicorn, Node: 5 s)
    pool_max_idle: int = setting(MAX_IDLE, None)  # a safety bound: the pool is sized by demand (pool.py)
    backlog: int = setting(2048, None)
    takeover: bool = setting(False, "--takeover", "take the listening sockets from the proxy on --admin-socket, then retire it", kind="bool")
    workers: int = setting(1, "--workers", "worker processes sharing the listening sockets (a supervisor answers the admin API for all)", kind="count")
    worker: bool = setting(False, "--worker", "internal: run as one worker of a supervisor", kind="bool", hidden=True)
    trusted_proxies: list[str] = setting([], "--trusted-proxy", "a peer (CIDR) whose X-Forwarded-For/-Proto/-Host are believed (repeat for more)", kind="list")
    # HTTPS (docs/https.md)
    tls_listen: str | None = setting(None, "--tls-listen", "HOST:PORT to serve HTTPS on", kind="address0")
    tls_certs: list[str] = setting([], "--tls-cert", "a certificate chain (PEM); repeat with --tls-key: chosen by SNI", kind="list")
    tls_keys: list[str] = setting([], "--tls-key", "the private key of the --tls-cert in the same position", kind="list")
    tls_fields: list[str] = setting([], "--tls-field", "the config field each --tls-cert came from (for errors)", kind="list", hidden=True)
    redirect_http: bool = setting(False, "--redirect-http", "plain-HTTP requests get 308 to https (not the ACME challenges)", kind="bool")
    hsts: float | None = setting(None, "--hsts", "Strict-Transport-Security max-age on HTTPS responses", kind="duration")
    acme_challenges: str | None = setting(None, "--acme-challenges", "folder of ACME HTTP-01 answers served on the plain listener", kind="dir")
    tick: float = setting(0.1, None)  # resolution of every timeout above

    def certificates(self) -> list[CertFiles]:
        """The --tls-cert / --tls-key pairs, each with the config field it came from (what errors name)."""
        if len(self.tls_certs) != len(self.tls_keys):
            raise ValueError(f"--tls-cert given {len(self.tls_certs)} time(s) but --tls-key {len(self.tls_keys)}")
        names = list(self.tls_fields) + [
            "tls" if i == 0 else f"tls.certificates[{i - 1}]" for i in range(len(self.tls_fields), len(self.tls_certs))
        ]
        return [CertFiles(n, c, k) for n, c, k in zip(names, self.tls_certs, self.tls_keys)]

    def to_argv(self, *, skip: tuple[str, ...] = ()) -> list[str]:
        """The command-line arguments that make a proxy with these settings (defaults left out)."""
        argv: list[str] = []
        for f in fields(self):
            flag = f.metadata.get("flag")
            if not flag or f.name in skip:
                continue
            value = getattr(self, f.name)
            default = f.default_factory() if f.default_factory is not MISSING else f.default  # type: ignore[misc]
            if value == default:
                continue
            kind = f.metadata["kind"]
            if kind == "bool":
                if value:
                    argv.append(flag)
            elif isinstance(value, list):
                for v in value:
                    argv += [flag, str(v)]
            else:
                argv += [flag, repr(value) if isinstance(value, float) else str(value)]
        return argv

    @classmethod
    def cli_fields(cls) -> list[Any]:
        """The fields that are command-line options, in declaration order."""
        return [f for f in fields(cls) if f.metadata.get("flag")]
