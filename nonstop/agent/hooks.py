"""The user's hooks around a deployment (``hooks:`` in nonstop.yml).

``pre_deploy`` runs once the release is stored and before anything changes:
a non-zero exit (or a timeout) fails the deploy with nothing moved.
``post_deploy`` runs after the release went live: a failure is reported
(an event, the output's tail) and nothing is undone — the release serves.
Commands take ``{release}``, ``{version}``, ``{artifact}``, ``{state_dir}`` (config.HOOK_PLACEHOLDERS: any other
is refused when the config is read);
their output goes to ``logs/hook-<name>-<release>.log``.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from nonstop.agent.commands import render
from nonstop.agent.store import Release
from nonstop.config import Config
from nonstop.errors import DeploymentFailed

__all__ = ["HookFailed", "run_hook", "HOOK_TIMEOUT"]

HOOK_TIMEOUT = 600.0


class HookFailed(DeploymentFailed):
    """A ``pre_deploy`` or ``post_deploy`` hook exited non-zero, could not start, or timed out."""


async def run_hook(cfg: Config, name: str, release: Release, artifact: Path | None) -> str | None:
    """Run hook ``name`` if configured; its output's tail, or None when there is no such hook.
    ``HookFailed`` (with the tail) when it fails."""
    cmd = cfg.hooks.get(name)
    if cmd is None:
        return None
    values = {"release": release.id, "version": release.version, "artifact": str(artifact) if artifact else "",
              "state_dir": str(cfg.state_path)}
    argv = render(cmd, values, shell=False)
    log_path = cfg.state_path / "logs" / f"hook-{name}-{release.id}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as out:
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                cwd=str(cfg.base_dir), start_new_session=True,
                env={**os.environ, "NONSTOP_RELEASE": release.id, "NONSTOP_VERSION": release.version},
            )
        except OSError as e:
            raise HookFailed(f"hook {name} could not start: {argv[0]}: {e.strerror or e}", detail={"hook": name}) from None
        try:
            code = await asyncio.wait_for(proc.wait(), HOOK_TIMEOUT)
        except (asyncio.TimeoutError, asyncio.CancelledError) as e:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
            if isinstance(e, asyncio.CancelledError):
                raise
            raise HookFailed(f"hook {name} timed out after {HOOK_TIMEOUT:g}s", detail={"hook": name}) from None
    tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
    if code != 0:
        raise HookFailed(f"hook {name} failed with exit code {code} (log: {log_path})\n{tail}",
                         detail={"hook": name, "log": str(log_path), "log_tail": tail})
    return tail
