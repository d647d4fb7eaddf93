"""Blue-green: start the idle color, health-check, smoke-test, switch 100% at once, drain the old color, keep it warm."""

from __future__ import annotations

import asyncio
import time

from nonstop.agent.strategies import Strategy
from nonstop.agent.strategies.run import Aborted, Run, default_undo
from nonstop.agent.fleet import Fleet
from nonstop.agent.runtime import render
from nonstop.agent.traffic import Side, Split
from nonstop.config import BlueGreenStrategy
from nonstop.errors import DeploymentFailed


async def run(r: Run) -> None:
    n = r.cfg.run.instances
    old = r.stable_instances()
    beside = f" beside {r.stable.id}" if old else ""
    await r.step("starting", f"starting {n} instance(s) of {r.release.id}{beside}")
    new = await r.start_new(n)
    s = r.cfg.strategy if isinstance(r.cfg.strategy, BlueGreenStrategy) else None
    if s and s.smoke:
        await r.step("smoke", "running the smoke test against the new color")
        await smoke(r, s, new)
    if s and not s.auto_promote:
        await r.step("paused", f"{r.release.id} is up on {', '.join(Fleet.addr(x) for x in new)}: waiting for `nonstop promote`")
        await wait_for_promote(r)
    await r.step("switch", f"switching 100% of traffic to {r.release.id}")
    t0 = time.monotonic()
    await r.traffic.set(Split(stable=Side(r.release.id, tuple(Fleet.addr(x) for x in new)), sticky=r.traffic.split.sticky))
    await r.emit("switched", f"100% of traffic on {r.release.id} (switch took {(time.monotonic() - t0) * 1000:.0f}ms)", release=r.release.id)
    if old:
        await r.step("draining", f"draining {r.stable.id}")
        await r.retire(old, keep_warm=s.keep_previous if s else 0.0, reason="replaced")


async def wait_for_promote(r: Run) -> None:
    while True:
        action = await r.wait_control(None)
        if action in ("promote", "promote_full"):
            await r.emit("promoted", "promote received")
            return
        if action == "abort":
            raise Aborted("aborted by the user before the switch")
        # pause / resume: nothing moves until promote anyway


async def smoke(r: Run, s: BlueGreenStrategy, new) -> None:
    url = f"http://{Fleet.addr(new[0])}"
    argv = render(s.smoke, {"url": url, "port": str(new[0].port), "release": r.release.id, "version": r.release.version,
                            "artifact": "", "instance": new[0].id, "state_dir": str(r.cfg.state_path)}, shell=s.shell)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=str(r.cfg.base_dir)
        )
    except OSError as e:
        raise DeploymentFailed(f"smoke test could not start: {e}") from None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=r.cfg.health.startup_timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise DeploymentFailed(f"smoke test timed out after {r.cfg.health.startup_timeout:g}s") from None
    text = out.decode("utf-8", "replace")[-2000:]
    if proc.returncode != 0:
        raise DeploymentFailed(f"smoke test failed (exit {proc.returncode})", detail={"smoke_output": text})
    await r.emit("smoke_passed", "smoke test passed", output=text[-500:])


STRATEGY = Strategy("blue-green", run, default_undo)
