"""The dashboard's HTTPS panel in headless Chromium against a real agent with ``tls:`` and a real ACME CA.

One stack (module scope): the TLS listener serves a certificate from files
(``tls.cert``/``tls.key``, made with trustme for ``shop.nonstop.test``) and
``tls.acme`` asks Debian's pebble for ``blocked.nonstop.test``, a name on
pebble's block list. So the ACME order is refused by the CA at once (its own
``rejectedIdentifier`` words) while the file certificate keeps serving: the
page must show both, the failure prominently.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import ssl
import tempfile
from pathlib import Path

import pytest
import trustme
import yaml
from playwright.sync_api import expect

from tests.dashboard.stack import ARTIFACTS, ROOT, AgentStack, make_stack, state_json, wait_for
from tests.e2e.helpers import stack_ports
from tests.tls.pebble import BLOCKED, Pebble

HOST = "shop.nonstop.test"
DOC_SCREENSHOT = ROOT / "docs" / "img" / "dashboard-https-failing.png"


@pytest.fixture(scope="module")
def https_stack(module_dir):
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(module_dir / "ca.pem"))
    leaf = ca.issue_cert(HOST)
    cert, key = module_dir / "site.pem", module_dir / "site.key"
    leaf.private_key_pem.write_to_path(str(key))
    os.chmod(key, 0o600)
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    (tport,) = stack_ports(1)
    st = make_stack(module_dir / "stack")  # the CA validates HTTP-01 on its plain listener
    pebble_dir = Path(tempfile.mkdtemp(prefix="ns-pebble-"))  # short path: pebble's sockets and logs
    pebble = Pebble(pebble_dir, http_port=st.listen)
    try:
        pebble.start()
        cfg = yaml.safe_load(st.cfg_path.read_text())
        cfg["tls"] = {"listen": f"127.0.0.1:{tport}", "cert": str(cert), "key": str(key),
                      "acme": {"email": "ops@nonstop.test", "domains": [BLOCKED], "directory": pebble.directory,
                               "ca_bundle": pebble.ca_bundle}}
        st.cfg_path.write_text(yaml.safe_dump(cfg))
        st.tls_port = tport
        st.cafile = str(module_dir / "ca.pem")
        st.start()
        st.deploy("v1")
        wait_for(lambda: (state_json(st)["status"]["tls"]["acme"] or {}).get("state") == "failing", 30, 0.3,
                 what="the CA refusing the blocked name")
        yield st
    finally:
        st.stop()
        pebble.stop()
        shutil.rmtree(pebble_dir, ignore_errors=True)


def https_get(st: AgentStack) -> int:
    ctx = ssl.create_default_context(cafile=st.cafile)
    c = http.client.HTTPSConnection("127.0.0.1", st.tls_port, context=ctx, timeout=10)
    c.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", st.tls_port), 10), server_hostname=HOST)
    try:
        c.request("GET", "/", headers={"Host": HOST})
        return c.getresponse().status
    finally:
        c.close()


def open_dashboard(page, st: AgentStack):
    page.goto(st.dashboard)
    expect(page.get_by_test_id("conn")).to_have_attribute("data-state", "live", timeout=10_000)


def test_the_panel_shows_the_listener_and_the_served_certificate(https_stack: AgentStack, page):
    tls = state_json(https_stack)["status"]["tls"]
    (served,) = tls["certificates"]
    assert served["field"] == "tls" and served["names"] == [HOST], served
    open_dashboard(page, https_stack)
    panel = page.get_by_test_id("tls")
    expect(panel).to_be_visible()
    expect(page.get_by_test_id("tls-listen")).to_have_text(f"https://127.0.0.1:{https_stack.tls_port}")
    row = page.locator("#tls-certs tbody tr[data-field=tls]")
    expect(row).to_have_count(1)
    expect(row.get_by_test_id("tls-names")).to_have_text(HOST)
    expect(row.get_by_test_id("tls-expiry")).to_contain_text(served["not_after"])
    expect(row.get_by_test_id("tls-expiry")).to_contain_text(re.compile(r"in \d"))
    expect(row).to_contain_text("ok")  # no reload error
    # ACME's own line: its domains, state and the next attempt (the backoff after the refusal)
    acme = page.get_by_test_id("tls-acme")
    expect(acme).to_contain_text(BLOCKED)
    expect(page.get_by_test_id("acme-next")).to_contain_text(tls["acme"]["next_attempt"])
    assert page.errors == []


def test_a_refused_certificate_is_shown_with_the_cas_words_while_the_current_one_serves(https_stack: AgentStack, page):
    acme = state_json(https_stack)["status"]["tls"]["acme"]
    assert acme["state"] == "failing" and acme["failures"] >= 1, acme
    err = acme["last_error"]
    assert err["stage"] == "order" and err["problems"][0]["type"].endswith("rejectedIdentifier"), err
    open_dashboard(page, https_stack)
    alert = page.get_by_test_id("tls-alert")
    expect(alert).to_be_visible()  # in the header, whatever is scrolled into view; it leads to the panel
    alert.click()
    expect(page.get_by_test_id("acme-failing")).to_be_in_viewport()
    expect(page.get_by_test_id("acme-state")).to_have_text("failing")
    failing = page.get_by_test_id("acme-failing")
    expect(failing).to_be_visible()
    expect(page.get_by_test_id("acme-failures")).to_contain_text(f"{acme['failures']} failed attempt")
    # the CA's own text, verbatim: the problem type and detail, and nonstop's one-line message
    problem = err["problems"][0]
    expect(page.get_by_test_id("acme-problems")).to_contain_text(problem["type"])
    expect(page.get_by_test_id("acme-problems")).to_contain_text(problem["detail"])
    expect(page.get_by_test_id("acme-error")).to_have_text(err["message"])
    assert "forbidden by policy" in err["message"] or "rejectedIdentifier" in err["message"], err
    expect(page.get_by_test_id("acme-serving")).to_have_text("The certificate above keeps serving until it expires.")
    # ... and it does: HTTPS answers with the file certificate
    assert https_get(https_stack) == 200
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "dashboard-https-failing.png"
    page.get_by_test_id("tls").screenshot(path=str(shot))
    if not DOC_SCREENSHOT.exists():  # the committed one is refreshed by hand (copy from test-artifacts/)
        shutil.copy(shot, DOC_SCREENSHOT)
    assert page.errors == []
