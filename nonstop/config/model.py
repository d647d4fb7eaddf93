"""The root ``Config``: every block of ``nonstop.yml`` in one object, the checks that span blocks (ports enough
for the strategy, what the router can honour, what a cluster cannot do), and the paths derived from the file."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from nonstop.config.dashboard import DashboardConfig
from nonstop.config.fields import Command, Duration, _Model, _addr
from nonstop.config.kubernetes import KubernetesConfig
from nonstop.config.notify import NotifyConfig
from nonstop.config.routers import EmbeddedRouter, Router, router_capabilities
from nonstop.config.run import HOOK_PLACEHOLDERS, BuildConfig, HealthConfig, RunConfig, _unknown_placeholders
from nonstop.config.strategies import BlueGreenStrategy, CanaryStrategy, RecreateStrategy, RollingStrategy, Strategy, resolve_count
from nonstop.config.tls import TlsConfig


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

    @field_validator("hooks")
    @classmethod
    def _hooks(cls, v: dict) -> dict:
        for name, cmd in v.items():
            text = cmd if isinstance(cmd, str) else " ".join(cmd)
            if not text.strip():
                raise ValueError(f"hooks.{name}: must not be empty")
            unknown = _unknown_placeholders(text, HOOK_PLACEHOLDERS)
            if unknown:
                raise ValueError(
                    f"hooks.{name}: unknown placeholder {{{unknown[0]}}}; a hook runs once per deploy and knows "
                    + ", ".join("{" + p + "}" for p in HOOK_PLACEHOLDERS)
                )
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
        if isinstance(s, BlueGreenStrategy) and s.smoke is not None:
            raise ValueError(
                "strategy.smoke: not run with runtime kubernetes (the command would run where nonstop runs, "
                "outside the cluster); gate the new color with its readiness probe or with strategy.analysis"
            )
        if isinstance(s, (RollingStrategy, BlueGreenStrategy)) and s.analysis is not None and not metrics:
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
