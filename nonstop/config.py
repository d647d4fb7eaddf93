"""The one configuration object: ``nonstop.yml`` loaded, validated, resolved.

Every setting is declared once here (default, validation, help). ``load()``
turns every problem into a ``ConfigProblems`` (a ``ConfigError``) listing
each with its field path (``strategy.steps[1].weight``), file and line, which
the CLI reports with exit code 2.
"""

from __future__ import annotations

import os
import re
import shlex
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from nonstop import configfile
from nonstop.names import CONTAINER_RUNTIMES, ROUTERS, RUNTIMES, STRATEGIES
from nonstop.durations import parse_duration
from nonstop.configfile import ConfigProblems, Problem

CONFIG_NAME = configfile.CONFIG_NAME


def _duration(v: Any) -> float:
    return parse_duration(v)


Duration = Annotated[float, BeforeValidator(_duration)]
"""Seconds; accepts ``200ms``, ``30s``, ``10m``, ``1h`` or a number."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _addr(value: str, field: str) -> tuple[str, int]:
    host, sep, port = str(value).rpartition(":")
    if not sep or not port.isdigit() or not (0 <= int(port) <= 65535):
        raise ValueError(f"expected HOST:PORT (like 127.0.0.1:8080); got {value!r}")
    return (host.strip("[]") or "0.0.0.0"), int(port)


Command = Union[str, list[str]]

PLACEHOLDERS = ("port", "artifact", "release", "version", "instance", "state_dir")
"""What ``run.command`` and hooks may name; smoke commands also get ``{url}``."""


def split_command(cmd: Command, *, shell: bool) -> list[str]:
    """argv for a configured command: a list is taken as is; a string is split like a shell would (``shlex``) but never run through one unless ``shell`` is true."""
    if isinstance(cmd, list):
        return list(cmd)
    if shell:
        return ["/bin/sh", "-c", cmd]
    return shlex.split(cmd)


class BuildConfig(_Model):
    workdir: str = "."
    commands: list[Command] = Field(default_factory=list)
    artifact: str | None = None
    shell: bool = False
    timeout: Duration = 1800.0


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


class Step(_Model):
    weight: int | None = Field(None, ge=0, le=100)
    pause: Duration | Literal["manual"] | None = None

    @field_validator("pause", mode="before")
    @classmethod
    def _pause(cls, v: Any) -> Any:
        if v == "manual" or v is None:
            return v
        return parse_duration(v)

    @model_validator(mode="after")
    def _something(self) -> "Step":
        if self.weight is None and self.pause is None:
            raise ValueError("a step needs a weight, a pause, or both")
        return self


class MatchConfig(_Model):
    header: dict[str, str] = Field(default_factory=dict)
    cookie: dict[str, str] = Field(default_factory=dict)


class AnalysisConfig(_Model):
    interval: Duration = 5.0
    max_error_rate: float = Field(0.01, ge=0, le=1)
    max_p99: Duration | None = None
    max_error_rate_vs_stable: float | None = Field(
        None, ge=0, description="canary error rate may be at most this many times the stable one (plus max_error_rate)"
    )
    max_p99_vs_stable: float | None = Field(None, ge=0, description="canary p99 may be at most this many times the stable one")
    min_requests: int = Field(50, ge=1)
    failure_limit: int = Field(2, ge=1)


class CanaryAnalysis(AnalysisConfig):
    progress_deadline: Duration = Field(
        600.0, description="a step whose analysis is still inconclusive after this fails the rollout (rolled back, exit 1)"
    )


@dataclass(frozen=True)
class Limit:
    """A threshold: absolute, or relative to the previous release's own figure just before the switch
    (the baseline): ``factor * baseline + value``. Written ``0.01``, ``1%``, ``800ms``,
    ``baseline + 0.01``, ``baseline * 2``, ``baseline * 1.5 + 100ms``."""

    value: float
    factor: float | None = None  # None: absolute

    @property
    def relative(self) -> bool:
        return self.factor is not None

    def resolve(self, baseline: float | None) -> float:
        """The limit in effect; a relative limit without a baseline (nothing to compare with) is its margin alone."""
        if self.factor is None:
            return self.value
        return self.factor * (baseline or 0.0) + self.value

    def words(self, fmt: Callable[[float], str]) -> str:
        if self.factor is None:
            return fmt(self.value)
        times = "" if self.factor == 1 else f" × {self.factor:g}"
        plus = f" + {fmt(self.value)}" if self.value else ""
        return f"baseline{times}{plus}"


_LIMIT = re.compile(r"^\s*baseline\s*(?:[*×]\s*(?P<factor>\d+(?:\.\d+)?)\s*)?(?:\+\s*(?P<plus>\S+)\s*)?$")


def _rate(v: Any) -> float:
    if isinstance(v, bool):
        raise ValueError(f"expected a rate like 0.01 or 1%; got {v!r}")
    if isinstance(v, str) and v.strip().endswith("%"):
        try:
            x = float(v.strip()[:-1]) / 100
        except ValueError:
            raise ValueError(f"expected a rate like 0.01 or 1%; got {v!r}") from None
    else:
        try:
            x = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"expected a rate like 0.01 or 1%, or baseline + 0.01; got {v!r}") from None
    if not 0 <= x <= 1:
        raise ValueError(f"a rate is within 0..1 (0%..100%); got {v!r}")
    return x


def _limit_parser(unit: Callable[[Any], float]) -> Callable[[Any], Limit]:
    def parse(v: Any) -> Limit:
        if isinstance(v, Limit):
            return v
        if isinstance(v, str) and "baseline" in v:
            m = _LIMIT.match(v)
            if not m:
                raise ValueError(f"expected baseline, baseline + X, baseline * K or baseline * K + X; got {v!r}")
            factor = float(m.group("factor")) if m.group("factor") else 1.0
            return Limit(unit(m.group("plus")) if m.group("plus") else 0.0, factor)
        return Limit(unit(v))

    return parse


RateLimit = Annotated[Limit, BeforeValidator(_limit_parser(_rate))]
"""A 5xx share: ``0.01``, ``1%``, or relative to the baseline (``baseline + 0.01``)."""
LatencyLimit = Annotated[Limit, BeforeValidator(_limit_parser(parse_duration))]
"""A latency: ``800ms``, or relative to the baseline (``baseline * 1.5``, ``baseline + 100ms``)."""


class WatchAnalysis(_Model):
    """Watching a release after it took traffic (blue-green after the switch; rolling after each batch)."""

    watch: Duration = Field(120.0, description="how long the new release is watched; a breach within it rolls back")
    interval: Duration = 5.0
    max_error_rate: RateLimit = Field(default_factory=lambda: Limit(0.01))
    max_p99: LatencyLimit | None = None
    min_requests: int = Field(50, ge=1)
    failure_limit: int = Field(2, ge=1)
    baseline: Duration = Field(
        60.0, description="the previous release's figures over this long before the switch are the baseline"
    )


class RollingAnalysis(WatchAnalysis):
    watch: Duration = Field(30.0, description="how long each batch's new instances are watched before the next batch")


class RecreateStrategy(_Model):
    type: Literal["recreate"]


class BlueGreenStrategy(_Model):
    type: Literal["blue-green"]
    smoke: Command | None = None
    shell: bool = False
    keep_previous: Duration = 600.0
    auto_promote: bool = True
    analysis: WatchAnalysis | None = None


class SplitKey(_Model):
    """The app's own user key for the canary split (a cookie or a header), hashed into a bucket."""

    cookie: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    header: str | None = Field(None, pattern=r"^[A-Za-z0-9-]{1,64}$")

    @model_validator(mode="after")
    def _one(self) -> "SplitKey":
        if (self.cookie is None) == (self.header is None):
            raise ValueError("strategy.split_key: name exactly one of cookie or header")
        return self


