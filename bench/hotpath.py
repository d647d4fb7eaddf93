"""The embedded proxy's Python cost per request, without sockets.

Drives the real ``ClientConnection`` and ``UpstreamConnection`` objects with
in-memory transports through the keep-alive fast path (one target, a plain GET,
a Content-Length answer), so a change to the hot path can be weighed in
nanoseconds without the kernel's ~15 µs of loopback I/O in the way.
``bench/proxy.py`` is the real benchmark; this one only explains it.

    .venv/bin/python bench/hotpath.py [--requests 200000] [--rounds 7] [--vary]
    NONSTOP_PURE_PYTHON=1 .venv/bin/python bench/hotpath.py ...   # the Python fallback

``--vary`` makes every request head different (a changing query string), so
the exact-bytes request caches never hit: real traffic, unlike a load tool
repeating one request. Response heads repeat (an upstream's only change from
one response head to the next is usually its Date, once a second).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nonstop.proxy.config import ProxyConfig  # noqa: E402
from nonstop.proxy.downstream import ClientConnection  # noqa: E402
from nonstop.proxy.routes import RouteTable  # noqa: E402
from nonstop.proxy.state import ProxyState  # noqa: E402
from nonstop.proxy.upstream import UpstreamConnection  # noqa: E402


class Transport:
    """What the protocols use of an asyncio transport; written bytes go to ``peer``."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.write = self.out.append

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 40000)}.get(name, default)

    def close(self) -> None:
        raise AssertionError("the hot path closed a connection")

    abort = close

    def pause_reading(self) -> None:
        pass

    resume_reading = pause_reading


class Server:
    def __init__(self, cfg: ProxyConfig, state: ProxyState) -> None:
        self.cfg, self.state, self.now, self.closing = cfg, state, 1000.0, False
        self.connections: set = set()
        self.trusted = None


def run(n: int, vary: bool) -> float:
    cfg = ProxyConfig()
    state = ProxyState(cfg.pool_max_idle)
    state.apply(RouteTable.from_dict({"revision": 1, "releases": [
        {"name": "v1", "weight": 100, "targets": [{"addr": "127.0.0.1:9", "draining": False}]}]}))
    server = Server(cfg, state)
    target = state.targets["127.0.0.1:9"]
    client = ClientConnection(server)
    ct = Transport()
    client.connection_made(ct)
    up = UpstreamConnection(target)
    ut = Transport()
    up.connection_made(ut)
    target.pool.put(up, server.now)
    if vary:
        reqs = [b"GET /item?id=%d HTTP/1.1\r\nHost: app\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n" % i
                for i in range(1000)]
    else:
        reqs = [b"GET / HTTP/1.1\r\nHost: app\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n"]
    resps = [b"HTTP/1.1 200 OK\r\nServer: backend\r\nDate: Wed, 25 Nov 2026 12:00:00 GMT\r\n"
             b"Content-Type: text/plain\r\nContent-Length: 3\r\n\r\nok\n"]
    k = len(reqs)
    c_in, u_in = client.data_received, up.data_received
    uo, co = ut.out, ct.out
    resp = resps[0]
    t0 = time.perf_counter()
    for i in range(n):
        c_in(reqs[i % k])
        u_in(resp)
    dt = time.perf_counter() - t0
    assert len(uo) == n and len(co) == n, (len(uo), len(co))
    assert co[-1].endswith(b"ok\n") and b"X-Forwarded-For" in uo[-1]
    return dt / n * 1e9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--vary", action="store_true", help="every request head different: no cache hits")
    args = ap.parse_args()
    gc.freeze()
    gc.set_threshold(20000, 50, 100)  # as the proxy process sets it
    asyncio.set_event_loop(asyncio.new_event_loop())
    runs = [run(args.requests, args.vary) for _ in range(args.rounds)]
    # the minimum is the figure (as timeit advises: slower rounds measure the machine's other load, not the code)
    from nonstop.proxy import build

    print(f"{min(runs):.0f} ns per request (best of {args.rounds}; median {statistics.median(runs):.0f}), "
          f"{'every request head different' if args.vary else 'one request repeated'}; hot path: {build.summary()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
