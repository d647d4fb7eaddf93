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
import http.client
import json
import os
import time

import pytest

from tests.e2e._canary_helpers import warm
from tests.e2e._https_helpers import HOST, fingerprint, https_get, https_load, https_stack, write_pair
from tests.e2e.artifacts import RUN_COMMAND, make_artifact
from tests.e2e.helpers import stack_ports, wait_for

LOAD = dict(rate=60, keepalive=3, new=2, post=2, slow=1, slow_ms=1000, timeout=20)


def test_deploy_and_rollback_over_https_and_a_certificate_replaced_mid_load(stack_factory, tmp_path, ca):
    good = make_artifact(tmp_path / "artifacts", "good", "--boot-seconds", "0.3")
    st, cert, key = https_stack(stack_factory, tmp_path, ca, tls={"redirect_http": True, "hsts": "1d"})
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

    load = https_load(st, **LOAD)
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
