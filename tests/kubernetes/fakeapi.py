"""A transport fake of the Kubernetes API server (and of Prometheus), on loopback, for the client and driver tests.

No Kubernetes API server can run on these machines, so this speaks the few
calls nonstop makes with the API's real JSON shapes: GET/LIST (equality
label selectors), POST, PUT with resourceVersion (409 when it moved),
DELETE, server-side apply (``PATCH`` with ``application/apply-patch+yaml``,
``fieldManager``; a conflict with another manager's object without
``force=true`` is a 409), ``dryRun=All`` creates (nothing stored),
``Status`` bodies for errors, bearer-token auth (401), per-verb refusals
(403) and the SelfSubjectAccessReviews that report them, pod logs
(``pods/<name>/log`` with ``tailLines``), and Gateways (in any namespace).
It is a fake like a fake clock: what it checks is what nonstop sends and
how nonstop reads the answers.

A Deployment "controller" moves each Deployment's status one step per read
(observedGeneration first, then one pod at a time within maxSurge 1 /
maxUnavailable 0, or all at once for Recreate), with per-release behaviour:
``good`` (pods become ready), ``crash`` (new pods crash-loop) or ``stall``
(new pods never become ready; after ``stall_reads`` reads Progressing turns
False with ProgressDeadlineExceeded, as the real controller does). Its pods
are listed as Pod objects with the template's labels.
"""

from __future__ import annotations

import copy
import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

PLURALS = {
    "deployments": ("apps/v1", "Deployment"),
    "replicasets": ("apps/v1", "ReplicaSet"),
    "pods": ("v1", "Pod"),
    "services": ("v1", "Service"),
    "configmaps": ("v1", "ConfigMap"),
    "poddisruptionbudgets": ("policy/v1", "PodDisruptionBudget"),
    "httproutes": ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    "leases": ("coordination.k8s.io/v1", "Lease"),
}
VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
TOKEN = "nonstop-test-token"


def status_body(code: int, reason: str, message: str, **details: Any) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "details": details, "code": code}


@dataclass
class Request:
    method: str
    path: str
    query: dict
    content_type: str | None
    body: Any


