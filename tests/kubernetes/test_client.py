"""The API adapter against the API's transport fake (tests/kubernetes/fakeapi.py: a local HTTP server that
answers the calls nonstop makes with the API's real JSON shapes; no Kubernetes server can run here):
kubeconfig loading, server-side apply, ownership, errors translated at the one boundary."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from nonstop.agent.kubernetes import client as kc
from nonstop.agent.kubernetes import lease as lk
from nonstop.agent.kubernetes import manifests as mf
from nonstop.agent.kubernetes.errors import ClusterForbidden, ClusterUnreachable, NotOwned
from nonstop.agent.kubernetes.shapes import KRelease, first_deploy_shape
from nonstop.errors import ConfigError, DeploymentInProgress

from tests.kubernetes.kube import make_cfg

V1 = KRelease("v1", "v1", "registry.example/roomescape:v1")


def client_for(path, **k):
    return kc.connect(make_cfg(kubernetes={"kubeconfig": path, **k}))


def test_server_side_apply_with_field_manager_and_force_only_on_owned_objects(fake):
    cluster, served, path = fake
    c = client_for(path)
    assert c.context == "test" and c.server == served.url
    cfg = make_cfg()
    objs = mf.render(cfg, first_deploy_shape(cfg, V1))
    for o in objs:
        c.apply(o)
    patches = [r for r in cluster.requests if r.method == "PATCH"]
    assert len(patches) == len(objs)
    for r in patches:
        assert r.content_type == "application/apply-patch+yaml"
        assert r.query["fieldManager"] == "nonstop" and r.query["fieldValidation"] == "Strict"
        assert "force" not in r.query  # a new object: nothing to force
    assert patches[0].path == "/apis/apps/v1/namespaces/roomescape/deployments/roomescape"
    assert cluster.get("deployments", "roomescape")["metadata"]["managedFields"][0]["manager"] == "nonstop"
    c.apply(objs[0])
    assert cluster.requests[-1].query.get("force") == "true"  # ours: nonstop owns every field it sets
    got = c.get("Deployment", "roomescape")
    assert got["spec"]["replicas"] == 3 and c.get("Service", "nope") is None
    assert [o["metadata"]["name"] for o in c.list("Service", mf.owner_selector(cfg))] == ["roomescape"]


def test_an_object_nonstop_does_not_own_is_never_changed(fake):
    cluster, _served, path = fake
    cluster.put_object({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "roomescape", "labels": {"app": "roomescape"}},
                        "spec": {"selector": {"app": "roomescape"}}})
    c = client_for(path)
    cfg = make_cfg()
    svc = next(o for o in mf.render(cfg, first_deploy_shape(cfg, V1)) if o["kind"] == "Service")
    with pytest.raises(NotOwned, match="Service roomescape/roomescape exists and is not nonstop's"):
        c.apply(svc)
    assert not [r for r in cluster.requests if r.method == "PATCH"]
    assert cluster.get("services", "roomescape")["spec"]["selector"] == {"app": "roomescape"}


def test_prune_deletes_only_owned_objects_not_kept(fake):
    cluster, _served, path = fake
    c = client_for(path)
    cfg = make_cfg()
    for o in mf.render(cfg, first_deploy_shape(cfg, V1)):
        c.apply(o)
    cluster.put_object({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "other", "labels": {"app": "x"}}, "spec": {}})
    gone = c.prune({("Deployment", "roomescape"), ("Service", "roomescape")})
    assert gone == [("PodDisruptionBudget", "roomescape")]
    assert cluster.get("services", "other") is not None
    assert [r for r in cluster.requests if r.method == "DELETE"][0].body["propagationPolicy"] == "Background"


def test_unreachable_cluster_is_exit_3_naming_context_and_server(tmp_path):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    from tests.kubernetes.fakeapi import kubeconfig

    path = kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{port}", contexts=("prod",))
    c = client_for(path)
    with pytest.raises(ClusterUnreachable) as e:
        c.version()
    assert e.value.exit_code == 3
    assert "context prod" in e.value.message and f"http://127.0.0.1:{port}" in e.value.message


def test_bad_credentials_are_exit_3_too(fake, tmp_path):
    _cluster, served, _path = fake
    from tests.kubernetes.fakeapi import kubeconfig

    c = client_for(kubeconfig(tmp_path / "kc2", served.url, token="wrong"))
    with pytest.raises(ClusterUnreachable, match="401 Unauthorized"):
        c.get("Deployment", "roomescape")


def test_forbidden_names_verb_resource_and_namespace(fake):
    cluster, _served, path = fake
    cluster.forbidden.add(("patch", "deployments"))
    c = client_for(path)
    cfg = make_cfg()
    with pytest.raises(ClusterForbidden) as e:
        c.apply(mf.render(cfg, first_deploy_shape(cfg, V1))[0])
    assert "cannot patch Deployment roomescape in namespace roomescape" in e.value.message
    assert e.value.detail["verb"] == "patch" and e.value.exit_code == 2
    cluster.forbidden.add(("list", "pods"))
    with pytest.raises(ClusterForbidden, match="cannot list pods in namespace roomescape"):
        c.list("Pod", "x=y")


def test_context_is_chosen_by_name_and_an_unknown_one_is_a_config_error(fake):
    _cluster, _served, path = fake
    assert client_for(path, context="other").context == "other"
    with pytest.raises(ConfigError) as e:
        client_for(path, context="prod")
    assert e.value.field == "kubernetes.context" and "known: test, other" in e.value.message
    with pytest.raises(ConfigError) as e:
        client_for(path + ".missing")
    assert e.value.field == "kubernetes.kubeconfig"


def test_two_operators_racing_for_the_lease(fake):
    cluster, _served, path = fake
    c = client_for(path)
    cfg = make_cfg()
    t = 1_800_000_000.0
    ours, taken = lk.acquire(c, cfg, "ci@runner:1", release="v2", strategy="rolling", now=t)
    assert taken is None and ours.resource_version
    lease = cluster.get("leases", "roomescape-nonstop-lock")
    assert lease["spec"]["holderIdentity"] == "ci@runner:1" and lease["metadata"]["annotations"]["nonstop.dev/release"] == "v2"
    with pytest.raises(DeploymentInProgress) as e:
        lk.acquire(c, cfg, "alice@laptop:2", release="v3", strategy="canary", now=t + 5)
    assert e.value.exit_code == 4 and "ci@runner:1" in e.value.message and "release v2 (rolling)" in e.value.message
    # the holder renews; a stale replace (the other operator's old resourceVersion) is a 409 → still in progress
    ours = lk.renew(c, cfg, ours, t + 20)
    # the holder dies: 61 s after its last renewal the Lease has expired and may be taken over
    theirs, expired = lk.acquire(c, cfg, "alice@laptop:2", release="v3", strategy="canary", now=t + 20 + 61)
    assert expired.holder == "ci@runner:1" and theirs.transitions == 1
    with pytest.raises(lk.LeaseLost, match="taken over by alice@laptop:2"):
        lk.renew(c, cfg, ours, t + 90)
    lk.release(c, cfg, theirs)
    assert "holderIdentity" not in cluster.get("leases", "roomescape-nonstop-lock")["spec"]


def test_the_cli_and_the_pure_modules_do_not_import_the_kubernetes_client():
    code = (
        "import sys; import nonstop.agent.kubernetes.driver, nonstop.agent.kubernetes.manifests, nonstop.cli.kube_cmds, nonstop.cli.app; "
        "print('kubernetes' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_pod_logs_access_reviews_the_namespace_and_the_gateway(fake):
    cluster, _served, path = fake
    c = client_for(path)
    cfg = make_cfg()
    for o in mf.render(cfg, first_deploy_shape(cfg, V1)):
        c.apply(o)
    for _ in range(6):
        c.get("Deployment", "roomescape")  # the fake's controller starts the pods
    pod = c.list("Pod", "nonstop.dev/app=roomescape")[0]["metadata"]["name"]
    assert c.pod_log(pod, 2).splitlines() == [f"{pod} release=v1 line 19", f"{pod} release=v1 line 20"]
    r = next(r for r in cluster.requests if r.path.endswith("/log"))
    assert r.query == {"container": "app", "tailLines": "2"}
    assert c.pod_log("gone", 5) is None

    assert c.allowed("patch", "deployments", "apps") == (True, "")
    cluster.forbidden.add(("get", "pods/log"))
    assert c.allowed("get", "pods", "", "log") == (False, "no RBAC rule")
    assert cluster.reviews[-1] == {"namespace": "roomescape", "verb": "get", "group": "", "resource": "pods", "subresource": "log"}

    assert c.namespace_exists()  # the state ConfigMap does not exist: a dry-run create, nothing stored
    assert cluster.get("configmaps", "roomescape-nonstop") is None
    cluster.put_object(mf.state_configmap(cfg, "{}"))
    assert c.namespace_exists()  # 409: it exists, and so does its namespace
    cluster.namespace = "elsewhere"
    assert not c.namespace_exists()

    cluster.gateways[("infra", "public")] = {"kind": "Gateway", "metadata": {"name": "public", "namespace": "infra"}}
    assert c.get_gateway("infra", "public")[0] == "ok"
    assert c.get_gateway("infra", "private") == ("missing", None)
    cluster.gateway_api = False
    assert c.get_gateway("infra", "public") == ("no-crd", None)


def test_a_lease_whose_holder_died_on_this_machine_is_taken_over_at_once(fake):
    import os

    _cluster, _served, path = fake
    c = client_for(path)
    cfg = make_cfg()
    t = 1_800_000_000.0
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    me = lk.holder_identity()
    gone = f"{me.rpartition(':')[0]}:{dead.stdout.strip()}"
    ours, _ = lk.acquire(c, cfg, gone, release="v2", strategy="rolling", now=t)
    info = lk.parse(c.get("Lease", "roomescape-nonstop-lock"))
    assert info.boot == lk.boot_id() and lk.dead_here(info, me)
    theirs, expired = lk.acquire(c, cfg, me, release="v3", strategy="rolling", now=t + 1)  # not expired, but its process is gone
    assert expired.holder == gone
    # a holder of this machine that still runs, or one of another machine (another boot id), is waited for
    alive = lk.LeaseInfo(f"{me.rpartition(':')[0]}:{os.getpid()}", boot=lk.boot_id())
    assert not lk.dead_here(alive, me)
    assert not lk.dead_here(lk.LeaseInfo(gone, boot="another-machine"), me)
    assert not lk.dead_here(lk.LeaseInfo(gone.replace(me.partition("@")[0], "someone-else", 1), boot=lk.boot_id()), me)


def test_in_a_pod_without_a_kubeconfig_the_service_account_is_used(tmp_path, monkeypatch):
    """No kubeconfig and KUBERNETES_SERVICE_HOST set: the pod's service account (token, CA) and the
    service address, through the official client's own in-cluster loader (its file paths pointed here).
    No API server can run here, so what is checked is the client made, not a request through it."""
    from kubernetes.config import incluster_config

    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text("pod-token")
    (sa / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(sa / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(sa / "ca.crt"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    c = kc.connect(make_cfg())
    assert c.context == "in-cluster" and c.server == "https://10.96.0.1:443"
    conf = c.api.configuration
    assert conf.api_key["BearerToken"] == "bearer pod-token" and conf.ssl_ca_cert == str(sa / "ca.crt")
    _m, url, headers, _b, _p = c.api.param_serialize("GET", "/version", header_params={}, auth_settings=["BearerToken"])
    assert url == "https://10.96.0.1:443/version" and headers["authorization"] == "bearer pod-token"

    (sa / "token").unlink()  # a pod without its token: exit 3, saying which config failed
    with pytest.raises(ClusterUnreachable) as e:
        kc.connect(make_cfg())
    assert e.value.exit_code == 3 and "in-cluster config" in e.value.message
