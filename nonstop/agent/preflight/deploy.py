"""A deploy that cannot work, found before anything is stopped or recorded.

The version is a valid release name and names one artifact; the artifact is
there when the command needs one, and is what the command can take (a file
for ``java -jar {artifact}``, a folder for ``{artifact}/bin/start``); the
strategy asked for has its block; the program still exists (the config was
read again); and the state dir has room for the artifact's copy.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from nonstop.agent.preflight import commands, containers
from nonstop.agent.preflight.base import Env, Problem
from nonstop.agent.preflight.statedir import room
from nonstop.agent.releases import Releases, VersionTaken, artifact_bytes, short
from nonstop.agent.room import human_bytes
from nonstop.agent.store import Release, validate_version
from nonstop.config import router_capabilities
from nonstop.errors import NonstopError
from nonstop.names import STRATEGIES

__all__ = ["DeployRequest", "problems"]



@dataclass(frozen=True)
class DeployRequest:
    """What ``nonstop deploy`` asked for."""

    version: str | None = None
    artifact: str | None = None
    strategy: str | None = None
    image: str | None = None  # containers: a prebuilt image instead of run.image


def _option(field: str, message: str, file: str | None = None) -> Problem:
    return Problem(field, message, file)


async def problems(env: Env, releases: Releases, req: DeployRequest, live: Release | None, runtime=None) -> list[Problem]:
    """Every reason this deploy cannot work (empty: go ahead). ``runtime``: the fleet's (containers: images)."""
    cfg = env.cfg
    out: list[Problem] = []
    strategy = req.strategy or cfg.strategy.type
    if strategy not in STRATEGIES:
        out.append(_option("--strategy", f"unknown strategy {strategy!r} ({', '.join(STRATEGIES)})"))
    elif strategy != cfg.strategy.type and strategy in ("canary", "rolling"):
        out.append(_option("--strategy", f"{strategy} needs a strategy block of that type in the config", cfg.source))
    elif strategy == "recreate" and cfg.run.runtime != "kubernetes" and "hold" not in router_capabilities(cfg.router):
        out.append(_option("--strategy", f"recreate needs a router that holds requests while no instance is ready; "
                                         f"router {cfg.router.type} cannot (use router: embedded)", cfg.source))

    version_ok = req.version is None
    if req.version is not None:
        try:
            validate_version(req.version)
            version_ok = True
        except NonstopError as e:
            out.append(_option("--version", e.message))

    artifact: Path | None = None
    if req.artifact is not None:
        try:
            artifact = releases.resolve_artifact(req.artifact, cfg.base_dir)
        except NonstopError as e:
            out.append(_option("--artifact", e.message.removeprefix("--artifact: ")))

    existing = None
    loop = asyncio.get_running_loop()
    if version_ok and req.version is not None and (artifact is not None or req.artifact is None):
        try:  # hashing a big artifact takes a while: not on the event loop
            existing = await loop.run_in_executor(None, releases.existing, req.version, artifact, cfg.build, cfg.base_dir)
        except VersionTaken as e:
            out.append(_option("--version", e.message.removeprefix(f"--version {req.version}: ")))
        except NonstopError as e:  # build.artifact not there
            out.append(env.problem(str(e.detail.get("field") or "build.artifact"), e.message))
        if existing is not None and live is not None and existing.id == live.id:
            out.append(_option("--version", f"release {existing.id} is live already, with this artifact "
                                            f"({short(releases.digest_of(existing))}): nothing to deploy"))

    out += _artifact(env, req, artifact, existing)
    out += commands.run_command(env) + commands.run_workdir(env)
    if runtime is not None and version_ok:
        out += await containers.image(env, runtime, releases, req.version, req.image)
    if artifact is not None and existing is None:
        size = await loop.run_in_executor(None, artifact_bytes, artifact)  # a folder: a walk
        out += room(env, size, f"the copy of {artifact}: {human_bytes(size)}")
    elif existing is None:
        out += room(env)
    return out


def _artifact(env: Env, req: DeployRequest, artifact: Path | None, existing: Release | None) -> list[Problem]:
    run = env.cfg.run
    if run.runtime != "process" or not commands.uses_artifact(run):
        return []
    build = env.cfg.build
    if artifact is None:
        if req.artifact is not None:
            return []  # not there: said above
        if existing is not None and existing.artifact is not None:
            return []  # the stored release brings its own
        if build is not None and build.artifact:
            return []  # the build makes it
        shown = run.command if isinstance(run.command, str) else " ".join(run.command or [])
        return [_option("--artifact", f"run.command uses {{artifact}} ({shown}), and nothing says what to deploy: "
                                      "name it with --artifact PATH, or set build.artifact", env.file)]
    need = commands.artifact_kind(run)
    if need is None:
        return []
    kind, why = need
    if kind == "file" and artifact.is_dir():
        return [_option("--artifact", f"{artifact} is a folder, but run.command cannot take one: {why}. A folder "
                                      "artifact suits a command like `python {artifact}` or `{artifact}/bin/start` "
                                      "(see docs/commands.md, \"Artifacts\")")]
    if kind == "folder" and not artifact.is_dir():
        return [_option("--artifact", f"{artifact} is a file, but run.command needs a folder: {why}")]
    return []