@dataclass
class FakeCluster:
    """The objects of one namespace, the requests seen, and the Deployment controller's behaviour per release."""

    namespace: str = "roomescape"
    objects: dict = field(default_factory=dict)  # (plural, name) -> obj
    pods: dict = field(default_factory=dict)  # deployment name -> list of pod dicts
    requests: list = field(default_factory=list)
    behaviour: dict = field(default_factory=dict)  # release label -> good | crash | stall
    forbidden: set = field(default_factory=set)  # (verb, plural)
    stall_reads: int = 6
    gateway_accepts: bool = True  # the fake Gateway controller's verdict on every HTTPRoute
    gateways: dict = field(default_factory=dict)  # (namespace, name) -> Gateway object
    gateway_api: bool = True  # False: the Gateway API's CRDs are not installed
    reviews: list = field(default_factory=list)  # the SelfSubjectAccessReviews' resourceAttributes, in order
    unreachable: bool = False  # True: every connection is dropped without an answer (an API server gone)
    lock: threading.RLock = field(default_factory=threading.RLock)
    _rv: Any = field(default_factory=lambda: itertools.count(100))
    _names: Any = field(default_factory=lambda: itertools.count(10000))
    reads: dict = field(default_factory=dict)

    def rv(self) -> str:
        return str(next(self._rv))

    def get(self, plural: str, name: str) -> dict | None:
        with self.lock:
            o = self.objects.get((plural, name))
            return copy.deepcopy(o) if o else None

    def put_object(self, obj: dict) -> None:
        """Place an object as if someone else (kubectl, another tool) created it."""
        plural = next(p for p, (_a, k) in PLURALS.items() if k == obj["kind"])
        with self.lock:
            obj = copy.deepcopy(obj)
            meta = obj.setdefault("metadata", {})
            meta.setdefault("namespace", self.namespace)
            meta["resourceVersion"] = self.rv()
            meta.setdefault("generation", 1)
            self.objects[(plural, meta["name"])] = obj

    def writes(self, plural: str | None = None) -> list[Request]:
        return [r for r in self.requests if r.method != "GET" and (plural is None or f"/{plural}" in r.path)]

    # -- the Deployment controller ------------------------------------------------------------
    def _controller_step(self, d: dict) -> None:
        meta, spec = d["metadata"], d["spec"]
        st = d.setdefault("status", {})
        name = meta["name"]
        pods = self.pods.setdefault(name, [])
        tmpl = spec["template"]["metadata"]["labels"]
        want_rel = tmpl.get("nonstop.dev/release")
        n = int(spec.get("replicas", 1))
        how = self.behaviour.get(want_rel, "good")
        if st.get("observedGeneration", 0) < meta.get("generation", 1):
            st["observedGeneration"] = meta.get("generation", 1)
            self.reads[name] = 0
        else:
            self.reads[name] = self.reads.get(name, 0) + 1
            new = [p for p in pods if p["release"] == want_rel]
            old = [p for p in pods if p["release"] != want_rel]
            unready = [p for p in new if not p["ready"]]
            recreate = (spec.get("strategy") or {}).get("type") == "Recreate"
            if unready and how == "good":
                unready[0]["ready"] = True
            elif unready and how == "crash":
                for p in unready:
                    p["restarts"] += 1
                    p["waiting"] = "CrashLoopBackOff"
            elif recreate and old:
                pods[:] = new
            elif len(new) < n and (recreate or len(pods) < n + 1) and not (unready and how != "good"):
                pods.append({"name": f"{name}-{abs(hash(want_rel)) % 10**8:08d}-{next(self._names)}", "release": want_rel,
                             "labels": dict(tmpl), "ready": False, "restarts": 0, "waiting": None,
                             "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
            elif old and sum(p["ready"] for p in new) + len(old) > n:
                pods.remove(old[0])
            elif len(new) > n:
                pods.remove(new[-1])
        new = [p for p in pods if p["release"] == want_rel]
        ready = sum(p["ready"] for p in pods)
        done = len(new) == n and len(pods) == n and all(p["ready"] for p in new)
        st.update(replicas=len(pods), updatedReplicas=len(new), readyReplicas=ready, availableReplicas=ready,
                  unavailableReplicas=max(0, len(pods) - ready))
        progressing = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable" if done else "ReplicaSetUpdated",
                       "message": f'ReplicaSet "{name}" ' + ("has successfully progressed." if done else "is progressing.")}
        if how == "stall" and not done and self.reads.get(name, 0) >= self.stall_reads:
            progressing = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                           "message": f'ReplicaSet "{name}" has timed out progressing.'}
        st["conditions"] = [{"type": "Available", "status": "True" if ready >= n else "False", "reason": "MinimumReplicasAvailable"}, progressing]

    def _gateway_step(self, r: dict) -> None:
        """A Gateway controller: takes a route's new generation on the read after the one that saw it."""
        gen = r["metadata"].get("generation", 1)
        parents = (r.get("status") or {}).get("parents") or []
        seen = min([c["observedGeneration"] for p in parents for c in p["conditions"]] or [0])
        if seen >= gen:
            return
        key = ("route", r["metadata"]["name"], gen)
        if not self.reads.get(key):
            self.reads[key] = 1  # not yet: a controller takes its time
            return
        ok = self.gateway_accepts
        r["status"] = {"parents": [{
            "parentRef": p, "controllerName": "example.net/fake-gateway",
            "conditions": [
                {"type": "Accepted", "status": "True" if ok else "False", "reason": "Accepted" if ok else "NotAllowedByListeners",
                 "message": "" if ok else "no listener of the Gateway allows routes from this namespace", "observedGeneration": gen},
                {"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs", "observedGeneration": gen},
            ]} for p in r["spec"].get("parentRefs") or []]}

    def pod_objects(self) -> list[dict]:
        out = []
        for dname, pods in self.pods.items():
            for p in pods:
                cs = {"name": "app", "ready": p["ready"], "restartCount": p["restarts"],
                      "state": {"waiting": {"reason": p["waiting"], "message": "back-off restarting failed container"}} if p["waiting"] else {"running": {}}}
                out.append({"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": p["name"], "namespace": self.namespace, "labels": p["labels"],
                                         **({"creationTimestamp": p["created"]} if p.get("created") else {})},
                            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True" if p["ready"] else "False"}],
                                       "containerStatuses": [cs]}})
        return out


def _matches(selector: str | None, labels: dict) -> bool:
    if not selector:
        return True
    for part in selector.split(","):
        k, _, v = part.partition("=")
        if labels.get(k) != v:
            return False
    return True


