"""What nonstop asks the engine for when it starts an instance: the container's name, its labels and
the ``run`` command line, and what a refused ``run`` means for the user; and the instance read back
from a container's labels (``found_of``). Pure: no engine call here.

The labels are the container's whole record (``discover`` re-adopts from them after an agent
restart)::

    nonstop.app, nonstop.release, nonstop.instance, nonstop.port,
    nonstop.state (this state dir: two checkouts of one app never adopt each other's),
    nonstop.version, nonstop.container_port, nonstop.log
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from typing import Any, Mapping

from nonstop.agent.runtimes.base import Found, Handle, InstanceSpec
from nonstop.agent.runtimes.engine import Dialect
from nonstop.agent.runtimes.states import parse_time_ns, state_from_inspect

__all__ = ["LABELS", "LABEL", "ENV_NAME", "state_key", "container_name", "run_argv", "explain_run_failure", "found_of"]

LABELS = ("app", "release", "instance", "port", "state", "version", "container_port", "log")
LABEL = {k: f"nonstop.{k}" for k in LABELS}

# Variables the engine's CLI itself reads: a run.env entry with such a name is meant for the
# container, so it is passed on the command line rather than through the CLI's environment.
_CLI_ENV = re.compile(r"^(DOCKER_|CONTAINER_|CONTAINERS_|PODMAN_|BUILDAH_|XDG_|PATH$|HOME$)")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _safe(part: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", part).strip("-.") or "x"


def state_key(state_dir: Path) -> str:
    """8 hex digits of the state dir's path: what keeps two checkouts' container names apart."""
    return hashlib.sha256(str(state_dir).encode()).hexdigest()[:8]


def container_name(app: str, release: str, port: int, key: str) -> str:
    """``nonstop-<app>-<release>-<port>-<state key>``: deterministic, engine-safe, one per state dir."""
    return f"nonstop-{_safe(app)}-{_safe(release)}-{port}-{key}"


def run_argv(spec: InstanceSpec, name: str, app: str, state_dir: Path, dialect: Dialect) -> tuple[list[str], dict[str, str]]:
    """``run -d …`` for ``spec`` (after the engine's binary), and the variables its CLI must carry."""
    labels = {
        "app": app,
        "release": spec.release,
        "instance": spec.id,
        "port": str(spec.port),
        "state": str(state_dir),
        "version": spec.version,
        "container_port": str(spec.container_port),
        "log": str(Path(spec.log_path).resolve()),
    }
    argv = ["run", "-d", "--name", name, "--pull", "never", "--restart", "no"]
    for k, v in labels.items():
        argv += ["--label", f"{LABEL[k]}={v}"]
    argv += ["-p", f"127.0.0.1:{spec.port}:{spec.container_port}"]
    argv += ["--stop-signal", spec.stop_signal, "--stop-timeout", str(max(0, int(round(spec.stop_timeout))))]
    argv += list(dialect.log_opts)
    # Values travel in the CLI's environment (`-e NAME`), not on its command line, where
    # any local user could read them in the process list.
    env = {**{k: str(v) for k, v in spec.env.items()}, "PORT": str(spec.container_port)}
    cli_env: dict[str, str] = {}
    for k, v in env.items():
        if _CLI_ENV.match(k):
            argv += ["-e", f"{k}={v}"]
        else:
            argv += ["-e", k]
            cli_env[k] = v
    argv += [spec.image or "", *spec.argv]
    return argv, cli_env


def explain_run_failure(spec: InstanceSpec, engine: str, words: str) -> str:
    """The sentence a user reads when ``run`` was refused, from the engine's own ``words``."""
    low = words.lower()
    if "already allocated" in low or "address already in use" in low:
        return (
            f"instance {spec.id}: port {spec.port} on 127.0.0.1 is already in use by another process; "
            f"the engine could not publish it ({words})"
        )
    if any(m in low for m in ("no such image", "image not known", "unable to find image", "does not exist")):
        return f"instance {spec.id}: image {spec.image} is not in the {engine} engine any more ({words})"
    return f"instance {spec.id}: {engine} could not start the container: {words}"


def found_of(doc: Mapping[str, Any], engine: str) -> Found | None:
    """The instance a container of ours is, from its ``inspect`` document (its labels); None without a port label."""
    labels = (doc.get("Config") or {}).get("Labels") or {}
    try:
        port = int(labels.get(LABEL["port"], ""))
    except ValueError:
        return None
    started = parse_time_ns(str((doc.get("State") or {}).get("StartedAt") or ""))
    ref = {
        "id": doc["Id"],
        "name": str(doc.get("Name", "")).lstrip("/"),
        "log": labels.get(LABEL["log"], ""),
        "port": port,
        "container_port": int(labels.get(LABEL["container_port"]) or 0) or None,
    }
    return Found(
        handle=Handle(engine, ref, (started or 0) / 1e9),
        instance=labels.get(LABEL["instance"], ""),
        release=labels.get(LABEL["release"], ""),
        port=port,
        running=state_from_inspect(doc, 0).running,
    )
