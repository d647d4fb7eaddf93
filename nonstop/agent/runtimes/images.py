"""A release's image in the engine: resolved to its id once, removed when its release is pruned."""

from __future__ import annotations

import logging

from nonstop.agent.runtimes.base import ImageInfo
from nonstop.agent.runtimes.engine import Engine
from nonstop.errors import EngineUnreachable, UsageError

__all__ = ["image_id", "resolve_image", "remove_image"]

log = logging.getLogger("nonstop.runtime.container")

_CONFLICT = ("conflict", "in use", "being used", "referenced in multiple", "has dependent")
_NO_SUCH = ("no such", "not known", "not found")


def _has(words: str, markers: tuple[str, ...]) -> bool:
    low = words.lower()
    return any(m in low for m in markers)


async def image_id(engine: Engine, ref: str) -> str | None:
    """The id (``sha256:…``) of the local image ``ref`` names; None when there is none."""
    res = await engine.run("image", "inspect", "--format", "{{.Id}}", ref)
    if not res.ok or not res.out.strip():
        return None
    iid = res.out.strip().splitlines()[-1].strip()
    return iid if iid.startswith("sha256:") else f"sha256:{iid}"  # podman prints the bare hex


async def resolve_image(engine: Engine, ref: str, pull_timeout: float) -> ImageInfo:
    """The local image by id; when absent, one ``pull`` within ``pull_timeout``; ``UsageError`` else."""
    found = await image_id(engine, ref)
    if found:
        return ImageInfo(ref, found)
    try:
        pull = await engine.run("pull", "-q", ref, timeout=pull_timeout)
        ok, words = pull.ok, pull.words
    except EngineUnreachable as e:
        if "did not answer" not in e.message:
            raise  # the engine itself is down: say that, not "not found"
        ok, words = False, f"no answer within {pull_timeout:g}s"
    if ok:
        found = await image_id(engine, ref)
        if found:
            return ImageInfo(ref, found)
    raise UsageError(
        f"image {ref} not found locally and could not be pulled: {words}", detail={"image": ref, "engine": engine.name}
    )


async def remove_image(engine: Engine, iid: str) -> bool:
    """Remove an image by id; False (and nothing removed) when something still uses it."""
    res = await engine.run("rmi", iid)
    if res.ok or _has(res.words, _NO_SUCH):
        return True
    if _has(res.words, _CONFLICT):
        log.info("%s image %s kept: %s", engine.name, iid[:19], res.words)
    else:
        log.warning("%s rmi %s: %s", engine.name, iid[:19], res.words)
    return False
