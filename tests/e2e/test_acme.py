"""Automatic certificates end to end: the agent, the proxy and a real ACME CA (Debian's pebble).

pebble validates HTTP-01 on the stack's plain listener (its challenge DNS resolves every name to
127.0.0.1), so the proxy itself answers the challenges from ``<state>/tls/challenges``. Certificates
live 15 s here, so the renewal (at two thirds of their life) comes within the test:

- issued at ``up``, served on the TLS listener without a restart;
- renewed under HTTPS load with zero failed requests, new handshakes getting the new certificate;
- then a CA that refuses (pebble restarted with the domain on its block list): the failure is in
  ``status`` and the events with the CA's own words, and the current certificate keeps serving;
- all along, a webhook receiver (``notify:``, a real HTTP server on 127.0.0.1) gets a ``certificate``
  notification for the issuance, the renewal and the refusal, the CA's words in the refusal's body.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from nonstop.testing.load import LoadClient
from tests.agent.test_notify import Receiver
from tests.e2e._canary_helpers import warm
from tests.e2e.artifacts import RUN_COMMAND, make_artifact
from tests.e2e.helpers import stack_ports, wait_for
from tests.tls.pebble import Pebble

DOMAIN = "app.nonstop.test"
LOAD = dict(rate=50, keepalive=3, new=2, post=1, slow=0, timeout=20)


@pytest.fixture
def pebble_for(tmp_path):
    made = []

    def start(http_port: int, **kw) -> Pebble:
        d = Path(tempfile.mkdtemp(prefix="ns-pebble-"))
        p = Pebble(d, http_port=http_port, validity=15, **kw)
        made.append((p, d))
        return p.start()

    yield start
    for p, d in made:
        p.stop()
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def hook():
    with Receiver() as r:
        yield r


def acme_status(st) -> dict:
    return st.status()["tls"]["acme"]


def test_issued_renewed_under_load_and_a_refusal_keeps_the_certificate(stack_factory, pebble_for, tmp_path, hook):
    good = make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.2")
    (tport,) = stack_ports(1)
    st = stack_factory(up=False, run={"command": RUN_COMMAND})
    pebble = pebble_for(st.listen)
    st.write_config(tls={"listen": f"127.0.0.1:{tport}", "acme": {
        "email": "ops@nonstop.test", "domains": [DOMAIN], "directory": pebble.directory, "ca_bundle": pebble.ca_bundle}},
        notify=[{"url": hook.url, "events": ["certificate"], "headers": {"Authorization": "Bearer hook-secret"}}])
    st.cli("up", "--detach", "--timeout", "60", check=True)
    first = wait_for(lambda: (acme_status(st).get("certificate") or None), timeout=30, interval=0.3,
                     what="the first certificate")
    assert acme_status(st)["state"] == "valid"
    served = wait_for(lambda: st.status()["tls"]["certificates"], timeout=10, what="the proxy serving it")
    assert [c["field"] for c in served] == ["tls.acme"] and served[0]["names"] == [DOMAIN], served
    assert served[0]["serial"] == first["serial"], (served, first)
    st.deploy("v1", "--artifact", str(good))
    root = tmp_path / "pebble-root.pem"
    root.write_bytes(pebble.root_pem())
    load = LoadClient(f"https://{DOMAIN}:{tport}/", cafile=str(root), connect_to=f"127.0.0.1:{tport}", **LOAD)
    with load:
        warm(load, 60, stack=st)
        renewed = wait_for(lambda: (c := acme_status(st).get("certificate")) and c != first and c, timeout=30,
                           interval=0.3, what="the renewal")
        t_renew = time.monotonic()
        time.sleep(2.5)  # the proxy re-reads the renewed files (they settle for 1 s)
        warm(load, 60, stack=st)
    result = load.result
    fps = {fp for _, fp in load.handshakes}
    print(f"\nACME: {result.total} HTTPS requests, {result.failed} failed, certificates seen {len(fps)}")
    assert result.failed == 0, result.format()
    assert len(fps) >= 2, "no handshake got the renewed certificate"
    late = {fp for t, fp in load.handshakes if t > t_renew + 2.0}
    assert len(late) == 1, late

    # a CA that refuses: pebble again, with the domain on its block list
    pebble.stop()
    pebble.blocked = [DOMAIN]
    pebble.start()
    failing = wait_for(lambda: acme_status(st)["state"] == "failing" and acme_status(st), timeout=30, interval=0.3,
                       what="a refused renewal")
    words = str(failing)
    assert "rejectedIdentifier" in words or "policy" in words.lower(), words
    from nonstop.cli.client import AgentClient

    errors = [e for e in AgentClient(st.state / "agent.sock", timeout=10).get("/events") if e["type"] == "tls_error"]
    assert errors and errors[-1]["problems"] and errors[-1]["problems"][0]["detail"], errors
    assert DOMAIN in errors[-1]["message"]
    # the current certificate keeps serving
    assert acme_status(st)["certificate"] == renewed
    assert_certificate_webhooks(hook, yaml.safe_load(st.cfg_path.read_text())["app"], first, renewed, errors[-1])
    with LoadClient(f"https://{DOMAIN}:{tport}/", cafile=str(root), connect_to=f"127.0.0.1:{tport}",
                    rate=20, keepalive=1, new=1, post=0, slow=0, max_requests=10) as probe:
        probe.wait(20)
    assert probe.result.failed == 0, probe.result.format()


def assert_certificate_webhooks(hook: Receiver, app: str, first: dict, renewed: dict, error_event: dict) -> None:
    """The ``certificate`` webhooks (docs/dashboard.md "Webhooks"): the issuance and the renewal with the
    serial and expiry the CA gave, then the refusal with its stage, the CA's problems and the next try."""
    wait_for(lambda: any(b["type"] == "tls_error" for b in hook.bodies), timeout=10, what="the refusal's webhook")
    bodies = list(hook.bodies)
    assert {b["event"] for b in bodies} == {"certificate"}, bodies  # events: [certificate] lets only these through
    for b in bodies:
        assert b["app"] == app and b["deployment"] is None and b["release"] is None, b
        assert b["domains"] == [DOMAIN] and DOMAIN in b["message"] and isinstance(b["ts"], float), b
    issued = [b for b in bodies if b["type"] == "tls_certificate"]
    assert [b["serial"] for b in issued[:2]] == [first["serial"], renewed["serial"]], issued
    # the event says ISO 8601 ("…T…Z"), status the proxy's "YYYY-MM-DD HH:MM:SS UTC": the same instant
    assert issued[0]["not_after"] == first["not_after"].replace(" UTC", "Z").replace(" ", "T"), (issued[0], first)
    refused = [b for b in bodies if b["type"] == "tls_error"][0]
    assert refused["stage"] == error_event["stage"] and refused["retry_at"], refused
    # the CA's own words, as it sent them: the RFC 8555 problem type and detail
    assert refused["problems"] == error_event["problems"], (refused, error_event)
    problem = refused["problems"][0]
    assert problem["type"].endswith(":rejectedIdentifier") and DOMAIN in problem["detail"], problem
    assert problem["detail"] in refused["message"], refused
    assert all(h["Authorization"] == "Bearer hook-secret" for h in hook.headers)