class _Handler(BaseHTTPRequestHandler):
    cluster: FakeCluster
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: no 40 ms delayed-ACK stall

    def log_message(self, *a: Any) -> None:  # quiet
        pass

    def _send(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        return json.loads(raw) if raw else None

    def _route(self, method: str) -> None:
        c = self.cluster
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        body = self._body() if method in ("POST", "PUT", "PATCH", "DELETE") else None
        if c.unreachable:
            self.close_connection = True
            return
        c.requests.append(Request(method, url.path, query, self.headers.get("Content-Type"), body))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            return self._send(401, status_body(401, "Unauthorized", "Unauthorized"))
        if url.path == "/version":
            return self._send(200, {"major": "1", "minor": "37", "gitVersion": "v1.37.0-fake"})
        if url.path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews" and method == "POST":
            attrs = (body.get("spec") or {}).get("resourceAttributes") or {}
            c.reviews.append(attrs)
            res = attrs.get("resource", "") + (f"/{attrs['subresource']}" if attrs.get("subresource") else "")
            allowed = (attrs.get("verb"), res) not in c.forbidden and attrs.get("namespace") == c.namespace
            return self._send(201, {**body, "status": {"allowed": allowed, **({} if allowed else {"reason": "no RBAC rule"})}})
        parts = url.path.strip("/").split("/")
        try:
            i = parts.index("namespaces")
            ns, plural = parts[i + 1], parts[i + 2]
            name = parts[i + 3] if len(parts) > i + 3 else None
            sub = parts[i + 4] if len(parts) > i + 4 else None
        except (ValueError, IndexError):
            return self._send(404, status_body(404, "NotFound", "the server could not find the requested resource"))
        if plural == "gateways" and method == "GET" and name:
            if not c.gateway_api:
                return self._send(404, status_body(404, "NotFound", "the server could not find the requested resource"))
            gw = c.gateways.get((ns, name))
            if gw is None:
                return self._send(404, status_body(404, "NotFound", f'gateways.gateway.networking.k8s.io "{name}" not found',
                                                   name=name, group="gateway.networking.k8s.io", kind="gateways"))
            return self._send(200, gw)
        if plural in PLURALS and ns != c.namespace and method == "POST":
            return self._send(404, status_body(404, "NotFound", f'namespaces "{ns}" not found', name=ns, kind="namespaces"))
        if plural not in PLURALS or ns != c.namespace:
            return self._send(404, status_body(404, "NotFound", f"the server could not find the requested resource ({plural})"))
        verb = VERBS[method] if name or method != "GET" else "list"
        if sub == "log" and plural == "pods" and method == "GET":
            if ("get", "pods/log") in c.forbidden:
                return self._send(403, status_body(403, "Forbidden", f'pods "{name}" is forbidden: cannot get resource "pods/log"'))
            return self._send_log(c, name, int(query.get("tailLines") or 10))
        if (verb, plural) in c.forbidden:
            return self._send(403, status_body(403, "Forbidden", f'{plural} "{name or ""}" is forbidden: User "system:serviceaccount:ci:deployer" cannot {verb} resource "{plural}" in API group "" in the namespace "{ns}"'))
        api_version, kind = PLURALS[plural]
        with c.lock:
            if method == "GET" and name is None:
                if plural == "pods":
                    items = c.pod_objects()
                else:
                    items = [copy.deepcopy(o) for (p, _n), o in sorted(c.objects.items()) if p == plural]
                items = [o for o in items if _matches(query.get("labelSelector"), (o.get("metadata") or {}).get("labels") or {})]
                return self._send(200, {"apiVersion": api_version, "kind": f"{kind}List", "metadata": {"resourceVersion": c.rv()}, "items": items})
            key = (plural, name)
            cur = c.objects.get(key)
            if method == "GET":
                if cur is None:
                    return self._send(404, status_body(404, "NotFound", f'{plural} "{name}" not found', name=name, kind=plural))
                if plural == "deployments":
                    c._controller_step(cur)
                if plural == "httproutes":
                    c._gateway_step(cur)
                return self._send(200, cur)
            if method == "POST":
                name = body["metadata"]["name"]
                if (plural, name) in c.objects:
                    return self._send(409, status_body(409, "AlreadyExists", f'{plural} "{name}" already exists', name=name, kind=plural))
                if query.get("dryRun") == "All":
                    return self._send(201, body)  # validated, admitted, not stored
                obj = copy.deepcopy(body)
                obj["metadata"].update(resourceVersion=c.rv(), uid=f"uid-{next(c._names)}", generation=1, namespace=ns)
                c.objects[(plural, name)] = obj
                return self._send(201, obj)
            if method == "PUT":
                if cur is None:
                    return self._send(404, status_body(404, "NotFound", f'{plural} "{name}" not found'))
                if body["metadata"].get("resourceVersion") != cur["metadata"]["resourceVersion"]:
                    return self._send(409, status_body(409, "Conflict", f'Operation cannot be fulfilled on {plural} "{name}": the object has been modified; please apply your changes to the latest version and try again'))
                obj = copy.deepcopy(body)
                obj["metadata"].update(resourceVersion=c.rv(), uid=cur["metadata"].get("uid"), generation=cur["metadata"].get("generation", 1))
                c.objects[key] = obj
                return self._send(200, obj)
            if method == "DELETE":
                if cur is None:
                    return self._send(404, status_body(404, "NotFound", f'{plural} "{name}" not found'))
                del c.objects[key]
                if plural == "deployments":
                    c.pods.pop(name, None)
                return self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success", "details": {"name": name, "kind": plural}})
            if method == "PATCH":
                if self.headers.get("Content-Type") != "application/apply-patch+yaml" or not query.get("fieldManager"):
                    return self._send(415, status_body(415, "UnsupportedMediaType", "only server-side apply is served here"))
                manager = query["fieldManager"]
                if cur is not None:
                    owners = {m["manager"] for m in cur["metadata"].get("managedFields") or []}
                    if owners - {manager} and query.get("force") != "true":
                        return self._send(409, status_body(409, "Conflict", f'Apply failed with 1 conflict: conflict with "{sorted(owners)[0]}": .spec.replicas'))
                obj = copy.deepcopy(body)
                meta = obj["metadata"]
                old_meta = (cur or {}).get("metadata") or {}
                gen = old_meta.get("generation", 0)
                if cur is None or cur.get("spec") != obj.get("spec"):
                    gen += 1
                meta.update(resourceVersion=c.rv(), uid=old_meta.get("uid", f"uid-{next(c._names)}"), generation=gen,
                            managedFields=[{"manager": manager, "operation": "Apply", "apiVersion": api_version}])
                if cur is not None and "status" in cur:
                    obj["status"] = cur["status"]
                c.objects[key] = obj
                return self._send(200 if cur else 201, obj)
        return self._send(405, status_body(405, "MethodNotAllowed", method))

    def _send_log(self, c: FakeCluster, name: str, tail: int) -> None:
        with c.lock:
            pod = next((p for ps in c.pods.values() for p in ps if p["name"] == name), None)
        if pod is None:
            return self._send(404, status_body(404, "NotFound", f'pods "{name}" not found', name=name, kind="pods"))
        lines = [f"{name} release={pod['release']} line {n}" for n in range(1, 21)][-tail:] if tail > 0 else []
        data = "".join(line + "\n" for line in lines).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_PATCH(self) -> None:
        self._route("PATCH")

    def do_DELETE(self) -> None:
        self._route("DELETE")


class _PromHandler(BaseHTTPRequestHandler):
    answer: Callable[[str], list]
    seen: list
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *a: Any) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        q = parse_qs(url.query).get("query", [""])[0]
        self.seen.append(q)
        if url.path != "/api/v1/query":
            body, code = {"status": "error", "errorType": "bad_data", "error": "unknown path"}, 404
        else:
            samples = type(self).answer(q)
            body = {"status": "success", "data": {"resultType": "vector", "result": [
                {"metric": labels, "value": [1800000000.0, str(v)]} for labels, v in samples]}}
            code = 200
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Served:
    """A server on 127.0.0.1:0 in a thread; ``close()`` stops it."""

    def __init__(self, handler: type) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def serve_cluster(cluster: FakeCluster) -> Served:
    handler = type("Handler", (_Handler,), {"cluster": cluster})
    return Served(handler)


