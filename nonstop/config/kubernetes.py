"""The ``kubernetes`` block: where and how the ``kubernetes`` runtime deploys (namespace, gateway, Prometheus)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from nonstop.config.fields import Duration, _Model


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
    poll_interval: Duration = Field(
        2.0, description="how often a rollout's Deployments (and the shared state, for the agent) are read from the API server"
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

    @field_validator("poll_interval")
    @classmethod
    def _poll(cls, v: float) -> float:
        if not 0.05 <= v <= 60:
            raise ValueError("must be between 50ms and 60s")
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
