"""systemd units for one app, rendered from its config (pure: no file is read or written here).

``spec_for(cfg, user=…, group=…, exec_argv=…)`` decides what the units say;
``render(spec)`` turns that into files:

- ``nonstop-<app>.service``: the agent in the foreground (``nonstop up``
  without ``--detach``), restarted on failure, after the network is online,
  as ``User=``. ``SIGTERM`` (``systemctl stop``, a shutdown) is ``nonstop
  down``: drain, then stop the instances and the proxy. ``KillMode=process``
  keeps the proxy and the instances serving when only the agent dies; the
  restarted agent adopts them (a crash of the control plane never drops
  traffic).
- ``nonstop-<app>.socket`` (``listen``, ``FileDescriptorName=http``) and,
  with ``tls``, ``nonstop-<app>-https.socket`` (``tls.listen``,
  ``FileDescriptorName=https``): systemd binds the public addresses, so 80
  and 443 need no root in nonstop, and holds them while the service
  restarts, so a restarted agent or proxy takes the same sockets
  (``LISTEN_FDS``, see ``nonstop.proxy.listenfds``). One unit per name:
  ``FileDescriptorName=`` names every socket of its unit. ``systemctl reload``
  (``SIGHUP``) upgrades in place: the agent re-executes the installed code with
  the same pid and sockets, and replaces the proxy by a socket hand-over.

Only the embedded proxy takes its sockets from systemd; with nginx or
HAProxy (which bind for themselves) and on Kubernetes there is no socket
unit.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field

from nonstop.errors import ConfigError

__all__ = ["ServiceSpec", "SocketSpec", "spec_for", "render", "unit_names", "MARKER"]

MARKER = "# Written by `nonstop service install`; `nonstop service uninstall` removes it."


@dataclass(frozen=True)
class SocketSpec:
    """One socket unit: the address systemd binds and the name the service receives it under."""

    unit: str
    name: str  # FileDescriptorName: http | https
    address: str  # as systemd writes it: 0.0.0.0:443, [::]:443


@dataclass(frozen=True)
class ServiceSpec:
    """Everything the units of one app say, decided from its config and where nonstop is installed."""

    app: str
    service: str
    config: str  # absolute path of nonstop.yml
    workdir: str
    user: str
    group: str
    exec_argv: tuple[str, ...]
    sockets: tuple[SocketSpec, ...]
    stop_timeout: int  # seconds systemd waits for `down` before it kills
    bind_capability: bool  # nginx/HAProxy run by nonstop bind a port below 1024 themselves
    writable: tuple[str, ...] = field(default=())  # paths the hardening must leave writable


def unit_names(app: str) -> tuple[str, str, str]:
    """The service, http socket and https socket unit names of ``app`` (whichever exist)."""
    return f"nonstop-{app}.service", f"nonstop-{app}.socket", f"nonstop-{app}-https.socket"


def spec_for(cfg, *, user: str, group: str, uid: int, exec_argv: list[str]) -> ServiceSpec:
    """The units for ``cfg`` (a ``nonstop.config.Config``) run as ``user``; raises ``ConfigError``."""
    service, http_unit, https_unit = unit_names(cfg.app)
    sockets: list[SocketSpec] = []
    embedded = cfg.router.type == "embedded" and cfg.run.runtime != "kubernetes"
    if embedded:
        sockets.append(SocketSpec(http_unit, "http", _systemd_address(cfg.listen, "listen", cfg.source)))
        if cfg.tls is not None:
            sockets.append(SocketSpec(https_unit, "https", _systemd_address(cfg.tls.listen, "tls.listen", cfg.source)))
    low_port = cfg.run.runtime != "kubernetes" and cfg.listen_addr[1] < 1024
    bind_cap = (not embedded) and low_port and uid != 0 and getattr(cfg.router, "mode", "managed") == "managed"
    writable = [str(cfg.base_dir), str(cfg.state_path)]
    upstream_file = getattr(cfg.router, "upstream_file", None)
    if upstream_file:  # nginx external: nonstop rewrites this file by renaming over it
        writable.append(str(cfg.path(upstream_file).parent))
    for p in writable + [cfg.source or "", *exec_argv]:
        if any(ord(ch) < 32 for ch in p):
            raise ConfigError(f"a path with a control character cannot go into a unit file: {p!r}", file=cfg.source)
    return ServiceSpec(
        app=cfg.app,
        service=service,
        config=str(cfg.source),
        workdir=str(cfg.base_dir),
        user=user,
        group=group,
        exec_argv=tuple(exec_argv),
        sockets=tuple(sockets),
        stop_timeout=int(cfg.drain_timeout + cfg.run.stop_timeout + 30),
        bind_capability=bind_cap,
        writable=tuple(dict.fromkeys(writable)),
    )


def render(spec: ServiceSpec) -> dict[str, str]:
    """``{unit file name: contents}``."""
    units = {spec.service: _service(spec)}
    for s in spec.sockets:
        units[s.unit] = _socket(spec, s)
    return units


def _service(spec: ServiceSpec) -> str:
    socket_units = " ".join(s.unit for s in spec.sockets)
    unit = [
        "[Unit]",
        f"Description=nonstop agent of {spec.app} (zero-downtime deploys)",
        "Wants=network-online.target",
        "After=network-online.target" + (f" {socket_units}" if socket_units else ""),
    ]
    if socket_units:
        unit.append(f"Requires={socket_units}")
    unit += ["StartLimitIntervalSec=60", "StartLimitBurst=5"]
    svc = [
        "[Service]",
        "Type=exec",
        f"User={spec.user}",
        f"Group={spec.group}",
        f"WorkingDirectory={_escape(spec.workdir)}",
        "Environment=PYTHONUNBUFFERED=1",
        "ExecStart=" + " ".join(_quote(a) for a in spec.exec_argv),
    ]
    if socket_units:
        svc.append(f"Sockets={socket_units}")
    svc += [
        "# `systemctl reload` (after upgrading nonstop): the agent starts again in place from the code",
        "# installed now, and a new proxy takes the sockets over from the running one: no gap.",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "Restart=on-failure",
        "RestartSec=2s",
        "# SIGTERM is `nonstop down`: drain, stop the instances and the proxy, then exit.",
        "# Only the agent is signalled: if it crashes, the proxy and the instances keep",
        "# serving and the restarted agent adopts them.",
        "KillMode=process",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={spec.stop_timeout}s",
        "LimitNOFILE=65536",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "ProtectSystem=full",
        "ReadWritePaths=" + " ".join(_quote_path("-" + p) for p in spec.writable),
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectControlGroups=yes",
        "RestrictSUIDSGID=yes",
        "RestrictRealtime=yes",
        "LockPersonality=yes",
    ]
    if spec.bind_capability:
        svc += ["# nginx/HAProxy started by nonstop bind a port below 1024 themselves",
                "AmbientCapabilities=CAP_NET_BIND_SERVICE"]
    install = ["[Install]", "WantedBy=multi-user.target"]
    return "\n".join([MARKER, *unit, "", *svc, "", *install]) + "\n"


def _socket(spec: ServiceSpec, s: SocketSpec) -> str:
    return "\n".join([
        MARKER,
        "[Unit]",
        f"Description=nonstop {s.name} socket of {spec.app} ({s.address})",
        "",
        "[Socket]",
        f"ListenStream={s.address}",
        f"FileDescriptorName={s.name}",
        f"Service={spec.service}",
        "Backlog=2048",
        "# the address may come up after this unit starts (a static IP on a slow interface)",
        "FreeBind=yes",
        "",
        "[Install]",
        "WantedBy=sockets.target",
    ]) + "\n"


def _systemd_address(value: str, field: str, source: str | None) -> str:
    host, _, port = value.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"systemd binds IP addresses, not names: write the address {host!r} stands for (like 127.0.0.1:{port})",
            file=source, field=field,
        ) from None
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _escape(text: str) -> str:
    """A unit file value: specifiers (``%``) written literally."""
    return text.replace("%", "%%")


def _quote_path(path: str) -> str:
    """One entry of a path list (``ReadWritePaths=``): quoted when it holds a space or a quote."""
    path = _escape(path)
    if _PLAIN.fullmatch(path):
        return path
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


_PLAIN = re.compile(r"[A-Za-z0-9_@%+=:,./-]+")


def _quote(arg: str) -> str:
    """One ExecStart argument: specifiers and ``$`` literal, quoted when it holds anything else."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if _PLAIN.fullmatch(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
