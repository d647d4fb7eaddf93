"""HTTPS stacks for the end-to-end tests: certificates from a test CA (the ``ca`` fixture of conftest.py),
a stack whose embedded proxy has a ``tls:`` block, and requests and load over its TLS listener."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import ssl

from nonstop.testing.load import LoadClient
from tests.e2e.artifacts import RUN_COMMAND
from tests.e2e.helpers import stack_ports

HOST = "shop.nonstop.test"


def write_pair(ca, d, name: str, **kw) -> tuple[str, str]:
    """A certificate for HOST issued by ``ca``, and its key (0600), written to ``d``."""
    leaf = ca.issue_cert(HOST, **kw)
    cert, key = d / f"{name}.pem", d / f"{name}.key"
    leaf.private_key_pem.write_to_path(str(key))
    os.chmod(key, 0o600)
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    return str(cert), str(key)


def fingerprint(cert_path: str) -> str:
    der = ssl.PEM_cert_to_DER_cert(open(cert_path).read().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
    return hashlib.sha256(der).hexdigest()


def https_stack(stack_factory, tmp_path, ca, *, tls: dict | None = None, **overrides):
    """A stack with ``tls.listen`` on a port of its own (``st.tls_port``, ``st.https_url``, ``st.cafile``);
    ``overrides`` go to ``stack_factory`` (strategy, hold_timeout, …). Returns (stack, cert, key)."""
    cert, key = write_pair(ca, tmp_path, "first")
    (tport,) = stack_ports(1)
    overrides.setdefault("run", {"command": RUN_COMMAND})
    st = stack_factory(tls={"listen": f"127.0.0.1:{tport}", "cert": cert, "key": key, **(tls or {})}, **overrides)
    st.tls_port = tport
    st.https_url = f"https://{HOST}:{tport}/"
    st.cafile = str(tmp_path / "ca.pem")
    return st, cert, key


def https_load(st, **load) -> LoadClient:
    """A load client on the stack's TLS listener: the site's name for SNI and verification, the CA trusted,
    the TCP connections to loopback."""
    return LoadClient(st.https_url, cafile=st.cafile, connect_to=f"127.0.0.1:{st.tls_port}", **load)


def https_get(st, path: str, cafile: str) -> tuple[int, dict, bytes]:
    ctx = ssl.create_default_context(cafile=cafile)
    c = http.client.HTTPSConnection("127.0.0.1", st.tls_port, context=ctx, timeout=10)
    # SNI and verification for the site's name, the TCP connection to loopback
    c.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", st.tls_port), 10), server_hostname=HOST)
    try:
        c.request("GET", path, headers={"Host": f"{HOST}:{st.tls_port}"})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()
