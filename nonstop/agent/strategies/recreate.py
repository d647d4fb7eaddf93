"""Recreate: the seed's original script (stop old, start new), with the proxy holding requests meanwhile.

Kept so users can compare. With the embedded router, requests that arrive
while nothing is ready wait up to ``hold_timeout`` instead of failing.
"""

from __future__ import annotations

from nonstop.agent.strategies import Strategy
from nonstop.agent.strategies.run import Run, default_undo
from nonstop.agent.fleet import Fleet
from nonstop.agent.traffic import Side, Split


async def run(r: Run) -> None:
    n = r.cfg.run.instances
    old = r.stable_instances()
    await r.step("stopping", f"stopping {r.stable.id if r.stable else 'nothing'} (requests are held meanwhile)")
    await r.traffic.set(Split(sticky=r.traffic.split.sticky))
    await r.retire(old, reason="recreate")
    await r.step("starting", f"starting {n} instance(s) of {r.release.id}")
    new = await r.start_new(n, ports=r.cfg.run.port_list[:n])
    await r.step("switch", f"routing to {r.release.id}")
    await r.traffic.set(Split(stable=Side(r.release.id, tuple(Fleet.addr(x) for x in new)), sticky=r.traffic.split.sticky))
    await r.emit("switched", f"100% of traffic on {r.release.id}", release=r.release.id)


STRATEGY = Strategy("recreate", run, default_undo)
