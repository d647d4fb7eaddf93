"""Measure requests lost per nginx reload under keep-alive load (the figure docs/routers.md reports).

    PYTHONPATH=. .venv/bin/python tests/routers/measure_reload.py [--reloads 10] [--clients 20]
                                                                  [--keepalive 75] [--retry]

A managed nginx in a temp dir, two backends; ``--clients`` keep-alive clients
send GET / back to back while the router flips v1 <-> v2 ``--reloads`` times
(one apply = one reload, every second). Prints failures, failures per reload.
``--keepalive 0`` runs nginx with ``keepalive_timeout 0`` (no client keep-alive).
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

from nonstop.agent.routers.base import ReleaseRoute, Routing, Target  # noqa: E402
from nonstop.agent.routers.nginx import NginxRouter  # noqa: E402


async def measure(reloads: int, clients: int, keepalive: float, retry: bool, interval: float = 1.0) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="nonstop-reload-"))
    cfg = make_cfg(tmp, {"type": "nginx", "worker_shutdown_timeout": "10s"})
    router = NginxRouter(cfg, tmp / ".nonstop")
    router.client_keepalive_timeout = keepalive
    with backends("v1", "v2") as (b1, b2):
        await router.start()
        try:
            r1 = Routing((ReleaseRoute("v1", 100, (Target(b1.addr),)),))
            r2 = Routing((ReleaseRoute("v2", 100, (Target(b2.addr),)),))
            await router.apply(r1)
            await wait_serving(cfg.listen)
            seconds = 1.0 + reloads * interval + 0.5
            task = asyncio.create_task(load(cfg.listen, seconds, clients=clients, retry=retry))
            await asyncio.sleep(1.0)
            t0 = time.monotonic()
            for i in range(reloads):
                await router.apply(r2 if i % 2 == 0 else r1)
                await asyncio.sleep(max(0.0, t0 + (i + 1) * interval - time.monotonic()))
            res = await task
        finally:
            await router.stop()
    return {
        "clients": clients,
        "keepalive_timeout": keepalive,
        "retrying_client": retry,
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
    ap.add_argument("--retry", action="store_true")
    a = ap.parse_args()
    print(asyncio.run(measure(a.reloads, a.clients, a.keepalive, a.retry)))


if __name__ == "__main__":
    main()