BOUNDS = [0.05, 0.1, 0.25, 0.5, 1.0]


def prom_answer(errors: float = 0.0, bad: str = "-canary-"):
    """Figures per side: 200 requests in any window; the 5xx share ``errors`` for the pods whose name pattern
    contains ``bad`` (0 for the others); p99 under 100 ms."""

    def answer(q: str):
        canary = bad in q
        if "_bucket" in q:
            return [({"le": str(b)}, 190.0 if b < 0.1 else 200.0) for b in BOUNDS] + [({"le": "+Inf"}, 200.0)]
        if 'status=~"5.."' in q:
            return [({}, 200.0 * errors if canary else 0.0)]
        return [({}, 200.0)]

    return answer


def serve_prometheus(answer: Callable[[str], list]) -> tuple[Served, list]:
    seen: list = []
    handler = type("PromHandler", (_PromHandler,), {"answer": staticmethod(answer), "seen": seen})
    return Served(handler), seen


def kubeconfig(path, url: str, *, contexts: tuple[str, ...] = ("test",), token: str = TOKEN) -> str:
    """A kubeconfig file naming ``url`` (first context current)."""
    import yaml

    doc = {
        "apiVersion": "v1", "kind": "Config", "current-context": contexts[0],
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "ci", "user": {"token": token}}],
        "contexts": [{"name": c, "context": {"cluster": "fake", "user": "ci", "namespace": "roomescape"}} for c in contexts],
    }
    path.write_text(yaml.safe_dump(doc))
    return str(path)
