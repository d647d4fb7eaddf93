"""How the app is built, run and health-checked: the ``build``, ``run`` and ``health`` blocks."""

from __future__ import annotations

import re
import shlex
import typing
from typing import Literal

from pydantic import Field, field_validator, model_validator

from nonstop.config.fields import Command, Duration, _Model
from nonstop.names import CONTAINER_RUNTIMES, RUNTIMES

PLACEHOLDERS = ("port", "artifact", "release", "version", "instance", "state_dir")
"""What ``run.command`` may name; smoke commands also get ``{url}``."""


class BuildConfig(_Model):
    workdir: str = "."
    commands: list[Command] = Field(default_factory=list)
    artifact: str | None = None
    shell: bool = False
    timeout: Duration = 1800.0


HOOK_PLACEHOLDERS = ("release", "version", "artifact", "state_dir")
"""What ``hooks.pre_deploy`` / ``hooks.post_deploy`` may name (a hook runs once per deploy: no port, no instance)."""

IMAGE_PLACEHOLDERS = ("version", "release")
"""What ``run.image`` may name."""


def _unknown_placeholders(text: str, known: tuple[str, ...]) -> list[str]:
    return sorted(set(re.findall(r"(?<![{$])\{([^{}]*)\}(?!\})", text)) - set(known))


class RunConfig(_Model):
    """How instances run: a command per instance (``process``), a container per instance
    (``docker`` / ``podman``), or Deployments in a cluster (``kubernetes``)."""

    runtime: Literal["process", "docker", "podman", "kubernetes"] = "process"
    command: Command | None = None
    image: str | None = None
    container_port: int | None = Field(None, ge=1, le=65535)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    ports: str = "8081-8082"
    instances: int = Field(1, ge=1, le=64)
    stop_signal: str = "SIGTERM"
    stop_timeout: Duration = 30.0
    shell: bool = False
    workdir: str | None = None

    @field_validator("command")
    @classmethod
    def _command(cls, v: Command | None) -> Command | None:
        if v is None:
            return v
        text = v if isinstance(v, str) else " ".join(v)
        if not text.strip():
            raise ValueError("must not be empty")
        if "{port}" not in text:
            raise ValueError("must contain {port}: nonstop picks the port of each instance")
        unknown = _unknown_placeholders(text, PLACEHOLDERS)
        if unknown:
            raise ValueError(
                f"unknown placeholder {{{unknown[0]}}}; known: " + ", ".join("{" + p + "}" for p in PLACEHOLDERS)
            )
        if isinstance(v, str):
            try:
                shlex.split(v)
            except ValueError as e:
                raise ValueError(f"cannot be split into arguments: {e}") from None
        return v

    @field_validator("image")
    @classmethod
    def _image(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.strip() or any(c.isspace() for c in v):
            raise ValueError(f"expected an image reference like roomescape:{{version}}; got {v!r}")
        unknown = _unknown_placeholders(v, IMAGE_PLACEHOLDERS)
        if unknown:
            raise ValueError(f"unknown placeholder {{{unknown[0]}}}; known: {{version}}, {{release}}")
        return v

    @field_validator("ports")
    @classmethod
    def _ports(cls, v: str) -> str:
        port_list(v)
        return v

    @field_validator("stop_signal")
    @classmethod
    def _signal(cls, v: str) -> str:
        import signal

        name = v.upper() if v.upper().startswith("SIG") else "SIG" + v.upper()
        if not hasattr(signal, name):
            raise ValueError(f"unknown signal {v!r}")
        return name

    @model_validator(mode="after")
    def _runtime_fields(self) -> "RunConfig":
        if self.runtime == "process":
            if self.command is None:
                raise ValueError("run.command: required setting is missing (runtime process runs a command per instance)")
            for name in ("image", "container_port"):
                if getattr(self, name) is not None:
                    raise ValueError(f"run.{name}: only used with runtime docker, podman or kubernetes")
            if self.args:
                raise ValueError("run.args: only used with runtime docker, podman or kubernetes (put arguments in run.command)")
        else:
            if self.command is not None:
                raise ValueError(
                    f"run.command: not used with runtime {self.runtime}: the image's entrypoint runs; "
                    "arguments go in run.args"
                )
            if self.container_port is None:
                raise ValueError(f"run.container_port: required with runtime {self.runtime} (the app's port inside the container)")
            if self.shell:
                raise ValueError(f"run.shell: not used with runtime {self.runtime}")
        return self

    @property
    def port_list(self) -> list[int]:
        return port_list(self.ports)

    @property
    def containers(self) -> bool:
        return self.runtime in CONTAINER_RUNTIMES


assert typing.get_args(RunConfig.model_fields["runtime"].annotation) == RUNTIMES, "nonstop.names.RUNTIMES and run.runtime disagree"


def port_list(spec: str | int) -> list[int]:
    """``8081-8084`` or ``8081,8082`` (or a mix) → sorted list of ports."""
    ports: set[int] = set()
    for part in str(spec).split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise ValueError(f"expected a port range like 8081-8082; got {spec!r}")
        a, b = int(lo), int(hi) if dash else int(lo)
        if not (1 <= a <= b <= 65535):
            raise ValueError(f"ports must be within 1-65535, low to high; got {part!r}")
        ports.update(range(a, b + 1))
    return sorted(ports)


class HealthConfig(_Model):
    type: Literal["http", "tcp", "command"] = "http"
    path: str = "/health"
    expect_status: int = Field(200, ge=100, le=599)
    expect_body: str | None = None
    command: Command | None = None
    shell: bool = False
    interval: Duration = 0.2
    timeout: Duration = 2.0
    startup_timeout: Duration = 120.0
    healthy_threshold: int = Field(2, ge=1)
    unhealthy_threshold: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _command_needed(self) -> "HealthConfig":
        if self.type == "command" and not self.command:
            raise ValueError("health.command: required with type: command")
        if not self.path.startswith("/"):
            raise ValueError("health.path: must start with /")
        return self
