"""One root error for nonstop; subclasses by cause.

Library code raises these; only the CLI turns them into exit codes
(``exit_code`` is a hint the CLI reads, never acted on elsewhere).
"""

from __future__ import annotations


class NonstopError(Exception):
    """Root of every error nonstop raises on purpose."""

    exit_code = 1

    def __init__(self, message: str, *, detail: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail or {}

    def to_dict(self) -> dict:
        return {"error": type(self).__name__, "message": self.message, **self.detail}


class ConfigError(NonstopError):
    """The config file or a command-line argument is wrong. Names field and file."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None) -> None:
        where = ""
        if file and field:
            where = f"{file}: {field}: "
        elif file:
            where = f"{file}: "
        elif field:
            where = f"{field}: "
        super().__init__(where + message, detail={"file": file, "field": field})
        self.file = file
        self.field = field


class UsageError(NonstopError):
    """A command was called with arguments that make no sense (unknown release, …)."""

    exit_code = 2


class EngineUnreachable(UsageError):
    """The container engine (docker, podman) does not answer where its CLI looks; names the socket."""


class AgentUnreachable(NonstopError):
    """The agent's control socket does not answer."""

    exit_code = 3


class DeploymentInProgress(NonstopError):
    """A second deployment was asked for while one runs; names the running one."""

    exit_code = 4


class DeploymentFailed(NonstopError):
    """A deployment failed; traffic stayed on, or went back to, the previous release."""

    exit_code = 1


class ProxyError(NonstopError):
    """The proxy's admin API refused a request or could not be reached."""


class TlsConfigError(ProxyError):
    """A certificate or key the config names cannot be served: unreadable, not PEM, not a
    matching pair, out of its validity dates, or a chain out of order. Names the field
    (``tls.cert``, ``tls.certificates[1].key``, ``tls.acme``) and the file."""

    exit_code = 2

    def __init__(self, message: str, *, field: str, path: str | None = None) -> None:
        super().__init__(f"{field}: {message}", detail={"field": field, "path": path})
        self.field = field
        self.path = path


class RouterError(NonstopError):
    """A router (embedded, nginx, haproxy) could not apply a change; nothing was changed."""


class InstanceError(NonstopError):
    """An instance could not be started, or stopped, or never became healthy."""
