"""The container engine's own CLI (``docker`` or ``podman``), run as asyncio subprocesses.

The CLI finds its engine exactly as it does for the user: ``DOCKER_HOST`` or
the current docker context; ``CONTAINER_HOST`` (which puts podman in remote
mode) or, by default, podman's local storage with no service at all. Output
is asked for as JSON wherever there is a choice. The two CLIs agree on every
command used here; where their words differ (log options), ``Dialect`` says
so in one place.

Foreign failures become nonstop's own at this boundary: an engine that does
not answer is ``EngineUnreachable`` (naming where the CLI looked), a command
the engine refused is a ``Completed`` with ``ok`` False for the caller to
explain.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
from dataclasses import dataclass
from typing import Any, Mapping

from nonstop.agent.runtimes import cliproc
from nonstop.errors import EngineUnreachable

__all__ = ["Completed", "Dialect", "DIALECTS", "Engine"]

_AFTER_EXIT = 1.0


@dataclass(frozen=True)
class Completed:
    """One finished CLI call: its exit status and output."""

    argv: tuple[str, ...]
    rc: int
    out: str
    err: str

    @property
    def ok(self) -> bool:
        return self.rc == 0

    @property
    def words(self) -> str:
        """The engine's own message, without the CLI's "see --help" trailer."""
        lines = [
            l.strip()
            for l in self.err.splitlines()
            if l.strip() and not l.startswith("Run '") and "legacy builder" not in l and "buildx" not in l
        ]
        text = " ".join(lines) or self.out.strip() or f"exit status {self.rc}"
        return re.sub(r"^(docker|Error): ", "", text)


@dataclass(frozen=True)
class Dialect:
    """Where docker's and podman's CLIs differ in what nonstop uses."""

    name: str
    # a log driver that `logs` can always read back, capped: the engine only needs to hold what
    # nonstop has not copied into logs/ yet
    log_opts: tuple[str, ...]
    # stderr of a CLI that cannot reach its engine at all
    unreachable: tuple[str, ...]
    host_env: str


DIALECTS: dict[str, Dialect] = {
    "docker": Dialect(
        name="docker",
        log_opts=("--log-driver", "json-file", "--log-opt", "max-size=10m", "--log-opt", "max-file=2"),
        unreachable=(
            "Cannot connect to the Docker daemon",
            "error during connect",
            "permission denied while trying to connect",
            "Is the docker daemon running",
        ),
        host_env="DOCKER_HOST",
    ),
    "podman": Dialect(
        name="podman",
        log_opts=("--log-driver", "k8s-file", "--log-opt", "max-size=10mb"),
        unreachable=(
            "Cannot connect to Podman",
            "unable to connect to Podman",
        ),
        host_env="CONTAINER_HOST",
    ),
}


class Engine:
    """One engine's CLI: the binary, the environment it runs in, and how to call it.
    Owns nothing else (no state about containers)."""

    def __init__(self, name: str, *, binary: str | None = None, env: Mapping[str, str] | None = None) -> None:
        if name not in DIALECTS:
            raise ValueError(f"unknown container engine {name!r}; known: {', '.join(DIALECTS)}")
        self.name = name
        self.dialect = DIALECTS[name]
        self.binary = binary or name
        self.env = dict(os.environ if env is None else env)

    # -- where ---------------------------------------------------------------------
    def where(self) -> str:
        """Where the CLI looks for its engine, in the words a user can check."""
        host = self.env.get(self.dialect.host_env)
        if host:
            return f"{host} ({self.dialect.host_env})"
        if self.name == "docker":
            ctx = self.env.get("DOCKER_CONTEXT")
            if ctx:
                return f"docker context {ctx} (DOCKER_CONTEXT)"
            return "unix:///var/run/docker.sock (the default socket; DOCKER_HOST unset)"
        conf = self.env.get("CONTAINERS_STORAGE_CONF")
        return "local podman storage" + (f" ({conf})" if conf else " (no service needed; CONTAINER_HOST unset)")

    def _unreachable(self, res: Completed) -> bool:
        return not res.ok and any(m.lower() in res.err.lower() for m in self.dialect.unreachable)

    def _missing(self) -> EngineUnreachable:
        return EngineUnreachable(
            f"{self.name}: the {self.binary!r} command is not installed (not found on PATH); "
            f"install {'docker.io' if self.name == 'docker' else 'podman'} or choose another run.runtime",
            detail={"engine": self.name},
        )

    def resolved_binary(self) -> str | None:
        return shutil.which(self.binary, path=self.env.get("PATH"))

    # -- calls ---------------------------------------------------------------------
    async def run(
        self, *args: str, timeout: float = 30.0, env: Mapping[str, str] | None = None, check_reach: bool = True
    ) -> Completed:
        """Run one CLI command to completion. ``EngineUnreachable`` when the engine does not
        answer (or the CLI is missing, or the call outlives ``timeout``)."""
        argv = (self.binary, *args)
        try:
            proc = await cliproc.start(argv, {**self.env, **(env or {})})
        except FileNotFoundError:
            raise self._missing() from None
        try:
            out, err = await asyncio.wait_for(_communicate(proc), timeout)
        except asyncio.TimeoutError:
            _kill(proc)
            await proc.wait()
            raise EngineUnreachable(
                f"{self.name} did not answer `{' '.join(args[:2])}` within {timeout:g}s (engine at {self.where()})",
                detail={"engine": self.name},
            ) from None
        except asyncio.CancelledError:
            _kill(proc)
            raise
        res = Completed(argv, proc.returncode if proc.returncode is not None else -1, out.decode(errors="replace"), err.decode(errors="replace"))
        if check_reach and self._unreachable(res):
            raise EngineUnreachable(
                f"{self.name} engine not reachable at {self.where()}: {res.words}", detail={"engine": self.name}
            )
        return res

    async def json(self, *args: str, timeout: float = 30.0) -> Any:
        """A command whose output is JSON (``inspect``): the decoded output, even when the CLI
        also reported some names as missing (rc 1 with the found ones printed); None when none."""
        res = await self.run(*args, timeout=timeout)
        text = res.out.strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except ValueError:
            return None

    async def spawn(self, *args: str) -> cliproc.CliProcess:
        """A long-running CLI command (``events``, ``logs -f``) with its output piped to us."""
        try:
            # one line may be long (a stack trace line, a big JSON event)
            return await cliproc.start((self.binary, *args), self.env, limit=1 << 20)
        except FileNotFoundError:
            raise self._missing() from None


async def _communicate(proc: cliproc.CliProcess) -> tuple[bytes, bytes]:
    """Everything the command printed, once it has exited. Output still open after the exit (a daemon
    it started kept a copy of the pipe) is read for ``_AFTER_EXIT`` seconds more, not waited for."""
    out, err = bytearray(), bytearray()

    async def drain(reader: asyncio.StreamReader, into: bytearray) -> None:
        while chunk := await reader.read(1 << 16):
            into += chunk

    reads = asyncio.gather(drain(proc.stdout, out), drain(proc.stderr, err))
    try:
        await proc.wait()
        await asyncio.wait_for(asyncio.shield(reads), _AFTER_EXIT)
    except asyncio.TimeoutError:
        pass  # what had arrived is the command's; the rest would be the daemon's
    finally:
        reads.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reads
    return bytes(out), bytes(err)


def _kill(proc: cliproc.CliProcess) -> None:
    """Kill a CLI process this module started (by its own handle, never by name)."""
    if proc.returncode is None:
        try:
            proc.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass


async def stop_process(proc: cliproc.CliProcess | None, grace: float = 1.0) -> None:
    """End a spawned CLI process: SIGTERM, then SIGKILL after ``grace``; reaped either way."""
    if proc is None or proc.returncode is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        await asyncio.wait_for(proc.wait(), grace)
    except asyncio.TimeoutError:
        _kill(proc)
        await proc.wait()
