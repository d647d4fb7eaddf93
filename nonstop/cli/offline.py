"""The verbs that work without the agent, from the state dir alone: ``history``, ``logs``, ``down``.

After ``down``, a crash, or a reboot, the state dir still holds what
happened (``nonstop.db``), the instances' logs (``logs/``) and, after a
crash, the pids of what still runs (``proxy.pid``, the instance rows). So
``history`` reads the store when the agent does not answer (the same JSON as
the agent's, plus ``"offline": <state dir>``); ``logs`` always reads the log
files (they are the same whether the agent runs or not); and ``down`` stops
what the agent left running: the router first (it stops accepting, finishes
what is in flight), then the instances (their stop signal, SIGKILL after
their stop timeout). It needs no valid config: the few settings it uses are
read leniently, with the defaults in their place.
"""

from __future__ import annotations

import asyncio
import signal
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["history", "logs", "logs_text", "down", "DownSettings"]

LIVE = "live_release"  # the store's meta key for the release that last went live (agent/deployer.py)


def _store(state: Path):
    """The state dir's store, or None when there is none yet (never creates one)."""
    db = state / "nonstop.db"
    if not db.exists():
        return None
    from nonstop.agent.store import Store

    return Store(db, reserve=False)


# -- history ---------------------------------------------------------------------------


def history(state: Path, limit: int = 50) -> dict:
    """What ``GET /history`` answers, read from the store (the live release: the last one that went live)."""
    store = _store(state)
    if store is None:
        return {"releases": [], "deployments": [], "offline": str(state)}
    with store:
        live = store.get_meta(LIVE)
        return {
            "releases": [
                {"id": r.id, "version": r.version, "created_at": r.created_at, "status": r.status, "live": r.id == live}
                for r in store.list_releases()
            ],
            "deployments": [_deployment(d) for d in store.list_deployments(limit)],
            "offline": str(state),
        }


def _deployment(d) -> dict:
    data = d.data or {}
    return {
        "id": d.id, "release": d.release, "strategy": d.strategy, "from_release": d.from_release, "state": d.state,
        "step": d.step, "phase": data.get("phase"), "started_at": d.started_at, "finished_at": d.finished_at,
        "outcome": d.outcome, "reason": d.reason, "seconds": data.get("seconds"),
    }


# -- logs ------------------------------------------------------------------------------------


def logs(state: Path, release: str | None, lines: int) -> dict:
    """``{"release": R, "files": [{"name", "path", "lines": [...]}]}``: the tail of each log of ``release``
    (default: the one that last went live), or of ``agent`` / ``proxy``. ``UsageError`` for an unknown release."""
    from nonstop.agent.logfiles import tail
    from nonstop.errors import UsageError

    logs_dir = state / "logs"
    if release not in ("agent", "proxy"):
        store = _store(state)
        known = None
        if store is not None:
            with store:
                release = release or store.get_meta(LIVE)
                known = store.get_release(release) if release else None
        if release is None:
            raise UsageError("no release is live; name one: nonstop logs RELEASE")
        if known is None:
            raise UsageError(f"unknown release {release!r}")
        files = sorted(logs_dir.glob(f"{release}-*.log"))
    else:
        files = [logs_dir / f"{release}.log"]
    return {
        "release": release,
        "files": [
            {"name": f.name, "path": str(f), "lines": tail(f, lines).splitlines() if lines > 0 else []}
            for f in files
        ],
    }


def logs_text(found: dict) -> str:
    """The text ``nonstop logs`` prints: each file's tail under a ``==> name <==`` line (as ``tail`` does)."""
    out = []
    for f in found["files"]:
        out.append(f"==> {f['name']} <==")
        out.append("\n".join(f["lines"]))
    return "\n".join(out) + "\n" if out else f"(no logs for {found['release']})\n"


