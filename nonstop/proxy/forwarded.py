"""Who the client is behind trusted proxies: ``X-Forwarded-For`` read only from peers that may write it.

A request's peer is the address its TCP connection comes from. Only when the
peer is in ``trusted_proxies`` (a load balancer, a CDN, an nginx in front)
are its ``X-Forwarded-For`` / ``-Proto`` / ``-Host`` believed: the client is
then the rightmost hop of ``X-Forwarded-For`` that is *not* itself trusted
(every hop to its right was added by a proxy we trust; anything to its left
was written by the client and proves nothing). From any other peer those
headers are replaced, never passed on. Pure: no sockets.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

__all__ = ["TrustedProxies"]

_Net = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrustedProxies:
    """The ``trusted_proxies`` networks, and the decisions that depend on them."""

    __slots__ = ("nets", "_cache")

    def __init__(self, cidrs: Iterable[str]) -> None:
        self.nets: tuple[_Net, ...] = tuple(ipaddress.ip_network(c.strip(), strict=False) for c in cidrs)
        self._cache: dict[str, bool] = {}

    def __bool__(self) -> bool:
        return bool(self.nets)

    def trusts(self, addr: str) -> bool:
        """True when ``addr`` (an IP address, v4 or v6, maybe bracketed) is in a trusted network."""
        hit = self._cache.get(addr)
        if hit is None:
            try:
                ip = ipaddress.ip_address(addr.strip().strip("[]"))
            except ValueError:
                hit = False
            else:
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                    ip = ip.ipv4_mapped
                hit = any(ip in n for n in self.nets)
            if len(self._cache) >= 4096:
                self._cache.clear()
            self._cache[addr] = hit
        return hit

    def resolve(self, xff: bytes | None, peer: str) -> tuple[str, bytes]:
        """``(client, chain)`` for a request from a trusted ``peer`` carrying ``xff``.

        ``client`` is the rightmost untrusted hop (or the leftmost hop when all are trusted,
        or ``peer`` when there is no usable hop). ``chain`` is the X-Forwarded-For the app gets:
        the hops from the client on, then the peer — the hops left of the client are dropped,
        since nothing vouches for them.
        """
        hops = [h.strip() for h in xff.decode("latin-1").split(",")] if xff else []
        hops = [h for h in hops if h]
        i = len(hops) - 1
        while i >= 0 and self.trusts(hops[i]):
            i -= 1
        if i < 0:
            i = 0
        if not hops or not _is_ip(hops[i]):
            return peer, peer.encode()
        # hops right of i are trusted, so they parsed as addresses
        return hops[i], ", ".join([*hops[i:], peer]).encode()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
        return True
    except ValueError:
        return False
