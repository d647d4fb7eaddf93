"""Containers: the engine answers, the instance ports are free or this app's own containers', and the
image a deploy would run is there (exit 2 otherwise).

A version names one image: deploying a stored version again resolves its image
anew, and the same id redeploys that release, another id is refused (both named).
"""

from __future__ import annotations

from nonstop.agent.preflight import ports
from nonstop.agent.preflight.base import Env, Problem
from nonstop.agent.releases import default_version
from nonstop.errors import NonstopError

__all__ = ["engine", "run_ports", "image"]


async def engine(env: Env) -> list[Problem]:
    """The container engine answers (its socket or host named when it does not)."""
    from nonstop.agent.runtimes import make_runtime

    runtime = make_runtime(env.cfg)
    try:
        return [env.problem("run.runtime", words) for words in await runtime.check()]
    finally:
        await runtime.close()


async def run_ports(env: Env) -> list[Problem]:
    """``run.ports``: each free, or published by a running container of this app and state dir (found by
    label). The process holding such a port is the engine's (docker-proxy, conmon), not the app's, so the
    process check alone would call this app's own instances "another program" after an agent restart."""
    busy = ports.busy_run_ports(env)
    if not busy:
        return []
    from nonstop.agent.runtimes import make_runtime

    runtime = make_runtime(env.cfg)
    try:
        found = await runtime.discover()
    except NonstopError:
        found = []  # the engine does not answer: the engine check says so
    finally:
        await runtime.close()
    ours = {f.port for f in found if f.running}
    return ports.run_ports_problem(env, [(port, p) for port, p in busy if port not in ours])


async def image(env: Env, runtime, releases, version: str | None, image_ref: str | None) -> list[Problem]:
    """The image this deploy would run exists (unless a build makes it), and a stored version keeps its image."""
    cfg = env.cfg
    run = cfg.run
    if not run.containers:
        if image_ref is not None:
            return [Problem("--image", f"runtime {run.runtime} runs no images (run.runtime: docker or podman)", None)]
        return []
    if image_ref is None and run.image is None:
        return [env.problem("run.image", "no image to deploy: set run.image (like roomescape:{version}) or pass --image")]
    if cfg.build is not None and cfg.build.commands:
        return []  # the build makes it; it is resolved (and recorded) right after the build
    named = version
    version = version or default_version(cfg.base_dir)
    rel = releases.store.find_release(version) if named else None
    rid = rel.id if rel is not None else (version if named else releases.store.release_id(version))
    ref = image_ref or run.image.replace("{version}", version).replace("{release}", rid)
    try:
        info = await runtime.resolve_image(ref)
    except NonstopError as e:
        return [Problem("--image", e.message, None) if image_ref else env.problem("run.image", e.message)]
    stored = releases.image(rel) if rel is not None else None
    if stored is not None and stored.id != info.id:
        return [Problem("--version", f"release {rel.id} runs image {stored.id[:19]} ({stored.ref}), but {ref} is now "
                                     f"{info.id[:19]}. A version names one image: choose a new version for this one", None)]
    return []
