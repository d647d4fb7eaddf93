"""The runtime interface: how an instance of the app runs, whatever runs it.

A strategy never sees a runtime: it asks the fleet for healthy instances of a
release and gets records whose address the router can send to. The fleet asks
a ``Runtime`` to start, watch, stop and find again the instances behind those
records. Implementations sit side by side, chosen by ``run.runtime``:

- ``process`` — a command per instance, in its own session (``process.py``);
- ``docker`` / ``podman`` — a container per instance, published on
  ``127.0.0.1:{port}``, labelled so it is found again (``container.py``).

(``kubernetes`` is not an instance runtime: the cluster runs the pods, and
nonstop drives Deployments and Services through its API; see
``nonstop/agent/kubernetes/``.)

Everything a runtime must remember about an instance is its ``Handle``: plain
JSON stored with the instance record, so a restarted agent finds the very
same process or container (never a recycled pid, never a container nonstop
did not start).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

__all__ = ["InstanceSpec", "Handle", "Found", "ImageInfo", "StopResult", "Runtime"]

StopResult = Literal["exited", "killed", "gone"]
"""``exited``: went on ``stop_signal``; ``killed``: needed the kill after ``stop_timeout``; ``gone``: was not running."""


@dataclass(frozen=True)
class InstanceSpec:
    """Everything needed to start one instance; built by the fleet from the config and the release."""

    app: str
    id: str  # "<release>@<port>"
    release: str
    version: str
    port: int  # the port on 127.0.0.1 that the router sends this instance's traffic to
    argv: tuple[str, ...] = ()  # process: the command line; containers: arguments after the image's entrypoint
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None  # process only
    log_path: Path = Path("instance.log")
    stop_signal: str = "SIGTERM"
    stop_timeout: float = 30.0
    image: str | None = None  # containers: the release's image, by id/digest (the exact bytes recorded)
    container_port: int | None = None  # containers: the app's port inside the container


@dataclass(frozen=True)
class Handle:
    """How a runtime finds one instance again. ``ref`` is JSON (stored with the instance record):
    ``{"pid": …, "create_time": …}`` for a process, ``{"id": …, "name": …}`` for a container."""

    runtime: str
    ref: Mapping[str, Any]
    started_at: float  # epoch seconds

    def to_json(self) -> dict:
        return {"runtime": self.runtime, "ref": dict(self.ref), "started_at": self.started_at}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Handle":
        return cls(str(d["runtime"]), dict(d["ref"]), float(d["started_at"]))


@dataclass(frozen=True)
class Found:
    """An instance the runtime found on its own (containers, by label) that the store may not know."""

    handle: Handle
    instance: str  # the instance id it was started as
    release: str
    port: int
    running: bool


@dataclass(frozen=True)
class ImageInfo:
    """A release's image: the reference the user named and the id it resolved to (what instances run)."""

    ref: str
    id: str  # "sha256:…"; a rollback runs exactly this, whatever the tag points at later


class Runtime(ABC):
    """Starts, watches, stops and finds again the instances of one app. Never decides who gets traffic."""

    name: str = "?"

    @abstractmethod
    async def start(self, spec: InstanceSpec) -> Handle:
        """Start one instance; returns once it is started (not healthy: the fleet health-checks it).
        ``InstanceError`` (naming the instance, with the cause a user can act on) when it cannot start."""

    @abstractmethod
    async def alive(self, handle: Handle) -> bool:
        """True while that very instance runs (a recycled pid, a replaced container: False). Cheap: called often."""

    @abstractmethod
    async def exit_code(self, handle: Handle) -> int | None:
        """How it ended (negative: killed by that signal), once it has; None while running or unknown."""

    @abstractmethod
    async def stop(self, handle: Handle, signal_name: str, timeout: float) -> StopResult:
        """``signal_name``, then a kill after ``timeout``; only ever the instance ``handle`` names."""

    async def wait_changed(self, timeout: float) -> None:
        """Until an instance may have started or ended (containers: the engine's next event), or
        ``timeout`` seconds; lets the fleet notice a death at once. Processes: just the timeout."""
        await asyncio.sleep(timeout)

    async def discover(self) -> list[Found]:
        """Instances of this app the runtime can find by itself (containers: by label). Processes: none."""
        return []

    async def adopt(self, handle: Handle) -> bool:
        """Take over an instance an earlier agent started (from the store or ``discover``): True when
        that very instance still runs; resumes what the runtime does for it (a container's log follower)."""
        return await self.alive(handle)

    async def diagnose(self, handle: Handle) -> str | None:
        """A sentence on why health checks of this running instance may keep failing, when the runtime
        can tell (containers: nothing listens on ``container_port`` inside); None otherwise."""
        return None

    async def forget(self, handle: Handle) -> None:
        """Release what the runtime keeps for a stopped instance (a container's remains, a log follower)."""

    def address(self, port: int) -> str:
        """Where the router reaches an instance published on ``port``."""
        return f"127.0.0.1:{port}"

    async def check(self) -> list[str]:
        """Problems a user must fix before a deploy can work (engine not reachable, …); for ``nonstop check``."""
        return []

    # -- images (container runtimes) ---------------------------------------------------
    async def resolve_image(self, ref: str) -> ImageInfo:
        """The local image ``ref`` names, by id; ``UsageError`` (exit 2) when there is none."""
        raise NotImplementedError(f"runtime {self.name} has no images")

    async def remove_image(self, image_id: str) -> None:
        """Remove an image nothing runs any more (a pruned release's)."""

    async def close(self) -> None:
        """Stop background work (log followers); instances keep running."""
