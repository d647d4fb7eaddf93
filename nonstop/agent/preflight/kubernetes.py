"""Kubernetes: the cluster answers, the namespace exists, the verbs nonstop uses are allowed, the Gateway is there.

Asked of the API server with the credentials of the configured context,
changing nothing: ``GET /version``; a dry-run create of the state ConfigMap
(the namespace exists when the server does not answer 404); one
SelfSubjectAccessReview per verb and resource nonstop uses (the Role in
docs/kubernetes.md); with ``kubernetes.gateway``, a read of the Gateway.
An API server that cannot be reached is not a problem in the config but
the cluster's: ``ClusterUnreachable`` is raised (exit 3, naming the context
and the server), for ``check`` and ``up`` alike.
"""

from __future__ import annotations

import asyncio

from nonstop.agent.preflight.base import Env, Problem
from nonstop.config import Config
from nonstop.errors import ConfigError

__all__ = ["cluster", "needed_verbs"]


def needed_verbs(cfg: Config) -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(API group, resource, subresource, verbs) nonstop uses in the app's namespace: the Role's rules."""
    k = cfg.kubernetes
    assert k is not None
    rules = [
        ("apps", "deployments", "", ("get", "list", "patch", "delete")),
        ("", "services", "", ("get", "list", "patch", "delete")),
        ("policy", "poddisruptionbudgets", "", ("get", "list", "patch", "delete")),
        ("", "pods", "", ("list",)),
        ("", "pods", "log", ("get",)),
        ("", "configmaps", "", ("get", "create", "update")),
        ("coordination.k8s.io", "leases", "", ("get", "create", "update")),
    ]
    if k.gateway is not None:
        rules.insert(3, ("gateway.networking.k8s.io", "httproutes", "", ("get", "list", "patch", "delete")))
    return rules


def _unprefixed(e: ConfigError) -> str:
    where = f"{e.field}: " if e.field else ""
    return e.message[len(where):] if where and e.message.startswith(where) else e.message


def _check(cfg: Config) -> list[tuple[str, str]]:
    from nonstop.agent.kubernetes.client import connect
    from nonstop.agent.kubernetes.errors import ClusterForbidden

    k = cfg.kubernetes
    assert k is not None
    try:
        client = connect(cfg)
    except ConfigError as e:
        return [(e.field or "kubernetes.kubeconfig", _unprefixed(e))]
    where = f"context {client.context} ({client.server})"
    try:
        client.version()  # ClusterUnreachable: raised, exit 3
        out: list[tuple[str, str]] = []
        try:
            if not client.namespace_exists():
                out.append(("kubernetes.namespace", f"namespace {k.namespace} does not exist in {where}; create it "
                                                    f"(kubectl create namespace {k.namespace})"))
                return out  # every verb would be refused for want of it: one problem is the truth
        except ClusterForbidden:
            pass  # create configmaps is denied: the reviews below name it
        denied = []
        for group, resource, sub, verbs in needed_verbs(cfg):
            for verb in verbs:
                ok, _why = client.allowed(verb, resource, group, sub)
                if not ok:
                    denied.append(f"{verb} {resource}{'/' + sub if sub else ''}" + (f" ({group})" if group else ""))
        if denied:
            out.append(("kubernetes.namespace", f"the credentials of {where} may not {', '.join(denied)} in namespace "
                                                f"{k.namespace}; the Role in docs/kubernetes.md lists what nonstop needs"))
        if k.gateway is not None:
            gw_ns = k.gateway.namespace or k.namespace
            found, _obj = client.get_gateway(gw_ns, k.gateway.name)
            if found == "missing":
                out.append(("kubernetes.gateway", f"Gateway {gw_ns}/{k.gateway.name} not found in {where}"))
            elif found == "no-crd":
                out.append(("kubernetes.gateway", f"the Gateway API (gateway.networking.k8s.io/v1) is not installed in {where}"))
            # "forbidden": reading Gateways of another namespace is not a verb nonstop needs; the HTTPRoute's
            # status says at deploy time whether the Gateway takes the route
        return out
    finally:
        client.close()


async def cluster(env: Env) -> list[Problem]:
    """The cluster is ready for nonstop (``ClusterUnreachable`` when it does not answer)."""
    return [env.problem(field, message) for field, message in await asyncio.to_thread(_check, env.cfg)]
