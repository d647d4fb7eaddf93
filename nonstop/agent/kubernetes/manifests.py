"""The objects nonstop applies to a cluster: pure, deterministic (same input, same bytes).

``render(cfg, shape)`` → the workload objects of a ``Shape``, in a fixed
order: Deployments (in track order), Services, PodDisruptionBudgets, the
HTTPRoute. ``state_configmap`` and ``lease`` build the two coordination
objects (the shared state and the deploy lock); they are written with
optimistic concurrency, never server-side applied, and are not part of what
``nonstop manifests`` prints.

Every object carries these labels (docs/kubernetes.md):

- ``app.kubernetes.io/name: <app>``, ``app.kubernetes.io/managed-by: nonstop``,
  ``nonstop.dev/app: <app>`` — what nonstop owns (it changes or deletes only
  objects with the managed-by label and its app);
- on Deployments and pods, ``nonstop.dev/track`` (main, canary, blue, green),
  ``nonstop.dev/release`` (the release id, as a label value) and, on pods,
  ``nonstop.dev/lane`` (what the app's Service selects without a gateway)
  and ``app.kubernetes.io/version``.

How the config maps onto a pod (the zero-downtime parts):

- readinessProbe from ``health``: ``periodSeconds`` is ``interval`` rounded up
  to whole seconds (the kubelet's minimum is 1 s, so ``200ms`` becomes 1 s),
  ``timeoutSeconds`` likewise, ``successThreshold`` = ``healthy_threshold``
  (readiness may need more than one pass), ``failureThreshold`` =
  ``unhealthy_threshold``;
- startupProbe: the same check every second, ``failureThreshold`` =
  ``startup_timeout`` in seconds, ``successThreshold`` 1 (the kubelet refuses
  anything else for startup and liveness probes). No livenessProbe: nonstop
  never restarts a busy pod on its own; the kubelet restarts crashed ones;
- preStop: ``prestop_sleep`` as the native ``sleep`` action, or ``exec sleep N``
  with ``kubernetes.prestop: exec`` (clusters before 1.30; the image needs a
  ``sleep`` binary). Endpoints are removed while the pod keeps serving;
- ``terminationGracePeriodSeconds`` = prestop_sleep + max(drain_timeout,
  stop_timeout): the delay, then SIGTERM and the time the app has to finish
  its in-flight requests and exit (then SIGKILL). The kubelet always sends
  SIGTERM (or the image's STOPSIGNAL); config load refuses another
  ``stop_signal``;
- ``progressDeadlineSeconds`` = ``kubernetes.progress_deadline``, default
  ``startup_timeout`` + 60 s (scheduling and the image pull come first).
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from typing import Any

from nonstop.agent.kubernetes.shapes import (
    KRelease,
    Shape,
    Track,
    deployment_name,
    lane,
    service_name,
)
from nonstop.config import CanaryStrategy, Config, RollingStrategy, split_command

__all__ = [
    "FIELD_MANAGER",
    "MANAGED_BY",
    "LABEL_APP",
    "LABEL_TRACK",
    "LABEL_RELEASE",
    "LABEL_LANE",
    "ANN_RELEASE",
    "KINDS",
    "label_value",
    "owner_labels",
    "owner_selector",
    "render",
    "deployment",
    "state_configmap",
    "state_name",
    "lease",
    "lease_name",
    "microtime",
    "progress_deadline",
    "grace_period",
    "to_yaml",
]

FIELD_MANAGER = "nonstop"
MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_VERSION = "app.kubernetes.io/version"
LABEL_APP = "nonstop.dev/app"
LABEL_TRACK = "nonstop.dev/track"
LABEL_RELEASE = "nonstop.dev/release"
LABEL_LANE = "nonstop.dev/lane"
ANN_RELEASE = "nonstop.dev/release-id"
ANN_IMAGE = "nonstop.dev/image"

KINDS = ("Deployment", "Service", "PodDisruptionBudget", "HTTPRoute")
"""The workload kinds ``render`` produces (and the only ones nonstop prunes)."""

PROGRESS_MARGIN = 60.0  # seconds before startup_timeout counts: scheduling, the image pull
GATEWAY_GROUP = "gateway.networking.k8s.io"


def label_value(text: str) -> str:
    """``text`` as a label value: at most 63 characters, starting and ending with a letter or digit."""
    v = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", v)


def owner_labels(cfg: Config) -> dict[str, str]:
    return {LABEL_NAME: cfg.app, MANAGED_BY: FIELD_MANAGER, LABEL_APP: cfg.app}


def owner_selector(cfg: Config) -> str:
    """The label selector of everything nonstop owns for this app."""
    return f"{MANAGED_BY}={FIELD_MANAGER},{LABEL_APP}={cfg.app}"


def _meta(cfg: Config, name: str, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None) -> dict:
    assert cfg.kubernetes is not None
    m: dict[str, Any] = {"name": name, "namespace": cfg.kubernetes.namespace, "labels": {**owner_labels(cfg), **(labels or {})}}
    if annotations:
        m["annotations"] = annotations
    return m


def _seconds(x: float) -> int:
    return int(math.ceil(round(x, 6)))


def progress_deadline(cfg: Config) -> int:
    k = cfg.kubernetes
    explicit = k.progress_deadline if k is not None else None
    return _seconds(explicit if explicit is not None else cfg.health.startup_timeout + PROGRESS_MARGIN)


def grace_period(cfg: Config) -> int:
    k = cfg.kubernetes
    prestop = k.prestop_sleep if k is not None else 0.0
    return _seconds(prestop + max(cfg.drain_timeout, cfg.run.stop_timeout))


def _probe_handler(cfg: Config) -> dict:
    h = cfg.health
    if h.type == "tcp":
        return {"tcpSocket": {"port": "http"}}
    if h.type == "command":
        assert h.command is not None
        argv = split_command(h.command, shell=h.shell)
        port = str(cfg.run.container_port)
        return {"exec": {"command": [a.replace("{port}", port) for a in argv]}}
    return {"httpGet": {"path": h.path, "port": "http", "scheme": "HTTP"}}


def _probes(cfg: Config) -> tuple[dict, dict]:
    h = cfg.health
    period = max(1, _seconds(h.interval))
    timeout = max(1, _seconds(h.timeout))
    readiness = {
        **_probe_handler(cfg),
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "successThreshold": h.healthy_threshold,
        "failureThreshold": h.unhealthy_threshold,
    }
    startup = {
        **_probe_handler(cfg),
        "periodSeconds": 1,
        "timeoutSeconds": timeout,
        "successThreshold": 1,  # the kubelet refuses another value for startup probes
        "failureThreshold": max(1, _seconds(h.startup_timeout)),
    }
    return readiness, startup


def _prestop(cfg: Config) -> dict | None:
    k = cfg.kubernetes
    assert k is not None
    secs = _seconds(k.prestop_sleep)
    if secs <= 0:
        return None
    if k.prestop == "exec":
        return {"exec": {"command": ["sleep", str(secs)]}}
    return {"sleep": {"seconds": secs}}


def _container(cfg: Config, release: KRelease) -> dict:
    k = cfg.kubernetes
    assert k is not None and cfg.run.container_port is not None
    readiness, startup = _probes(cfg)
    c: dict[str, Any] = {
        "name": "app",
        "image": release.image_ref,
        "imagePullPolicy": "IfNotPresent",
    }
    if cfg.run.args:
        c["args"] = list(cfg.run.args)
    if cfg.run.env:
        c["env"] = [{"name": n, "value": v} for n, v in sorted(cfg.run.env.items())]
    c["ports"] = [{"name": "http", "containerPort": cfg.run.container_port, "protocol": "TCP"}]
    c["readinessProbe"] = readiness
    c["startupProbe"] = startup
    pre = _prestop(cfg)
    if pre is not None:
        c["lifecycle"] = {"preStop": pre}
    if k.resources:
        c["resources"] = {kind: dict(sorted(v.items())) for kind, v in sorted(k.resources.items())}
    return c


def _rollout_strategy(cfg: Config, shape: Shape, track: Track) -> dict:
    if shape.strategy == "recreate" and track.name == "main":
        return {"type": "Recreate"}
    s = cfg.strategy
    if track.name == "main" and isinstance(s, RollingStrategy):
        return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": s.max_surge, "maxUnavailable": s.max_unavailable}}
    # Other tracks change their template while they take no traffic, or (the canary's stable side at
    # promotion) must never lose capacity: surge a quarter, never fewer ready pods than asked for.
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}}


def deployment(cfg: Config, shape: Shape, track: Track) -> dict:
    k = cfg.kubernetes
    assert k is not None
    name = deployment_name(cfg.app, track.name)
    rel = track.release
    selector = {LABEL_APP: cfg.app, LABEL_TRACK: track.name}
    pod_labels = {
        **owner_labels(cfg),
        LABEL_VERSION: label_value(rel.version),
        LABEL_TRACK: track.name,
        LABEL_LANE: lane(track.name),
        LABEL_RELEASE: label_value(rel.id),
    }
    pod_spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": grace_period(cfg),
        "containers": [_container(cfg, rel)],
    }
    if k.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in k.image_pull_secrets]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(
            cfg, name, {LABEL_TRACK: track.name, LABEL_RELEASE: label_value(rel.id)}, {ANN_RELEASE: rel.id, ANN_IMAGE: rel.image_ref}
        ),
        "spec": {
            "replicas": track.replicas,
            "revisionHistoryLimit": cfg.keep_releases,
            "progressDeadlineSeconds": progress_deadline(cfg),
            "selector": {"matchLabels": selector},
            "strategy": _rollout_strategy(cfg, shape, track),
            "template": {
                "metadata": {"labels": pod_labels, "annotations": {ANN_RELEASE: rel.id}},
                "spec": pod_spec,
            },
        },
    }


def _service(cfg: Config, name: str, selector: dict[str, str], *, exposed: bool) -> dict:
    k = cfg.kubernetes
    assert k is not None
    spec: dict[str, Any] = {"type": k.service_type if exposed else "ClusterIP", "selector": {LABEL_APP: cfg.app, **selector}}
    spec["ports"] = [{"name": "http", "port": k.service_port, "targetPort": "http", "protocol": "TCP"}]
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(cfg, name), "spec": spec}


def _services(cfg: Config, shape: Shape) -> list[dict]:
    k = cfg.kubernetes
    assert k is not None
    gw = k.gateway is not None
    primary = shape.primary
    # The app's own Service: the primary's lane without a gateway (the canary shares the stable lane,
    # so the replica ratio splits), the primary track alone with one (the route splits north-south
    # traffic; in-cluster clients stay on the primary).
    main_sel = {LABEL_TRACK: primary} if gw else {LABEL_LANE: lane(primary)}
    out = [_service(cfg, service_name(cfg.app), main_sel, exposed=True)]
    if gw:
        for t in shape.tracks:  # the route's backendRefs
            out.append(_service(cfg, service_name(cfg.app, t.name), {LABEL_TRACK: t.name}, exposed=False))
    if shape.preview and shape.track(shape.preview) is not None:
        out.append(_service(cfg, f"{cfg.app}-preview", {LABEL_TRACK: shape.preview}, exposed=False))
    return out


def _pdbs(cfg: Config, shape: Shape) -> list[dict]:
    out = []
    for t in shape.tracks:
        if t.replicas < 2:
            continue  # a budget over one pod would block every node drain
        name = deployment_name(cfg.app, t.name)
        out.append(
            {
                "apiVersion": "policy/v1",
                "kind": "PodDisruptionBudget",
                "metadata": _meta(cfg, name, {LABEL_TRACK: t.name}),
                "spec": {
                    "maxUnavailable": 1,
                    "selector": {"matchLabels": {LABEL_APP: cfg.app, LABEL_TRACK: t.name}},
                    "unhealthyPodEvictionPolicy": "AlwaysAllow",
                },
            }
        )
    return out


def _cookie_regex(name: str, value: str) -> str:
    # RE2 (Envoy, most gateways) has no lookaround: one cookie among others in the Cookie header
    return f"^(.*;\\s*)?{re.escape(name)}={re.escape(value)}(\\s*;.*)?$"


def _backend(cfg: Config, track: str, weight: int) -> dict:
    k = cfg.kubernetes
    assert k is not None
    return {"group": "", "kind": "Service", "name": service_name(cfg.app, track), "port": k.service_port, "weight": weight}


def _httproute(cfg: Config, shape: Shape) -> dict:
    k = cfg.kubernetes
    assert k is not None and k.gateway is not None
    gw = k.gateway
    parent: dict[str, Any] = {"group": GATEWAY_GROUP, "kind": "Gateway", "name": gw.name}
    if gw.namespace:
        parent["namespace"] = gw.namespace
    if gw.section_name:
        parent["sectionName"] = gw.section_name
    everything = {"path": {"type": "PathPrefix", "value": "/"}}
    rules: list[dict] = []
    s = cfg.strategy
    canary = shape.track("canary")
    if shape.strategy == "canary" and isinstance(s, CanaryStrategy) and s.match and canary is not None and canary.replicas > 0:
        headers = [{"type": "Exact", "name": n, "value": v} for n, v in sorted(s.match.header.items())]
        headers += [{"type": "RegularExpression", "name": "Cookie", "value": _cookie_regex(n, v)} for n, v in sorted(s.match.cookie.items())]
        if headers:
            rules.append({"matches": [{**everything, "headers": headers}], "backendRefs": [_backend(cfg, "canary", 1)]})
    weights = dict(shape.weights)
    # every track that has a Service gets a backendRef (weight 0 included): a switch is one weight change
    backends = [_backend(cfg, t.name, weights.get(t.name, 0)) for t in shape.tracks]
    default: dict[str, Any] = {"matches": [everything], "backendRefs": backends}
    if shape.strategy == "canary" and isinstance(s, CanaryStrategy) and s.sticky is True and len(backends) > 1:
        # Gateway API experimental channel (v1.1+): a cookie pins a user to the backend that served them
        default["sessionPersistence"] = {"sessionName": f"nonstop-{cfg.app}", "type": "Cookie"}
    rules.append(default)
    spec: dict[str, Any] = {"parentRefs": [parent]}
    if k.hostnames:
        spec["hostnames"] = list(k.hostnames)
    spec["rules"] = rules
    return {"apiVersion": f"{GATEWAY_GROUP}/v1", "kind": "HTTPRoute", "metadata": _meta(cfg, cfg.app), "spec": spec}


def render(cfg: Config, shape: Shape) -> list[dict]:
    """The workload objects of ``shape``: Deployments, Services, PodDisruptionBudgets, HTTPRoute."""
    if cfg.kubernetes is None:
        from nonstop.config import KubernetesConfig

        cfg = cfg.model_copy(update={"kubernetes": KubernetesConfig()})
    objs = [deployment(cfg, shape, t) for t in shape.tracks]
    objs += _services(cfg, shape)
    objs += _pdbs(cfg, shape)
    if cfg.kubernetes.gateway is not None:
        objs.append(_httproute(cfg, shape))
    return objs


# -- the coordination objects ---------------------------------------------------------


def state_name(cfg: Config) -> str:
    return f"{cfg.app}-nonstop"


def lease_name(cfg: Config) -> str:
    return f"{cfg.app}-nonstop-lock"


def state_configmap(cfg: Config, text: str, *, resource_version: str | None = None) -> dict:
    """The ConfigMap ``<app>-nonstop`` holding the shared state (``state.json``)."""
    meta = _meta(cfg, state_name(cfg), {"nonstop.dev/role": "state"})
    if resource_version is not None:
        meta["resourceVersion"] = resource_version
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"state.json": text}}


def microtime(t: float) -> str:
    """A Kubernetes MicroTime (RFC 3339 with microseconds, UTC)."""
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease(
    cfg: Config,
    *,
    holder: str | None,
    duration: float,
    acquired: float | None,
    renewed: float | None,
    transitions: int = 0,
    annotations: dict[str, str] | None = None,
    resource_version: str | None = None,
) -> dict:
    """The Lease ``<app>-nonstop-lock`` (coordination.k8s.io/v1): who deploys, since when, which release."""
    meta = _meta(cfg, lease_name(cfg), {"nonstop.dev/role": "lock"}, annotations or None)
    if resource_version is not None:
        meta["resourceVersion"] = resource_version
    spec: dict[str, Any] = {"leaseDurationSeconds": max(1, _seconds(duration)), "leaseTransitions": transitions}
    if holder is not None:
        spec["holderIdentity"] = holder
    if acquired is not None:
        spec["acquireTime"] = microtime(acquired)
    if renewed is not None:
        spec["renewTime"] = microtime(renewed)
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}


def to_yaml(objs: list[dict]) -> str:
    """Multi-document YAML, keys in the order built (deterministic)."""
    import yaml

    return "".join("---\n" + yaml.safe_dump(o, sort_keys=False, default_flow_style=False) for o in objs)

