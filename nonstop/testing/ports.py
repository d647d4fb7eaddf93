"""Free loopback ports from a fixed range, for tests, benchmarks and the demo.

Below the kernel's ephemeral range (32768-60999): no port-0 bind or outgoing connection elsewhere can
take a port an instance has just released, so a dead instance's port is never picked up by a neighbour.
"""

from __future__ import annotations

import random
import socket

__all__ = ["free_ports"]


def free_ports(n: int, lo: int, hi: int) -> list[int]:
    """``n`` distinct ports in [lo, hi] that are free on 127.0.0.1 now."""
    rng, chosen = random.Random(), []
    for _ in range(20 * (hi - lo + 1)):
        port = rng.randint(lo, hi)
        if port in chosen:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        chosen.append(port)
        if len(chosen) == n:
            return chosen
    raise RuntimeError(f"no {n} free ports in {lo}-{hi}")
