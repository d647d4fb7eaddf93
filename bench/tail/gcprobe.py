"""``nonstop proxy`` with two probes, for tail hunting (issue 16): every GC pause, and the event loop's lag.

    .venv/bin/python bench/tail/gcprobe.py --listen 127.0.0.1:8080 --upstream 127.0.0.1:8081   # then wrk
    PROBE_NOGC=1 …   # the same with automatic collection off once the proxy serves

On exit (SIGTERM) it writes ``PROBE_OUT`` (default ./gcprobe.json): ``gc`` as [generation, pause ms] per
collection (gc.callbacks), ``lags`` as how much later than asked a 5 ms ``asyncio.sleep`` woke, in ms,
each time. A loop stall that is as long with the collector off is time the process did not run.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import json
import os
import sys
import time

gcs: list[tuple[int, float]] = []
lags: list[float] = []
_t0 = [0.0]


def _on_gc(phase: str, info: dict) -> None:
    if phase == "start":
        _t0[0] = time.perf_counter()
    else:
        gcs.append((info["generation"], (time.perf_counter() - _t0[0]) * 1e3))


async def _lag_probe() -> None:
    while True:
        t = time.perf_counter()
        await asyncio.sleep(0.005)
        lags.append((time.perf_counter() - t - 0.005) * 1e3)


def _dump() -> None:
    with open(os.environ.get("PROBE_OUT", "gcprobe.json"), "w") as f:
        json.dump({"gc": gcs, "lags": lags}, f)


def main() -> None:
    import nonstop.proxy.server as server
    from nonstop.proxy.command import proxy

    gc.callbacks.append(_on_gc)
    serve = server.serve

    async def probed(cfg, ready=None):
        asyncio.ensure_future(_lag_probe())
        if os.environ.get("PROBE_NOGC") == "1":
            gc.disable()
        await serve(cfg, ready)

    server.serve = probed
    atexit.register(_dump)
    sys.argv[0] = "nonstop proxy"
    proxy(prog_name="nonstop proxy", standalone_mode=False)


if __name__ == "__main__":
    main()
