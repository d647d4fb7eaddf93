"""The public listening sockets, held by the agent for its whole life (embedded router).

A proxy that is killed takes its copy of the listening sockets with it, but
not the kernel's: while another process holds them, connections keep arriving
in the backlog and wait there, and the proxy the agent starts next accepts
them (DESIGN §5: "a crashed proxy loses no connection that was not yet
accepted"). So the agent holds a copy of each and hands them to every proxy it
starts (``NONSTOP_LISTEN_FDS`` + ``pass_fds``). Where the sockets come from,
first found:

1. systemd (socket activation, ``LISTEN_FDS``): the socket units own
   ``listen`` and ``tls.listen``, so 80/443 need no root;
2. a proxy already running for this state dir (the agent restarted):
   copies from it (``POST /share`` on its admin socket);
3. bound here.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

from nonstop.config import Config
from nonstop.errors import ConfigError, ProxyError
from nonstop.proxy import handoff
from nonstop.proxy.listenfds import for_address, listen_fds

log = logging.getLogger("nonstop.agent")

__all__ = ["ListeningSockets"]


class ListeningSockets:
    """Owns the agent's copies of the public listening sockets, by name (``http``, ``https``)."""

    def __init__(self, socks: dict[str, socket.socket], source: str) -> None:
        self.socks = socks
        self.source = source  # "systemd", "proxy", "bound"

    @classmethod
    def obtain(cls, cfg: Config, proxy_admin: Path, proxy_alive: bool) -> "ListeningSockets":
        wanted = {"http": cfg.listen}
        if cfg.tls is not None:
            wanted["https"] = cfg.tls.listen
        passed = listen_fds()
        if passed:
            socks = {}
            for name, addr in wanted.items():
                found = for_address(passed, addr)
                if found is None:
                    raise ConfigError(
                        f"systemd passed no socket bound to {addr} (it passed {', '.join(p.address() for p in passed)}); "
                        "reinstall the units (`nonstop service install`) after changing it",
                        file=cfg.source, field="listen" if name == "http" else "tls.listen",
                    )
                socks[name] = found.sock
            for p in passed:
                if all(p.sock is not s for s in socks.values()):
                    p.sock.close()
            return cls(socks, "systemd")
        if proxy_alive:
            try:
                socks, _ = handoff.receive(str(proxy_admin), "/share")
            except ProxyError as e:
                log.warning("could not take the listening sockets from the running proxy: %s", e.message)
            else:
                if set(socks) >= set(wanted):
                    return cls(socks, "proxy")
                for s in socks.values():
                    s.close()
        socks = {}
        try:
            for name, addr in wanted.items():
                try:
                    socks[name] = handoff.bind(addr, 2048)
                except ProxyError as e:
                    raise ConfigError(e.message, file=cfg.source, field="listen" if name == "http" else "tls.listen") from None
        except BaseException:
            for s in socks.values():
                s.close()
            raise
        return cls(socks, "bound")

    def env(self) -> tuple[str, tuple[int, ...]]:
        """``NONSTOP_LISTEN_FDS`` and the descriptors to pass to a proxy process."""
        return handoff.env_value(self.socks)

    def close(self) -> None:
        for s in self.socks.values():
            s.close()
        self.socks = {}
