"""The thin I/O around the official ``kubernetes`` client: connect, get/list/create/replace/delete, apply.

Everything the cluster can answer is translated into nonstop's errors here,
and only here (``kubernetes.errors``):

- unreachable (refused, DNS, TLS, timeout) or 401 → ``ClusterUnreachable``
  (exit 3), naming the context and the server;
- 403 → ``ClusterForbidden`` naming the verb, the resource and the namespace;
- 409 → ``Conflict`` (the callers turn a held Lease into exit 4);
- 422 → ``ClusterRejected`` with the API's message (it names the field).

Objects are written with server-side apply (``PATCH`` with
``application/apply-patch+yaml``) under the field manager ``nonstop``,
``fieldValidation=Strict``. An object that already exists is applied only
when it carries nonstop's managed-by label and this app's label (then with
``force=true``: nonstop owns every field it sets); anything else is refused
with ``NotOwned`` before it is touched. The client's calls are blocking:
the driver runs them in a thread. ``import kubernetes`` happens in
``connect`` only (it is slow, and only this runtime needs it).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from nonstop.agent.kubernetes import manifests as mf
from nonstop.agent.kubernetes.errors import (
    ClusterError,
    ClusterForbidden,
    ClusterRejected,
    ClusterUnreachable,
    Conflict,
    NotOwned,
)
from nonstop.config import Config
from nonstop.errors import ConfigError

__all__ = ["RESOURCES", "KubeClient", "connect"]


@dataclass(frozen=True)
class Resource:
    """Where a kind lives in the API: ``/<prefix>/namespaces/<ns>/<plural>``."""

    prefix: str  # "api/v1" or "apis/<group>/<version>"
    plural: str


RESOURCES: dict[str, Resource] = {
    "Deployment": Resource("apis/apps/v1", "deployments"),
    "ReplicaSet": Resource("apis/apps/v1", "replicasets"),
    "Pod": Resource("api/v1", "pods"),
    "Service": Resource("api/v1", "services"),
    "ConfigMap": Resource("api/v1", "configmaps"),
    "PodDisruptionBudget": Resource("apis/policy/v1", "poddisruptionbudgets"),
    "HTTPRoute": Resource("apis/gateway.networking.k8s.io/v1", "httproutes"),
    "Lease": Resource("apis/coordination.k8s.io/v1", "leases"),
}

_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
TIMEOUT = (5.0, 30.0)  # connect, read (seconds)


def connect(cfg: Config) -> "KubeClient":
    """A client for ``cfg.kubernetes``: the kubeconfig file and context named (or $KUBECONFIG /
    ~/.kube/config and its current context), else the in-cluster service account."""
    import kubernetes  # noqa: F401 - slow; only the kubernetes runtime pays for it
    from kubernetes import client as kclient
    from kubernetes import config as kconfig
    from kubernetes.config.config_exception import ConfigException

    k = cfg.kubernetes
    assert k is not None, "runtime kubernetes without a kubernetes block"
    file = os.path.expanduser(k.kubeconfig) if k.kubeconfig else None
    if file is not None and not Path(file).is_absolute():
        file = str(cfg.path(file))
    default = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    have_file = file is not None or any(Path(p).exists() for p in default.split(os.pathsep) if p)
    if not have_file and os.environ.get("KUBERNETES_SERVICE_HOST"):
        conf = kclient.Configuration()
        try:
            kconfig.load_incluster_config(client_configuration=conf)
        except ConfigException as e:
            raise ClusterUnreachable(f"in-cluster config: {e}") from None
        api = kclient.ApiClient(conf)
        return KubeClient(api, cfg, context="in-cluster", server=conf.host)
    if not have_file:
        raise ConfigError(
            f"no kubeconfig: {default} does not exist and nonstop does not run in a pod", field="kubernetes.kubeconfig"
        )
    try:
        contexts, current = kconfig.list_kube_config_contexts(config_file=file)
    except (ConfigException, OSError) as e:
        raise ConfigError(f"cannot read the kubeconfig {file or default}: {e}", field="kubernetes.kubeconfig") from None
    names = [c["name"] for c in contexts or []]
    name = k.context or (current or {}).get("name")
    if name is None or name not in names:
        raise ConfigError(
            f"kubeconfig context {name!r} not found in {file or default}; known: {', '.join(names) or 'none'}",
            field="kubernetes.context",
        )
    conf = kclient.Configuration()
    try:
        kconfig.load_kube_config(config_file=file, context=name, client_configuration=conf, persist_config=False)
    except (ConfigException, OSError) as e:
        raise ConfigError(f"kubeconfig context {name!r}: {e}", field="kubernetes.context") from None
    return KubeClient(kclient.ApiClient(conf), cfg, context=name, server=conf.host)


class KubeClient:
    """Owns one API connection (a ``kubernetes.client.ApiClient``) for one app's namespace; raw JSON in and out."""

    def __init__(self, api: Any, cfg: Config, *, context: str, server: str) -> None:
        assert cfg.kubernetes is not None
        self.api = api
        self.cfg = cfg
        self.namespace = cfg.kubernetes.namespace
        self.context = context
        self.server = server

    # -- the one request method -----------------------------------------------------------
    def _path(self, kind: str, name: str | None = None) -> str:
        r = RESOURCES[kind]
        p = f"/{r.prefix}/namespaces/{quote(self.namespace)}/{r.plural}"
        return p + (f"/{quote(name)}" if name else "")

    def request(
        self, method: str, path: str, *, query: list[tuple[str, str]] | None = None, body: Any = None,
        content_type: str = "application/json", what: str = "", verb: str | None = None, text: bool = False,
    ) -> tuple[int, Any]:
        """One call; returns (status, decoded JSON — or the body as text with ``text``) for 2xx and 404, raises
        nonstop's errors for the rest."""
        import urllib3

        from kubernetes.client.exceptions import ApiException

        headers = {"Accept": "text/plain" if text else "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
            if content_type != "application/json" and not isinstance(body, str):
                body = json.dumps(body)  # the client serialises JSON bodies itself; others go as given
        try:
            m, url, hdrs, b, _post = self.api.param_serialize(
                method, path, query_params=query or [], header_params=headers, body=body, auth_settings=["BearerToken"]
            )
            resp = self.api.call_api(m, url, header_params=hdrs, body=b, _request_timeout=TIMEOUT)
            raw = resp.read()
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise self._unreachable(str(getattr(e, "reason", None) or e)) from None
        except ApiException as e:  # the client's own (TLS errors come as status 0)
            if not e.status:
                raise self._unreachable(str(e.reason)) from None
            resp, raw = e, (e.body or b"")
        status = int(resp.status)
        if text and 200 <= status < 300:
            return status, raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = None
        if 200 <= status < 300 or status == 404:
            return status, data
        message = (data or {}).get("message") if isinstance(data, dict) else None
        message = message or (raw.decode(errors="replace")[:300] if isinstance(raw, bytes) else str(raw))
        verb = verb or _VERBS.get(method, method.lower())
        target = what or path
        if status == 401:
            raise self._unreachable(f"the API server refused the credentials (401 Unauthorized): {message}")
        if status == 403:
            raise ClusterForbidden(
                f"forbidden: cannot {verb} {target} in namespace {self.namespace} (context {self.context}): {message}; "
                "the Role in docs/kubernetes.md lists the verbs nonstop needs",
                detail={"verb": verb, "resource": target, "namespace": self.namespace, "context": self.context},
            )
        if status == 409:
            raise Conflict(f"{target}: {message}", detail={"status": 409})
        if status == 422:
            raise ClusterRejected(f"the API server refused {target}: {message}", detail={"status": 422})
        raise ClusterError(f"{method} {target}: HTTP {status}: {message}", detail={"status": status})

    def _unreachable(self, why: str) -> ClusterUnreachable:
        return ClusterUnreachable(
            f"cannot reach the Kubernetes API of context {self.context} at {self.server}: {why}",
            detail={"context": self.context, "server": self.server},
        )

    # -- reads ------------------------------------------------------------------------------
    def get(self, kind: str, name: str) -> dict | None:
        status, data = self.request("GET", self._path(kind, name), what=f"{kind} {name}")
        return None if status == 404 else data

    def list(self, kind: str, selector: str) -> list[dict]:
        status, data = self.request("GET", self._path(kind), query=[("labelSelector", selector)], what=RESOURCES[kind].plural, verb="list")
        if status == 404:
            return []  # a CRD that is not installed (HTTPRoute without the Gateway API): nothing of ours there
        return list((data or {}).get("items") or [])

    def version(self) -> dict:
        """``GET /version``: the cheapest proof the server answers (``nonstop check``)."""
        _status, data = self.request("GET", "/version", what="version")
        return data or {}

    def pod_log(self, name: str, lines: int, container: str = "app") -> str | None:
        """The last ``lines`` lines of a pod's container log (None: the pod is gone)."""
        status, body = self.request(
            "GET", self._path("Pod", name) + "/log", query=[("container", container), ("tailLines", str(max(0, lines)))],
            what=f"pods/log {name}", verb="get", text=True,
        )
        return None if status == 404 else body

    def allowed(self, verb: str, resource: str, group: str = "", subresource: str = "") -> tuple[bool, str]:
        """May these credentials ``verb`` ``resource`` in the namespace? A SelfSubjectAccessReview (any
        authenticated user may create one); (allowed, the authorizer's reason)."""
        attrs = {"namespace": self.namespace, "verb": verb, "group": group, "resource": resource}
        if subresource:
            attrs["subresource"] = subresource
        body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview", "spec": {"resourceAttributes": attrs}}
        _s, data = self.request("POST", "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews", body=body,
                                what="selfsubjectaccessreviews", verb="create")
        st = (data or {}).get("status") or {}
        return bool(st.get("allowed")), str(st.get("reason") or st.get("evaluationError") or "")

    def namespace_exists(self) -> bool:
        """Does the namespace exist? Asked with the one verb nonstop needs anyway: a dry-run create of the state
        ConfigMap (201, or 409 when it exists: the namespace is there; 404: it is not). Nothing is written."""
        obj = mf.state_configmap(self.cfg, "{}")
        try:
            status, _data = self.request("POST", self._path("ConfigMap"), query=[("dryRun", "All")], body=obj,
                                         what=f"ConfigMap {obj['metadata']['name']} (dry run)", verb="create")
        except Conflict:
            return True  # it exists already: so does its namespace
        return status != 404

    def get_gateway(self, namespace: str, name: str) -> tuple[str, dict | None]:
        """The Gateway API Gateway ``namespace/name``: ("ok", obj), ("missing", None), ("no-crd", None) when the
        Gateway API is not installed, or ("forbidden", None) when these credentials may not read it."""
        path = f"/apis/{mf.GATEWAY_GROUP}/v1/namespaces/{quote(namespace)}/gateways/{quote(name)}"
        try:
            status, data = self.request("GET", path, what=f"Gateway {namespace}/{name}")
        except ClusterForbidden:
            return "forbidden", None
        if status == 404:
            # a missing object says so in its Status details; a missing resource type (no CRD) does not
            details = (data.get("details") or {}) if isinstance(data, dict) else {}
            return ("missing" if details.get("name") == name else "no-crd"), None
        return "ok", data

    # -- writes -----------------------------------------------------------------------------
    def check_owned(self, obj: dict) -> None:
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        if labels.get(mf.MANAGED_BY) != mf.FIELD_MANAGER or labels.get(mf.LABEL_APP) != self.cfg.app:
            kind, name = obj.get("kind", "object"), meta.get("name", "?")
            raise NotOwned(
                f"{kind} {self.namespace}/{name} exists and is not nonstop's (it lacks the labels "
                f"{mf.MANAGED_BY}={mf.FIELD_MANAGER}, {mf.LABEL_APP}={self.cfg.app}); nonstop changes only its own "
                "objects: delete it, rename the app, or label it to hand it over",
                detail={"kind": kind, "name": name, "namespace": self.namespace},
            )

    def apply(self, obj: dict) -> dict:
        """Server-side apply ``obj`` (field manager ``nonstop``); refuses an existing object nonstop does not own."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        cur = self.get(kind, name)
        query = [("fieldManager", mf.FIELD_MANAGER), ("fieldValidation", "Strict")]
        if cur is not None:
            cur.setdefault("kind", kind)
            self.check_owned(cur)
            query.append(("force", "true"))
        _s, data = self.request(
            "PATCH", self._path(kind, name), query=query, body=json.dumps(obj),
            content_type="application/apply-patch+yaml", what=f"{kind} {name}",
        )
        return data or {}

    def create(self, obj: dict) -> dict:
        kind, name = obj["kind"], obj["metadata"]["name"]
        status, data = self.request("POST", self._path(kind), body=obj, what=f"{kind} {name}")
        if status == 404:
            raise ClusterError(f"cannot create {kind} {name}: namespace {self.namespace} not found")
        return data or {}

    def replace(self, obj: dict) -> dict:
        """PUT with the resourceVersion in ``obj``: ``Conflict`` when the object moved since it was read."""
        kind, name = obj["kind"], obj["metadata"]["name"]
        status, data = self.request("PUT", self._path(kind, name), body=obj, what=f"{kind} {name}")
        if status == 404:
            raise Conflict(f"{kind} {name} was deleted meanwhile")
        return data or {}

    def delete(self, kind: str, name: str) -> bool:
        """Delete (pods go through their grace period and preStop); False when it was already gone."""
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        status, _ = self.request("DELETE", self._path(kind, name), body=body, what=f"{kind} {name}")
        return status != 404

    def prune(self, keep: set[tuple[str, str]]) -> list[tuple[str, str]]:
        """Delete this app's objects nonstop owns (by label) that ``keep`` does not name; returns what went."""
        gone = []
        for kind in mf.KINDS:
            for obj in self.list(kind, mf.owner_selector(self.cfg)):
                name = (obj.get("metadata") or {}).get("name")
                if name and (kind, name) not in keep:
                    obj.setdefault("kind", kind)
                    self.check_owned(obj)
                    if self.delete(kind, name):
                        gone.append((kind, name))
        return gone

    def close(self) -> None:
        try:
            self.api.close()
        except Exception:  # a pool already closed
            pass