# -- down ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DownSettings:
    """What stopping takes from the config; the defaults when it cannot be read."""

    drain_timeout: float = 30.0
    stop_signal: str = "SIGTERM"
    stop_timeout: float = 30.0

    @classmethod
    def read(cls, config_file: Path) -> "DownSettings":
        """Each setting from the file when it is there and makes sense (the file may be broken mid-edit)."""
        from nonstop import configfile
        from nonstop.durations import parse_duration
        from nonstop.errors import NonstopError

        try:
            raw = configfile.read(config_file)
        except NonstopError:
            return cls()
        run = raw.get("run") if isinstance(raw.get("run"), dict) else {}
        out = {}
        for name, value in (("drain_timeout", raw.get("drain_timeout")), ("stop_timeout", run.get("stop_timeout"))):
            try:
                if value is not None:
                    out[name] = parse_duration(value)
            except ValueError:
                pass
        sig = run.get("stop_signal")
        if isinstance(sig, str):
            name = sig.upper() if sig.upper().startswith("SIG") else "SIG" + sig.upper()
            if isinstance(getattr(signal, name, None), signal.Signals):
                out["stop_signal"] = name
        return cls(**out)


# The router processes a state dir may hold, and the signal each stops gracefully on (as the routers do).
_ROUTER_STOP = {"proxy.pid": signal.SIGTERM, "nginx/nginx.pid": signal.SIGQUIT, "haproxy/haproxy.pid": signal.SIGUSR1}


async def down(state: Path, settings: DownSettings) -> dict:
    """Stop what the state dir's agent left running; ``{"router": [pids], "instances": [ids]}``."""
    from nonstop.agent.preflight.statedir import router_pids

    routers = router_pids(state)
    stopped_routers = await asyncio.gather(
        *(_stop_pid(pid, _ROUTER_STOP[name], settings.drain_timeout + 5) for name, pid in routers.items())
    )
    instances = await _stop_instances(state, settings)
    return {"router": [pid for pid, ok in zip(routers.values(), stopped_routers) if ok], "instances": instances}


async def _stop_pid(pid: int, sig: int, timeout: float) -> bool:
    """``sig``, then SIGKILL after ``timeout``; True once the process is gone."""
    import psutil

    try:
        p = psutil.Process(pid)
        p.send_signal(sig)
    except psutil.Error:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not p.is_running() or p.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.Error:
            return True
        await asyncio.sleep(0.05)
    try:
        p.kill()
        p.wait(5)
    except (psutil.Error, psutil.TimeoutExpired):
        pass
    return True


async def _stop_instances(state: Path, settings: DownSettings) -> list[str]:
    from nonstop.agent.runtimes.base import Handle
    from nonstop.agent.runtimes.process import ProcessRuntime, process_handle

    store = _store(state)
    if store is None:
        return []
    runtimes: dict[str, object] = {"process": ProcessRuntime(check_port=False)}

    def runtime_for(h: Handle):
        if h.runtime not in runtimes:
            from nonstop.agent.runtimes.container import ContainerRuntime

            # stopping names the container by id: the app label is not needed for that
            runtimes[h.runtime] = ContainerRuntime(h.runtime, app="", state_dir=state)
        return runtimes[h.runtime]

    with store:
        recs = [r for r in store.instances() if r.state not in ("stopped", "failed")]

        async def one(rec) -> str | None:
            how = "gone"
            data = (rec.data or {}).get("handle")
            h = Handle.from_json(data) if data else (
                process_handle(rec.pid, rec.pid_create_time, rec.started_at) if rec.pid and rec.pid_create_time else None)
            if h is not None:
                rt = runtime_for(h)
                how = await rt.stop(h, settings.stop_signal, settings.stop_timeout)
            store.update_instance(rec.id, state="stopped")
            return rec.id if how != "gone" else None

        try:
            done = [i for i in await asyncio.gather(*(one(r) for r in recs)) if i]
        finally:
            for rt in runtimes.values():
                await rt.close()
        if done:
            store.add_event(None, "down", f"down without the agent: stopped {', '.join(done)}", {"instances": done})
    return done
