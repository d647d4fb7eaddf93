"""HTTPS on the embedded proxy, end to end (DESIGN §2 "HTTPS"), under load over TLS.

- a blue-green deploy and a rollback over HTTPS: zero failed requests (keep-alive, new connections,
  POSTs, one-second requests);
- the certificate files replaced mid-load: zero failed requests, and new handshakes get the new
  certificate (old connections keep theirs);
- the plain listener redirects to https (308), the app sees X-Forwarded-Proto: https, HSTS is sent;
- a certificate that does not match its key, an expired one, an unreadable file: exit 2 naming the field,
  nothing started.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import json
import os
import ssl
import time

import pytest
import trustme

from nonstop.testing.load import LoadClient
from tests.e2e._canary_helpers import warm
from tests.e2e.artifacts import RUN_COMMAND, make_artifact
from tests.e2e.helpers import stack_ports, wait_for

HOST = "shop.nonstop.test"
LOAD = dict(rate=60, keepalive=3, new=2, post=2, slow=1, slow_ms=1000, timeout=20)


@pytest.fixture
def ca(tmp_path):
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    return ca


def write_pair(ca, d, name: str, **kw) -> tuple[str, str]:
    leaf = ca.issue_cert(HOST, **kw)
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    leaf.private_key_pem.write_to_path(str(key))
    os.chmod(key, 0o600)
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    return str(cert), str(key)


def fingerprint(cert_path: str) -> str:
    der = ssl.PEM_cert_to_DER_cert(open(cert_path).read().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
    return hashlib.sha256(der).hexdigest()


def https_stack(stack_factory, tmp_path, ca, **tls):
    cert, key = write_pair(ca, tmp_path, "first")
    (tport,) = stack_ports(1)
    st = stack_factory(run={"command": RUN_COMMAND},
                       tls={"listen": f"127.0.0.1:{tport}", "cert": cert, "key": key, **tls})
    st.tls_port = tport
    st.https_url = f"https://{HOST}:{tport}/"
    return st, cert, key


def https_get(st, path: str, cafile: str) -> tuple[int, dict, bytes]:
    ctx = ssl.create_default_context(cafile=cafile)
    c = http.client.HTTPSConnection("127.0.0.1", st.tls_port, context=ctx, timeout=10)
    c._tunnel_host = None
    # SNI and verification for the site's name, the TCP connection to loopback
    c.sock = ctx.wrap_socket(__import__("socket").create_connection(("127.0.0.1", st.tls_port), 10), server_hostname=HOST)
    try:
        c.request("GET", path, headers={"Host": f"{HOST}:{st.tls_port}"})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def test_deploy_and_rollback_over_https_and_a_certificate_replaced_mid_load(stack_factory, tmp_path, ca):
    good = make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.3")
    st, cert, key = https_stack(stack_factory, tmp_path, ca, redirect_http=True, hsts="1d")
    cafile = str(tmp_path / "ca.pem")
    st.deploy("v1", "--artifact", str(good))

    status, headers, body = https_get(st, "/headers", cafile)
    assert status == 200 and json.loads(body)["headers"]["x-forwarded-proto"] == "https"
    assert headers["strict-transport-security"] == "max-age=86400"
    # plain HTTP: 308 to https, the path kept
    c = http.client.HTTPConnection("127.0.0.1", st.listen, timeout=10)
    c.request("GET", "/some/path?q=1", headers={"Host": HOST})
    r = c.getresponse()
    assert r.status == 308 and r.getheader("Location") == f"https://{HOST}:{st.tls_port}/some/path?q=1"
    c.close()

    load = LoadClient(st.https_url, cafile=cafile, connect_to=f"127.0.0.1:{st.tls_port}", **LOAD)
    with load:
        warm(load, 80, stack=st)
        st.deploy("v2", "--artifact", str(good))
        warm(load, 80, stack=st)
        assert st.cli("rollback", "--json").code == 0
        warm(load, 80, stack=st)
        # the certificate and key replaced (as certbot or a secret manager would): new files renamed in place
        new_cert, new_key = write_pair(ca, tmp_path, "second")
        os.replace(new_key, key)
        os.replace(new_cert, cert)
        t_swap = time.monotonic()
        want = fingerprint(cert)
        wait_for(lambda: any(fp == want for _, fp in load.handshakes), timeout=15, interval=0.1,
                 what="a handshake with the new certificate")
        time.sleep(max(0.0, t_swap + 4.5 - time.monotonic()))  # new connections keep coming meanwhile
        warm(load, 40, stack=st)
    result = load.result
    print(f"\nover HTTPS: {result.total} requests, {result.failed} failed, {len(load.handshakes)} handshakes")
    assert result.failed == 0, result.format()
    assert set(result.by_version()) == {"v1", "v2"}
    after = [fp for t, fp in load.handshakes if t > t_swap + 3.0]
    assert after and all(fp == want for fp in after), "handshakes well after the swap still got the old certificate"
    assert st.status()["tls"]["certificates"][0]["reload_error"] is None


@pytest.mark.parametrize("case", ["mismatch", "expired", "unreadable"])
def test_bad_certificates_are_exit_2_naming_the_field(stack_factory, tmp_path, ca, case):
    cert, key = write_pair(ca, tmp_path, "good")
    other_cert, other_key = write_pair(ca, tmp_path, "other")
    if case == "mismatch":
        key, field = other_key, "tls.key"
    elif case == "expired":
        past = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
        cert, key = write_pair(ca, tmp_path, "old", not_before=past, not_after=past + dt.timedelta(days=30))
        field = "tls.cert"
    else:
        cert, field = str(tmp_path / "missing.pem"), "tls.cert"
    (tport,) = stack_ports(1)
    st = stack_factory(up=False, run={"command": RUN_COMMAND}, tls={"listen": f"127.0.0.1:{tport}", "cert": cert, "key": key})
    for verb in (("check",), ("up", "--detach", "--timeout", "30")):
        r = st.cli(*verb)
        assert r.code == 2, (verb, r.out, r.err)
        assert field in r.err and str(st.cfg_path) in r.err, r.err
    assert st.pid("proxy") is None and st.pid("agent") is None
