"""Measure requests lost per nginx reload under keep-alive load (the figure docs/routers.md reports).

    PYTHONPATH=. .venv/bin/python tests/routers/measure_reload.py [--reloads 10] [--clients 20]
                                    [--keepalive 75] [--check | --retry] [--pause S] [--router nginx|haproxy]

A managed nginx in a temp dir, two backends; ``--clients`` keep-alive clients
send GET / back to back while the router flips v1 <-> v2 ``--reloads`` times
(one apply = one reload, every second). Prints failures, failures per reload.
``--keepalive 0`` runs nginx with ``keepalive_timeout 0`` (no client keep-alive).
``--router haproxy`` does the same with the managed HAProxy (runtime API, no reload).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from routerkit import backends, load, make_cfg, wait_serving  # noqa: E402

from nonstop.agent.routers.base import Release, RouteTable, Target  # noqa: E402
from nonstop.agent.routers.haproxy import HaproxyRouter  # noqa: E402
from nonstop.agent.routers.nginx import NginxRouter  # noqa: E402


async def measure(
    reloads: int, clients: int, keepalive: float, retry: bool, interval: float = 1.0, kind: str = "nginx",
    pause: float = 0.0,
    check: bool = False,
) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="nonstop-reload-"))
    if kind == "nginx":
        cfg = make_cfg(tmp, {"type": "nginx", "worker_shutdown_timeout": "10s"})
        router = NginxRouter(cfg, tmp / ".nonstop")
        router.client_keepalive_timeout = keepalive
    else:
        cfg = make_cfg(tmp, {"type": "haproxy"})
        router = HaproxyRouter(cfg, tmp / ".nonstop")
    with backends("v1", "v2") as (b1, b2):
        await router.start()
        try:
            r1 = RouteTable(releases=(Release("v1", 100, (Target(b1.addr),)),))
            r2 = RouteTable(releases=(Release("v2", 100, (Target(b2.addr),)),))
            await router.apply(r1)
            await wait_serving(cfg.listen)
            seconds = 1.0 + reloads * interval + 0.5
            task = asyncio.create_task(load(cfg.listen, seconds, clients=clients, retry=retry, check=check, pause=pause))
            await asyncio.sleep(1.0)
            t0 = time.monotonic()
            switch_ms = []
            for i in range(reloads):
                s0 = time.monotonic()
                await router.apply(r2 if i % 2 == 0 else r1)
                switch_ms.append((time.monotonic() - s0) * 1000)
                await asyncio.sleep(max(0.0, t0 + (i + 1) * interval - time.monotonic()))
            res = await task
        finally:
            await router.stop()
    return {
        "router": kind,
        "apply_ms_median": round(sorted(switch_ms)[len(switch_ms) // 2]),
        "clients": clients,
        "pause_between_requests": pause,
        "keepalive_timeout": keepalive,
        "client": "retry" if retry else "check" if check else "naive",
        "reloads": reloads,
        "requests": res.total,
        "failed": res.failed,
        "failed_per_reload": round(res.failed / reloads, 2),
        "retried": res.retried,
        "errors": dict(res.errors),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reloads", type=int, default=10)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--keepalive", type=float, default=75.0)
    ap.add_argument("--retry", action="store_true", help="client checks idle connections and retries (see routerkit)")
    ap.add_argument("--check", action="store_true", help="client checks idle connections, no retry")
    ap.add_argument("--pause", type=float, default=0.0, help="think time between a client's requests")
    ap.add_argument("--router", choices=["nginx", "haproxy"], default="nginx")
    a = ap.parse_args()
    print(asyncio.run(measure(a.reloads, a.clients, a.keepalive, a.retry, kind=a.router, pause=a.pause, check=a.check)))


if __name__ == "__main__":
    main()
