"""Blue-green: start the idle color, health-check, smoke-test, switch 100% at once, drain the old color, keep it warm.

With ``analysis:`` the new color is watched after the switch (``watcher.py``): a breach switches
traffic back to the warm previous color (the deployer's undo, an instant rollback) and the deploy
fails with the figures; a watch without enough traffic ends as a pass, said to be not judged.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from nonstop.agent.strategies import Recovered, Strategy
from nonstop.agent.strategies import watch as wm
from nonstop.agent.strategies.run import Aborted, Run, default_undo
from nonstop.agent.strategies.watcher import Watcher, baseline, saved_watch
from nonstop.agent.fleet import Fleet
from nonstop.agent.commands import render
from nonstop.config import BlueGreenStrategy
from nonstop.errors import DeploymentFailed, UsageError


def _control(stage: str):
    """What a blue-green deploy accepts now (the watch sets its own): ``abort`` always; ``promote`` only
    while it waits for one. Anything else is refused (exit 2), not queued to act later by surprise."""

    def check(action: str) -> None:
        if action == "abort" or (stage == "waiting for `nonstop promote`" and action in ("promote", "promote_full")):
            return
        verb = action.replace("_full", " --full")
        raise UsageError(f"blue-green is {stage}: `nonstop {verb}` has nothing to act on (`nonstop abort` stops it)")

    return check


async def run(r: Run) -> None:
    n = r.cfg.run.instances
    r.check_control = _control("starting the new color")
    old = r.stable_instances()
    beside = f" beside {r.stable.id}" if old else ""
    await r.step("starting", f"starting {n} instance(s) of {r.release.id}{beside}")
    new = await r.start_new(n)
    # `deploy --strategy blue-green` over another strategy block: blue-green's own defaults (keep_previous warm)
    s = r.cfg.strategy if isinstance(r.cfg.strategy, BlueGreenStrategy) else BlueGreenStrategy(type="blue-green")
    if s.smoke:
        await r.step("smoke", "running the smoke test against the new color")
        await smoke(r, s, new)
    if not s.auto_promote:
        await r.step("paused", f"{r.release.id} is up on {', '.join(Fleet.addr(x) for x in new)}: waiting for `nonstop promote`")
        r.check_control = _control("waiting for `nonstop promote`")
        r.set_paused(True)  # `status` shows it waiting, as a canary's manual step
        try:
            await wait_for_promote(r)
        finally:
            r.set_paused(False)
        r.check_control = _control("switching")
    a = s.analysis
    if a is not None and not old:
        a = None
        await r.emit("watch_skipped", "no previous release to switch back to: the new color is not watched")
    # the previous release's own figures just before the switch: what the new color is compared with
    base = await baseline(r, r.stable.id, a.baseline) if a is not None else None
    await r.step("switch", f"switching 100% of traffic to {r.release.id}")
    t0 = time.monotonic()
    await r.switch_to(r.release, new)
    await r.emit("switched", f"100% of traffic on {r.release.id} (switch took {(time.monotonic() - t0) * 1000:.0f}ms)", release=r.release.id)
    if not old:
        return
    keep = s.keep_previous
    if a is None:
        await r.step("draining", f"draining {r.stable.id}")
        await r.retire(old, keep_warm=keep, reason="replaced")
        return
    # Watched: the old color drains meanwhile and stays warm for the whole watch, whatever keep_previous says.
    w = Watcher(r, a, r.release.id, base)
    await w.start()
    await r.step("watching", f"watching {r.release.id} for {a.watch:g}s; {r.stable.id} kept warm to switch back",
                 watch_until=w.state.started + a.watch)
    hold = max(keep, a.watch + 2 * a.interval + r.cfg.drain_timeout)
    draining = asyncio.get_running_loop().create_task(r.retire(old, keep_warm=hold, reason="replaced"))
    try:
        result = await w.run()
    except BaseException:
        draining.cancel()
        raise
    if isinstance(result, wm.Breached):
        draining.cancel()
        with contextlib.suppress(BaseException):
            await draining
        raise w.failed(result)  # the deployer's undo switches back to the warm color (an instant rollback)
    await draining
    await r.emit("watch_passed", f"{r.release.id} {result.reason}", release=r.release.id)


async def recover(r: Run) -> Recovered | None:
    """An agent killed during the watch: go on watching for the rest of the window, the warm color still there."""
    s = r.cfg.strategy
    saved = saved_watch(r)
    if (
        r.dep.data.get("phase") != "watching" or saved is None or r.stable is None
        or not isinstance(s, BlueGreenStrategy) or s.analysis is None
        or r.traffic.live_release != r.release.id
    ):
        return None
    warm = [x for x in r.fleet.running(r.stable.id) if await r.fleet.alive(x)]
    if not warm:
        return None  # nothing to switch back to: the deployer completes it
    w = Watcher.resume(r, s.analysis, saved)
    await r.emit("watch_resumed", f"going on watching {r.release.id} for the rest of its window "
                 f"({max(0.0, w.state.started + s.analysis.watch - time.time()):.0f}s left)")
    result = await w.run()
    if isinstance(result, wm.Breached):
        await default_undo(r)
        return Recovered("rolled_back", w.failed(result).message)
    r.keep_warm(warm, s.keep_previous)
    await r.emit("watch_passed", f"{r.release.id} {result.reason}", release=r.release.id)
    return Recovered("promoted", f"{r.release.id} is live (watched to the end after an agent restart)")


async def wait_for_promote(r: Run) -> None:
    while True:
        action = await r.wait_control(None)
        if action in ("promote", "promote_full"):
            await r.emit("promoted", "promote received")
            return
        if action == "abort":
            raise Aborted("aborted by the user before the switch")


async def smoke(r: Run, s: BlueGreenStrategy, new) -> None:
    url = f"http://{Fleet.addr(new[0])}"
    artifact = r.releases.artifact_path(r.release)
    argv = render(s.smoke, {"url": url, "port": str(new[0].port), "release": r.release.id, "version": r.release.version,
                            "artifact": str(artifact) if artifact else "", "instance": new[0].id,
                            "state_dir": str(r.cfg.state_path)}, shell=s.shell)
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


STRATEGY = Strategy("blue-green", run, default_undo, recover)
