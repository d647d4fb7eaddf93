"""``nonstop proxy`` with a probe of its event loop and its upstream pool, for tail hunting (issue 16).

    .venv/bin/python bench/tail/loopprobe.py --listen 127.0.0.1:8080 --upstream 127.0.0.1:8081 &   # then wrk
    .venv/bin/python bench/tail/loopprobe.py --summary loopprobe.json

From ``PROBE_DELAY`` seconds after start (default 3) for ``PROBE_FOR`` seconds (default 3), a callback
that schedules itself again with ``call_soon`` runs once per loop iteration and records, each time: the
time, the requests the proxy has finished, the requests in flight to the target and the idle pool's
size. Every upstream connection the proxy opens in the window is counted (``connect_upstream``
wrapped). Then it writes ``PROBE_OUT`` (default ./loopprobe.json), with the proxy's own latency
histogram (``stats.LATENCY_BUCKETS``: from a request's head to its response's last byte, the whole
run). ``PROBE_MAX_IDLE=N`` runs the proxy with an idle-pool bound of N (``pool_max_idle``).

The probe needs one target (the single-target table of ``--upstream``). Its own cost: one callback
per iteration, and the loop never blocks in epoll while it runs.

What it showed (issue 16, bench/RESULTS.md): under wrk -t1 -c500 with the bound at 256, 4,045 and
2,278 upstream connections opened in 3 s and 5,739 and 6,229 requests at 25-50 ms in the proxy's
histogram; with the bound at 4,096, none opened and 475-498 at 25-50 ms. At -c2000, turns of the
loop of 660-730 ms, each finishing ~24,600 requests (libuv's 48 full ``epoll_wait`` batches).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from array import array


def _summary(path: str) -> None:
    from nonstop.proxy.stats import LATENCY_BUCKETS

    j = json.load(open(path))
    t, done = j["t"], j["done"]
    busy = sorted(((t[i + 1] - t[i]) * 1e3, done[i + 1] - done[i]) for i in range(len(t) - 1) if done[i + 1] > done[i])
    ms = sorted(x for x, _ in busy)
    per = sorted(n for _, n in busy)
    n = len(busy)
    print(f"iterations {len(t)}, {n} finishing a request; their length ms p50 {ms[n // 2]:.2f} p90 {ms[int(n * .9)]:.2f} "
          f"p99 {ms[int(n * .99)]:.2f} max {ms[-1]:.2f}; requests finished per such iteration p50 {per[n // 2]} max {per[-1]}")
    for key in ("in_flight", "idle"):
        v = sorted(j[key])
        print(f"{key}: min {v[0]} p50 {v[len(v) // 2]} max {v[-1]}")
    print(f"upstream connections opened in the window: {j['connects']}")
    edges = [f"≤{b * 1e3:g}ms" for b in LATENCY_BUCKETS] + ["more"]
    print("proxy latency histogram: " + ", ".join(f"{e} {c}" for e, c in zip(edges, j["hist"]) if c))


def main() -> None:
    if sys.argv[1:2] == ["--summary"]:
        _summary(sys.argv[2])
        return
    import nonstop.proxy.server as server  # first: exchange imported on its own meets an import cycle
    from nonstop.proxy import exchange
    from nonstop.proxy.command import proxy

    stamps, done, in_flight, idle = array("d"), array("q"), array("q"), array("q")
    on, connects, srv = [False], [0], []
    connect = exchange.connect_upstream

    def counted(ex):
        connects[0] += on[0]
        return connect(ex)

    exchange.connect_upstream = counted  # a module global: the compiled build looks it up at each call too
    serve = server.serve

    async def probed(cfg, ready=None):
        if os.environ.get("PROBE_MAX_IDLE"):
            object.__setattr__(cfg, "pool_max_idle", int(os.environ["PROBE_MAX_IDLE"]))
        loop = asyncio.get_running_loop()
        now = time.perf_counter

        def tick() -> None:
            if on[0]:
                e = srv[0].state.fast
                stamps.append(now())
                done.append(e.counters.requests)
                in_flight.append(e.target.in_flight)
                idle.append(len(e.target.pool))
                loop.call_soon(tick)

        async def window() -> None:
            await asyncio.sleep(float(os.environ.get("PROBE_DELAY", "3")))
            on[0] = True
            loop.call_soon(tick)
            await asyncio.sleep(float(os.environ.get("PROBE_FOR", "3")))
            on[0] = False
            with open(os.environ.get("PROBE_OUT", "loopprobe.json"), "w") as f:
                json.dump({"t": list(stamps), "done": list(done), "in_flight": list(in_flight), "idle": list(idle),
                           "connects": connects[0], "hist": list(srv[0].state.fast.counters.counts)}, f)

        def started(s) -> None:
            srv.append(s)
            asyncio.ensure_future(window())
            if ready is not None:
                ready(s)

        await serve(cfg, started)

    server.serve = probed
    sys.argv[0] = "nonstop proxy"
    proxy(prog_name="nonstop proxy", standalone_mode=False)


if __name__ == "__main__":
    main()