class CanaryStrategy(_Model):
    type: Literal["canary"]
    steps: list[Step] = Field(
        default_factory=lambda: [Step(weight=10, pause=30.0), Step(weight=50, pause=60.0)], min_length=1
    )
    sticky: bool | Literal["client_ip"] = True
    split_key: SplitKey | None = None
    match: MatchConfig | None = None
    analysis: CanaryAnalysis = Field(default_factory=CanaryAnalysis)


def _count_or_percent(v: Any) -> Any:
    if isinstance(v, str):
        s = v.strip()
        if s.endswith("%") and s[:-1].strip().isdigit() and 0 <= int(s[:-1]) <= 100:
            return s.replace(" ", "")
        if s.isdigit():
            return int(s)
        raise ValueError(f"expected a number or a percentage like 25%; got {v!r}")
    return v


CountOrPercent = Annotated[Union[int, str], BeforeValidator(_count_or_percent)]


def resolve_count(value: int | str, total: int, *, round_up: bool) -> int:
    """Kubernetes semantics: percentages of ``total``; surge rounds up, unavailable rounds down."""
    if isinstance(value, int):
        return value
    pct = int(value.rstrip("%"))
    n = total * pct / 100
    return int(-(-n // 1)) if round_up else int(n // 1)


class RollingStrategy(_Model):
    type: Literal["rolling"]
    max_surge: CountOrPercent = 1
    max_unavailable: CountOrPercent = 0
    analysis: RollingAnalysis | None = None

    @field_validator("max_surge", "max_unavailable")
    @classmethod
    def _non_negative(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 0:
            raise ValueError("must not be negative")
        return v


STRATEGY_BLOCKS = {"recreate": RecreateStrategy, "blue-green": BlueGreenStrategy, "canary": CanaryStrategy, "rolling": RollingStrategy}
assert tuple(STRATEGY_BLOCKS) == STRATEGIES, "nonstop.names.STRATEGIES and the strategy blocks disagree"
Strategy = Annotated[
    Union[RecreateStrategy, BlueGreenStrategy, CanaryStrategy, RollingStrategy],
    Field(discriminator="type"),
]


class EmbeddedRouter(_Model):
    type: Literal["embedded"]
    connect_timeout: Duration = 2.0
    read_timeout: Duration = 60.0
    idle_timeout: Duration = 75.0
    max_body: int | None = Field(None, ge=0)
    workers: int = Field(1, ge=1, le=64)


class NginxRouter(_Model):
    type: Literal["nginx"]
    mode: Literal["managed", "external"] = "managed"
    binary: str = "nginx"
    upstream_file: str | None = None
    test_command: Command = "nginx -t"
    reload_command: Command = "nginx -s reload"
    access_log: str | None = None
    worker_shutdown_timeout: Duration = 30.0
    client_keepalive_timeout: Duration = Field(
        75.0, description="managed: keep-alive timeout for clients; 0 turns client keep-alive off (no reload drop, fewer req/s)"
    )

    @model_validator(mode="after")
    def _external(self) -> "NginxRouter":
        if self.mode == "external" and not self.upstream_file:
            raise ValueError("router.upstream_file: required with mode: external")
        return self


class HaproxyRouter(_Model):
    type: Literal["haproxy"]
    mode: Literal["managed", "external"] = "managed"
    binary: str = "haproxy"
    socket: str | None = None
    backend: str | None = None

    @model_validator(mode="after")
    def _external(self) -> "HaproxyRouter":
        if self.mode == "external" and not (self.socket and self.backend):
            raise ValueError("router.socket: router.socket and router.backend are required with mode: external")
        return self


Router = Annotated[Union[EmbeddedRouter, NginxRouter, HaproxyRouter], Field(discriminator="type")]


class DashboardConfig(_Model):
    listen: str = "127.0.0.1:9900"
    enabled: bool = True

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        _addr(v, "dashboard.listen")
        return v


class NotifyConfig(_Model):
    url: str
    headers: dict[str, str] = Field(default_factory=dict)
    events: list[Literal["start", "step", "success", "failure", "rollback"]] | None = None
    timeout: Duration = 5.0

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v


class CertificateFiles(_Model):
    """A certificate chain and its private key, as PEM files."""

    cert: str
    key: str


class AcmeConfig(_Model):
    """Certificates issued and renewed automatically (ACME, RFC 8555; HTTP-01 answered on ``listen``)."""

    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    domains: list[str] = Field(min_length=1)
    directory: str = "https://acme-v02.api.letsencrypt.org/directory"
    ca_bundle: str | None = Field(None, description="CA certificates to trust for the ACME directory (a private or test CA)")
    renew_before: Duration = Field(30 * 86400.0, description="renew a certificate this long before it expires")

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        for d in v:
            if not re.fullmatch(r"(\*\.)?[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*", d):
                raise ValueError(f"not a domain name: {d!r}")
            if d.startswith("*."):
                # HTTP-01 (the only challenge nonstop answers) cannot prove a wildcard (RFC 8555 §8.3)
                raise ValueError(f"{d!r}: a wildcard needs a DNS-01 challenge, which nonstop does not answer; "
                                 "list the names, or use tls.cert/tls.key from another ACME client")
        if len({d.lower() for d in v}) != len(v):
            raise ValueError("a domain is listed twice")
        return v

    @field_validator("directory")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("https://", "http://")):
            raise ValueError("must be an https:// URL of an ACME directory")
        return v


class TlsConfig(_Model):
    """HTTPS on the embedded proxy: certificates from files (several: chosen by SNI) or from ACME."""

    listen: str = "0.0.0.0:443"
    cert: str | None = None
    key: str | None = None
    certificates: list[CertificateFiles] = Field(default_factory=list, description="more certificates, chosen by SNI")
    acme: AcmeConfig | None = None
    redirect_http: bool = False
    hsts: Duration | None = Field(None, description="Strict-Transport-Security max-age on HTTPS responses (e.g. 365d)")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        _addr(v, "tls.listen")
        return v

    @model_validator(mode="after")
    def _source(self) -> "TlsConfig":
        if (self.cert is None) != (self.key is None):
            missing = "key" if self.key is None else "cert"
            raise ValueError(f"tls.{missing}: required with tls.{'cert' if missing == 'key' else 'key'}")
        if self.cert is None and not self.certificates and self.acme is None:
            raise ValueError("tls.cert: name a certificate (cert and key, certificates) or acme")
        return self


class GatewayRef(_Model):
    """A Gateway API Gateway that HTTPRoutes attach to."""

    name: str
    namespace: str | None = None
    section_name: str | None = None


class KubernetesConfig(_Model):
    """Where and how the ``kubernetes`` runtime deploys (nonstop beyond one host)."""

    context: str | None = Field(None, description="kubeconfig context (default: the current one)")
    kubeconfig: str | None = Field(None, description="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, or in-cluster)")
    namespace: str = Field("default", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    service_port: int = Field(80, ge=1, le=65535)
    gateway: GatewayRef | None = None
    prestop_sleep: Duration = Field(10.0, description="endpoints are removed while the pod keeps serving")
    prometheus: str | None = Field(None, description="canary analysis source: a Prometheus base URL")
    prestop: Literal["sleep", "exec"] = Field(
        "sleep",
        description="how the preStop delay is written: the native sleep action (Kubernetes 1.30+), "
        "or exec of the image's own `sleep` binary (older clusters)",
    )
    progress_deadline: Duration | None = Field(
        None, description="progressDeadlineSeconds of each Deployment (default: health.startup_timeout + 60s)"
    )
    lease_duration: Duration = Field(
        60.0, description="the deploy lock (a Lease) expires this long after its holder's last renewal"
    )
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    hostnames: list[str] = Field(default_factory=list, description="HTTPRoute hostnames (with gateway)")
    resources: dict[Literal["requests", "limits"], dict[str, str]] = Field(
        default_factory=dict, description="the container's resources, as in a pod spec ({requests: {cpu: 250m}})"
    )
    image_pull_secrets: list[str] = Field(default_factory=list, description="Secrets for a private registry")
    prometheus_queries: dict[Literal["requests", "errors", "latency"], str] = Field(
        default_factory=dict,
        description="PromQL templates replacing the defaults ($namespace, $pods, $window); see docs/kubernetes.md",
    )

    @field_validator("prometheus")
    @classmethod
    def _prometheus_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL of a Prometheus server")
        return v

    @field_validator("lease_duration")
    @classmethod
    def _lease(cls, v: float) -> float:
        if v < 10:
            raise ValueError("must be at least 10s (the holder renews it every third of it)")
        return v

    @field_validator("hostnames")
    @classmethod
    def _hostnames(cls, v: list[str]) -> list[str]:
        for h in v:
            if not re.fullmatch(r"(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", h):
                raise ValueError(f"not a hostname: {h!r} (lowercase DNS names, optionally starting with *.)")
        return v

    @field_validator("image_pull_secrets")
    @classmethod
    def _secrets(cls, v: list[str]) -> list[str]:
        for name in v:
            if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", name):
                raise ValueError(f"not a Secret name: {name!r}")
        return v

    @field_validator("prometheus_queries")
    @classmethod
    def _queries(cls, v: dict[str, str]) -> dict[str, str]:
        import string

        for key, q in v.items():
            try:
                names = {m[1] or m[2] for m in string.Template.pattern.findall(q) if m[1] or m[2]}
            except Exception:  # pragma: no cover - findall on a str does not raise
                names = set()
            unknown = names - {"namespace", "pods", "window", "app", "track"}
            if unknown:
                raise ValueError(
                    f"kubernetes.prometheus_queries.{key}: unknown placeholder ${sorted(unknown)[0]}; known: $namespace, $pods, $window, $app, $track"
                )
            if "$pods" not in q and "${pods}" not in q:
                raise ValueError(f"kubernetes.prometheus_queries.{key}: must select pods with $pods (canary and stable are told apart by pod name)")
        return v


class Config(_Model):
    """Everything nonstop knows about one app, as written in ``nonstop.yml``."""

    app: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    listen: str = "127.0.0.1:8080"
    state_dir: str = ".nonstop"
    build: BuildConfig | None = None
    run: RunConfig
    health: HealthConfig = Field(default_factory=HealthConfig)
    strategy: Strategy = Field(default_factory=lambda: BlueGreenStrategy(type="blue-green"))
    drain_timeout: Duration = 30.0
    hold_timeout: Duration = 10.0
    keep_releases: int = Field(5, ge=2)
    router: Router = Field(default_factory=lambda: EmbeddedRouter(type="embedded"))
    trusted_proxies: list[str] = Field(
        default_factory=list, description="peers (CIDR) whose X-Forwarded-For/-Proto/-Host are believed"
    )
    tls: TlsConfig | None = None
    kubernetes: KubernetesConfig | None = None
    dashboard: DashboardConfig = Field(default_factory=DashboardConfig)
    notify: list[NotifyConfig] = Field(default_factory=list)
    hooks: dict[Literal["pre_deploy", "post_deploy"], Command] = Field(default_factory=dict)

    # Where the file was read from; paths in the config are relative to it.
    source: str | None = Field(None, exclude=True)

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        _addr(v, "listen")
        return v

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        import ipaddress

        out = []
        for i, c in enumerate(v):
            try:
                out.append(str(ipaddress.ip_network(str(c).strip(), strict=False)))
            except ValueError:
                raise ValueError(f"trusted_proxies[{i}]: expected an address or CIDR like 10.0.0.0/8; got {c!r}") from None
        return out

    @model_validator(mode="after")
    def _cross_checks(self) -> "Config":
        if self.run.runtime == "kubernetes":
            return self._kubernetes_checks()
        if self.kubernetes is not None:
            raise ValueError("kubernetes: only used with run.runtime: kubernetes")
        ports = self.run.port_list
        s = self.strategy
        n = self.run.instances
        if isinstance(s, RollingStrategy):
            surge = resolve_count(s.max_surge, n, round_up=True)
            unavail = resolve_count(s.max_unavailable, n, round_up=False)
            if surge == 0 and unavail == 0:
                raise ValueError(
                    "strategy: max_surge and max_unavailable are both 0: a rolling update could never make progress"
                )
            need = n + surge
        elif isinstance(s, (BlueGreenStrategy, CanaryStrategy)):
            need = 2 * n
        else:
            need = n
        if len(ports) < need:
            raise ValueError(
                f"run.ports: {self.run.ports} gives {len(ports)} port(s) but strategy {s.type} "
                f"with {n} instance(s) needs {need}"
            )
        lport = _addr(self.listen, "listen")[1]
        if lport in ports:
            raise ValueError(f"listen: port {lport} is also in run.ports")
        if isinstance(s, CanaryStrategy):
            weights = [st.weight for st in s.steps if st.weight is not None]
            if any(b < a for a, b in zip(weights, weights[1:])):
                raise ValueError("strategy.steps: weights must not decrease (raising the weight only adds users)")
            self._check_router_can("weights", "canary steps")
            self._check_router_can("stats", "canary analysis (it reads per-release stats)")
            if s.match and (s.match.header or s.match.cookie):
                self._check_router_can("match", "strategy.match")
            if s.sticky is not False:
                self._check_router_can("sticky", "strategy.sticky (set sticky: false for a per-request split)")
            if s.split_key is not None:
                self._check_router_can("split_key", "strategy.split_key")
                if self.router.type == "nginx" and s.split_key.cookie and not re.fullmatch(r"[A-Za-z0-9_]+", s.split_key.cookie):
                    raise ValueError(
                        f"strategy.split_key.cookie: nginx reads cookies as $cookie_NAME, so the name may hold only "
                        f"letters, digits and _; got {s.split_key.cookie!r}"
                    )
        if isinstance(s, RecreateStrategy):
            self._check_router_can("hold", "strategy recreate (requests held while no instance is ready)")
        if self.tls is not None:
            if self.router.type != "embedded":
                raise ValueError(f"tls: HTTPS is terminated by the embedded proxy; with router {self.router.type}, configure TLS in {self.router.type}")
            tport = _addr(self.tls.listen, "tls.listen")[1]
            if tport in ports:
                raise ValueError(f"tls.listen: port {tport} is also in run.ports")
            if tport == lport:
                raise ValueError(f"tls.listen: port {tport} is also the plain listen port")
        return self

    def _kubernetes_checks(self) -> "Config":
        """``listen``, ``ports`` and ``router`` are the cluster's (a Service or a Gateway), not nonstop's."""
        if self.run.image is None:
            raise ValueError("run.image: required with runtime kubernetes (an image per release, pulled by the cluster)")
        if self.tls is not None:
            raise ValueError("tls: not used with runtime kubernetes (terminate TLS at the cluster's Gateway or Ingress)")
        if self.router.type != "embedded":
            raise ValueError("router: not used with runtime kubernetes (the Service or the Gateway routes)")
        if not re.fullmatch(r"[a-z]([-a-z0-9]{0,48}[a-z0-9])?", self.app):
            raise ValueError(
                "app: with runtime kubernetes the app's name names its Deployments and Services "
                "(<app>-canary, <app>-nonstop): lowercase letters, digits and '-', starting with a letter, "
                "at most 50 characters"
            )
        if self.run.stop_signal != "SIGTERM":
            raise ValueError(
                "run.stop_signal: the kubelet stops a container with SIGTERM (or the image's STOPSIGNAL); "
                "set STOPSIGNAL in the image instead"
            )
        h = self.health
        if h.expect_body is not None:
            raise ValueError(
                "health.expect_body: the kubelet's HTTP probe checks the status code only; remove it "
                "(Spring Boot's /actuator/health answers 503 while it is not UP)"
            )
        if h.type == "http" and not (200 <= h.expect_status <= 399):
            raise ValueError("health.expect_status: the kubelet's HTTP probe passes on 200-399 only")
        k = self.kubernetes
        if k is not None and k.progress_deadline is not None and k.progress_deadline < h.startup_timeout:
            raise ValueError(
                "kubernetes.progress_deadline: shorter than health.startup_timeout; a pod allowed to start that "
                "slowly would be declared stalled"
            )
        metrics = k is not None and bool(k.prometheus)
        s = self.strategy
        if isinstance(s, RollingStrategy):
            n = self.run.instances
            if resolve_count(s.max_surge, n, round_up=True) == 0 and resolve_count(s.max_unavailable, n, round_up=False) == 0:
                raise ValueError(
                    "strategy: max_surge and max_unavailable are both 0: a rolling update could never make progress"
                )
            if s.analysis is not None and not metrics:
                raise ValueError(
                    "kubernetes.prometheus: strategy.analysis needs a metrics source in a cluster; "
                    "name a Prometheus URL or remove the analysis block"
                )
        if isinstance(s, BlueGreenStrategy):
            if s.smoke is not None:
                raise ValueError(
                    "strategy.smoke: not run with runtime kubernetes (the command would run where nonstop runs, "
                    "outside the cluster); gate the new color with its readiness probe or with strategy.analysis"
                )
            if s.analysis is not None and not metrics:
                raise ValueError(
                    "kubernetes.prometheus: strategy.analysis needs a metrics source in a cluster; "
                    "name a Prometheus URL or remove the analysis block"
                )
        if isinstance(s, CanaryStrategy):
            weights = [st.weight for st in s.steps if st.weight is not None]
            if any(b < a for a, b in zip(weights, weights[1:])):
                raise ValueError("strategy.steps: weights must not decrease (raising the weight only adds users)")
            if s.sticky == "client_ip":
                raise ValueError(
                    "strategy.sticky: client_ip cannot be honoured in a cluster (neither a Service nor an HTTPRoute "
                    "splits by client address); use sticky: true with kubernetes.gateway, or sticky: false"
                )
            if s.match and len(s.match.cookie) > 1:
                raise ValueError(
                    "strategy.match.cookie: an HTTPRoute matches cookies through one Cookie header rule: name at most one"
                )
            if s.match and any(name.lower() == "cookie" for name in s.match.header) and s.match.cookie:
                raise ValueError("strategy.match: a Cookie header match and a cookie match cannot be combined")
        if isinstance(s, CanaryStrategy):
            gw = self.kubernetes is not None and self.kubernetes.gateway is not None
            if gw and s.split_key is not None:
                raise ValueError(
                    "strategy.split_key: an HTTPRoute cannot hash the app's own user key; remove it "
                    "(sticky: true keeps a user on one side through the gateway's session persistence)"
                )
            if not gw:
                if s.sticky is not False:
                    raise ValueError(
                        "strategy.sticky: without kubernetes.gateway the canary weight is a replica ratio behind one "
                        "Service, which cannot keep a user on one version; set sticky: false or name a gateway"
                    )
                if s.match and (s.match.header or s.match.cookie):
                    raise ValueError("strategy.match: needs kubernetes.gateway (an HTTPRoute header/cookie match)")
                if s.split_key is not None:
                    raise ValueError("strategy.split_key: needs kubernetes.gateway")
            if self.kubernetes is None or not self.kubernetes.prometheus:
                raise ValueError(
                    "kubernetes.prometheus: canary analysis needs a metrics source in a cluster "
                    "(the 5xx share and p99 of canary and stable pods); name a Prometheus URL"
                )
        return self

    def _check_router_can(self, capability: str, what: str) -> None:
        if capability not in router_capabilities(self.router):
            r = self.router
            raise ValueError(f"router: {r.type} ({getattr(r, 'mode', 'managed')}) cannot honour {what}")

    # -- derived paths -------------------------------------------------
    @property
    def base_dir(self) -> Path:
        return Path(self.source).resolve().parent if self.source else Path.cwd()

    def path(self, p: str) -> Path:
        """A path from the config, relative to the config file's folder."""
        q = Path(os.path.expanduser(p))
        return q if q.is_absolute() else self.base_dir / q

    @property
    def state_path(self) -> Path:
        return self.path(self.state_dir)

    @property
    def listen_addr(self) -> tuple[str, int]:
        return _addr(self.listen, "listen")


# What each router can do; config load refuses what a router cannot honour
# (DESIGN.md §6: "says so at config load, not mid-deploy").
ROUTER_CAPABILITIES: dict[str, frozenset[str]] = {
    "embedded": frozenset({"weights", "match", "sticky", "split_key", "stats", "drain", "hold"}),
    "nginx": frozenset({"weights", "match", "sticky", "split_key", "stats", "drain"}),
    "haproxy": frozenset({"weights", "match", "sticky", "split_key", "stats", "drain"}),
}


assert tuple(ROUTER_CAPABILITIES) == ROUTERS, "nonstop.names.ROUTERS and the router capabilities disagree"


def router_capabilities(r: "EmbeddedRouter | NginxRouter | HaproxyRouter") -> frozenset[str]:
    """What this router, in this mode, can do."""
    caps = ROUTER_CAPABILITIES[r.type]
    if r.type == "haproxy" and r.mode == "external":
        caps -= {"match", "sticky", "split_key"}  # only server weights in the user's backend
    if r.type == "nginx" and r.mode == "external" and not r.access_log:
        caps -= {"stats"}  # nonstop reads stats from the JSON access log it is pointed at
    return caps


_TAGS = frozenset(STRATEGIES) | frozenset(ROUTERS)  # discriminator tags pydantic inserts in locations
_TYPE_WORDS = {
    "string_type": "a string", "list_type": "a list", "int_type": "a whole number", "int_parsing": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false", "bool_parsing": "true or false",
    "dict_type": "a mapping", "model_type": "a mapping", "none_required": "null",
}


def _loc_parts(loc: tuple) -> tuple:
    """A pydantic error location as the user wrote it: without the union tags and member types pydantic inserts."""
    out = []
    for part in loc:
        if isinstance(part, str) and (part in _TAGS or part.startswith("function-") or "[" in part
                                      or part in ("str", "int", "float", "bool", "dict", "list", "none")):
            continue  # a discriminator tag or a union member's type: the user never wrote it
        out.append(part)
    return tuple(out)


def _field_path(loc: tuple) -> str:
    out = ""
    for part in _loc_parts(loc):
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def load(path: str | os.PathLike | None = None) -> Config:
    """Read and validate ``nonstop.yml``. Raises ``ConfigError`` (``ConfigProblems``: every problem, each with
    its field and line) and never exits."""
    p = configfile.find(path)
    data, lines = configfile.read_located(p)
    return from_dict(data, source=str(p.resolve()), shown=str(p), lines=lines)


def from_dict(
    data: dict, *, source: str | None = None, shown: str | None = None, lines: configfile.Lines | None = None
) -> Config:
    """Validate ``data``; every problem is reported at once (``ConfigProblems``), each naming its field and, when
    ``lines`` says where the setting is written, its line."""
    try:
        return Config.model_validate({**data, "source": source})
    except ValidationError as e:
        raise ConfigProblems(_problems(e, shown or source, lines)) from None


def _problems(e: ValidationError, file: str | None, lines: configfile.Lines | None) -> list[Problem]:
    by_field: dict[str, list[dict]] = {}
    for err in e.errors():
        by_field.setdefault(_field_path(tuple(err["loc"])) or "(top level)", []).append(err)
    problems = []
    for field, errs in by_field.items():
        err = errs[0]
        msg = err["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            if msg.startswith(prefix):
                msg = msg[len(prefix):]
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        elif err["type"] == "missing":
            msg = "required setting is missing"
        elif err["type"] == "union_tag_invalid":
            ctx = err.get("ctx", {})
            msg = f"unknown type {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
            field = (field + ".type").lstrip(".") if field != "(top level)" else "type"
        elif len(errs) > 1 and all(x["type"] in _TYPE_WORDS for x in errs):
            # one value against each member of a union (a command: a string or a list)
            wanted = " or ".join(dict.fromkeys(_TYPE_WORDS[x["type"]] for x in errs))
            msg = f"expected {wanted}; got {err.get('input')!r}"
        # Cross-field errors name their own field in the message ("run.ports: ...").
        m = re.match(r"^([a-z_]+(?:\.[a-z_]+|\[\d+\])*): (.*)$", msg, re.S)
        if m:
            field, msg = m.group(1), m.group(2)
        path = configfile.field_path(field) if field != "(top level)" else ()
        problems.append(Problem(field, msg, file, configfile.line_of(lines, path)))
    return sorted(problems, key=lambda p: (p.line is None, p.line or 0))


TEMPLATE = """\
# nonstop.yml — how nonstop runs and deploys this app (see DESIGN.md).
# `nonstop check` validates it and what it names (programs, ports, router) without changing anything.
app: {app}
listen: 127.0.0.1:8080            # public address clients use (the proxy listens here)
# state_dir: .nonstop             # state, logs, releases, sockets; default beside this file

# build:                          # optional: run before each deploy, then copy the artifact
#   workdir: .
#   commands: ["git pull", "./gradlew clean bootJar"]   # may name {{version}} {{release}} {{state_dir}}
#   artifact: build/libs/app.jar

run:
  # Any command; {{port}} is filled in per instance. Also: {{artifact}} {{release}} {{version}} {{instance}} {{state_dir}}.
  # Split like a shell would, never run through one (set shell: true to opt in).
  command: java -jar {{artifact}} --server.port={{port}}
  ports: 8081-8082                # blue-green and canary need 2 x instances; rolling instances + max_surge
  instances: 1
  stop_signal: SIGTERM
  stop_timeout: 30s               # then SIGKILL

health:
  path: /actuator/health
  expect_status: 200
  expect_body: UP
  interval: 200ms                 # a booting instance: every 50ms until its first pass (first 10s)
  timeout: 2s
  startup_timeout: 120s
  healthy_threshold: 2

strategy:
  type: blue-green                # recreate | blue-green | canary | rolling
  keep_previous: 10m              # old color stays warm for an instant rollback
  # canary:
  # type: canary
  # steps: [{{weight: 10, pause: 30s}}, {{weight: 50, pause: 1m}}, {{pause: manual}}]
  # analysis: {{interval: 5s, max_error_rate: 0.01, max_p99: 800ms, min_requests: 50, failure_limit: 2}}

drain_timeout: 30s                # in-flight requests of a retired instance finish within this
hold_timeout: 10s                 # a request waits this long for a ready instance before 503
keep_releases: 5

router:
  type: embedded                  # embedded | nginx | haproxy

dashboard:
  listen: 127.0.0.1:{dashboard_port:<14}# loopback; changes need the token file in the state dir
"""
"""``nonstop init`` fills in ``app`` and ``dashboard_port`` (9900, or the next port free on this machine)."""
