"""HTTPS contexts with real handshakes: SNI choice, live reload, refused files, protocol floor.

A TLS echo server on 127.0.0.1:0 runs on uvloop with ``TlsContexts.base``,
as the proxy's listener will; clients are the standard ``ssl`` module
trusting a trustme CA.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import ssl
import struct
import time
from pathlib import Path

import pytest
import uvloop

from nonstop.errors import TlsConfigError
from nonstop.proxy.tls import CIPHERS, CertReloaded, CertReloadFailed, CertSource, ReloadPlan, TlsContexts, load_pair
from tests.tls.helpers import EchoServer, client_context, connect, echo, replace_file, write_pair

NOW = time.time


# -- SNI -----------------------------------------------------------------------------------


def test_sni_picks_exact_then_wildcard_then_default(tmp_path: Path, ca) -> None:
    default = write_pair(tmp_path, ca, "default.test", stem="default")
    exact = write_pair(tmp_path, ca, "a.test", "www.a.test", stem="a", field="tls.certificates[0]")
    wild = write_pair(tmp_path, ca, "*.w.test", stem="w", field="tls.certificates[1]")
    contexts = TlsContexts([default, exact, wild], NOW())
    fp = {c.source: c.fingerprint for c in contexts.certs}
    strict, loose = client_context(ca), client_context(ca, verify=False)

    async def main() -> None:
        async with EchoServer(contexts.base) as srv:
            for name, want, ctx in [
                ("a.test", exact, strict),
                ("WWW.A.TEST", exact, strict),       # names are case-insensitive
                ("x.w.test", wild, strict),
                ("deep.x.w.test", default, loose),  # a wildcard covers one label only
                ("other.test", default, loose),
                (None, default, loose),              # no SNI at all (clients connecting by IP)
            ]:
                r, w, got = await connect(srv.port, ctx, name)
                assert got == fp[want], name
                assert await echo(r, w, b"hi") == b"hi"
                sslobj = w.get_extra_info("ssl_object")
                assert sslobj.selected_alpn_protocol() == "http/1.1"  # offered h2 too: settled on 1.1
                assert sslobj.version() in ("TLSv1.2", "TLSv1.3")
                w.close()

    uvloop.run(main())
    assert contexts.select("a.test").source == exact and contexts.select(None).source == default


def test_a_name_two_certificates_cover_goes_to_the_first(tmp_path: Path, ca) -> None:
    one = write_pair(tmp_path, ca, "a.test", stem="one")
    two = write_pair(tmp_path, ca, "a.test", "b.test", stem="two", field="tls.certificates[0]")
    contexts = TlsContexts([one, two], NOW())
    assert contexts.select("a.test").source == one
    assert contexts.select("b.test").source == two


def test_no_certificate_yet_refuses_handshakes_until_one_comes(tmp_path: Path, ca) -> None:
    """An ACME certificate not issued yet: the listener is up, handshakes fail cleanly, then work."""
    contexts = TlsContexts([], NOW())
    src = write_pair(tmp_path, ca, "late.test")

    async def main() -> None:
        async with EchoServer(contexts.base) as srv:
            # the SNI callback refuses; asyncio and uvloop then drop the connection without flushing
            # the alert, so the client sees a reset or an EOF mid-handshake
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await connect(srv.port, client_context(ca), "late.test")
            contexts.replace([src], NOW())
            r, w, got = await connect(srv.port, client_context(ca), "late.test")
            assert got == contexts.certs[0].fingerprint
            assert await echo(r, w, b"now") == b"now"
            w.close()

    uvloop.run(main())


# -- live reload ---------------------------------------------------------------------------


def test_replaced_files_serve_new_handshakes_while_open_connections_go_on(tmp_path: Path, ca) -> None:
    src = write_pair(tmp_path, ca, "site.test")
    other = write_pair(tmp_path, ca, "other.test", stem="other", field="tls.certificates[0]")
    contexts = TlsContexts([src, other], NOW(), settle=0)
    old_fp = contexts.certs[0].fingerprint

    async def main() -> None:
        async with EchoServer(contexts.base) as srv:
            r1, w1, got = await connect(srv.port, client_context(ca), "site.test")
            assert got == old_fp
            assert await echo(r1, w1, b"before") == b"before"
            assert contexts.reload_if_changed(NOW()) == []  # nothing changed: nothing read
            write_pair(tmp_path, ca, "site.test")  # a renewal: new key, new certificate, same paths
            events = contexts.reload_if_changed(NOW())
            assert [type(e) for e in events] == [CertReloaded] and events[0].source == src
            new_fp = contexts.certs[0].fingerprint
            assert new_fp != old_fp and events[0].previous.fingerprint == old_fp
            r2, w2, got2 = await connect(srv.port, client_context(ca), "site.test")
            assert got2 == new_fp
            # the connection made before the swap is untouched, and so is the other certificate
            assert await echo(r1, w1, b"after") == b"after"
            assert await echo(r2, w2, b"new") == b"new"
            _, w3, got3 = await connect(srv.port, client_context(ca), "other.test")
            assert got3 == contexts.certs[1].fingerprint
            for w in (w1, w2, w3):
                w.close()

    uvloop.run(main())


def test_a_broken_new_file_keeps_the_old_certificate_and_says_why(tmp_path: Path, ca) -> None:
    src = write_pair(tmp_path, ca, "site.test")
    contexts = TlsContexts([src], NOW(), settle=0)
    serving = contexts.certs[0].fingerprint
    replace_file(Path(src.cert), b"-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    events = contexts.reload_if_changed(NOW())
    assert len(events) == 1 and isinstance(events[0], CertReloadFailed)
    assert events[0].error.field == "tls.cert" and src.cert in events[0].message()
    assert "previous certificate keeps serving" in events[0].message()
    assert contexts.reload_if_changed(NOW()) == []  # reported once, not every tick
    assert contexts.describe(NOW())[0]["reload_error"].startswith("tls.cert: ")

    async def main() -> None:
        async with EchoServer(contexts.base) as srv:
            _, w, got = await connect(srv.port, client_context(ca), "site.test")
            assert got == serving
            w.close()

    uvloop.run(main())
    write_pair(tmp_path, ca, "site.test")
    assert [type(e) for e in contexts.reload_if_changed(NOW())] == [CertReloaded]
    assert contexts.describe(NOW())[0]["reload_error"] is None


def test_a_renewal_writing_key_then_cert_is_read_once_whole(tmp_path: Path, ca) -> None:
    """With a settle time, the half-written state (new key, old cert) is never tried."""
    src = write_pair(tmp_path, ca, "site.test")
    contexts = TlsContexts([src], 1000.0 + NOW(), settle=1.0)
    leaf = ca.issue_cert("site.test")
    t = NOW()
    replace_file(Path(src.key), leaf.private_key_pem.bytes())
    assert contexts.reload_if_changed(t) == []  # change seen: wait for it to settle
    replace_file(Path(src.cert), b"".join(p.bytes() for p in leaf.cert_chain_pems))
    assert contexts.reload_if_changed(t + 0.5) == []  # changed again: the wait starts over
    assert contexts.reload_if_changed(t + 1.0) == []
    events = contexts.reload_if_changed(t + 1.6)
    assert [type(e) for e in events] == [CertReloaded]


def test_reload_plan_decisions() -> None:
    src = CertSource("tls", "c", "k")
    plan = ReloadPlan(settle=1.0)
    a, b, c = ((1, 1, 1, 1), (1, 2, 1, 1)), ((1, 3, 1, 1), (1, 2, 1, 1)), ((1, 3, 1, 1), (1, 4, 1, 1))
    assert plan.due(src, a, 0.0)  # never read: read now
    plan.attempted(src, a)
    assert not plan.due(src, a, 5.0)
    assert not plan.due(src, b, 10.0)  # first sight of a change
    assert not plan.due(src, c, 10.5)  # still changing
    assert not plan.due(src, c, 11.4)
    assert plan.due(src, c, 11.5)  # stable for `settle`
    plan.attempted(src, c)
    assert not plan.due(src, c, 20.0)
    gone = (None, None)
    assert not plan.due(src, gone, 30.0) and plan.due(src, gone, 31.0)  # vanished files get one (failing) try


# -- refused files -------------------------------------------------------------------------


def _other_key(tmp_path: Path, ca) -> str:
    return write_pair(tmp_path, ca, "other.test", stem="other").key


@pytest.mark.parametrize("case, field, words", [
    ("mismatch", "tls.key", "does not match the certificate"),
    ("expired", "tls.cert", "expired on 2020-01-02"),
    ("not_yet", "tls.cert", "not valid yet: valid from 2999-01-01"),
    ("missing_cert", "tls.cert", "cannot read"),
    ("directory_key", "tls.key", "Is a directory"),
    ("garbage_cert", "tls.cert", "not a PEM certificate"),
    ("garbage_key", "tls.key", "not a PEM private key"),
    ("bad_base64", "tls.cert", "cannot be parsed"),
    ("swapped", "tls.cert", "holds a private key, not a certificate"),
    ("encrypted_key", "tls.key", "encrypted with a passphrase"),
])
def test_unservable_pairs_name_the_field(tmp_path: Path, ca, case: str, field: str, words: str) -> None:
    kw = {}
    if case == "expired":
        kw = dict(not_before=dt.datetime(2019, 1, 1), not_after=dt.datetime(2020, 1, 2))
    elif case == "not_yet":
        kw = dict(not_before=dt.datetime(2999, 1, 1), not_after=dt.datetime(2999, 6, 1))
    src = write_pair(tmp_path, ca, "site.test", **kw)
    cert, key = src.cert, src.key
    if case == "mismatch":
        key = _other_key(tmp_path, ca)
    elif case == "missing_cert":
        cert = str(tmp_path / "nope.crt")
    elif case == "directory_key":
        key = str(tmp_path)
    elif case == "garbage_cert":
        Path(cert).write_bytes(b"hello\n")
    elif case == "garbage_key":
        Path(key).write_bytes(b"\x00\x01binary")
    elif case == "bad_base64":
        Path(cert).write_bytes(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n")
    elif case == "swapped":
        cert, key = key, cert
    elif case == "encrypted_key":
        from cryptography.hazmat.primitives import serialization

        k = serialization.load_pem_private_key(Path(key).read_bytes(), None)
        Path(key).write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(TlsConfigError) as ei:
        load_pair(CertSource("tls", cert, key), NOW())
    e = ei.value
    assert e.field == field and e.exit_code == 2
    assert e.message.startswith(field + ": ") and words in e.message
    assert e.to_dict()["field"] == field


def test_the_field_of_a_listed_certificate_is_named(tmp_path: Path, ca) -> None:
    src = write_pair(tmp_path, ca, "site.test", field="tls.certificates[2]")
    Path(src.cert).write_bytes(b"junk")
    with pytest.raises(TlsConfigError, match=r"^tls\.certificates\[2\]\.cert: "):
        load_pair(src, NOW())


def test_chain_order(tmp_path: Path, ca) -> None:
    inter = ca.create_child_ca()
    leaf = inter.issue_cert("chain.test")
    pems = [p.bytes() for p in leaf.cert_chain_pems]  # leaf, intermediate
    assert len(pems) == 2
    key = tmp_path / "k.pem"
    key.write_bytes(leaf.private_key_pem.bytes())
    good, reversed_, foreign = tmp_path / "good.pem", tmp_path / "rev.pem", tmp_path / "foreign.pem"
    good.write_bytes(b"".join(pems))
    reversed_.write_bytes(pems[1] + pems[0])
    foreign.write_bytes(pems[0] + ca.create_child_ca().cert_pem.bytes())  # an intermediate that did not sign it
    loaded = load_pair(CertSource("tls", str(good), str(key)), NOW())
    assert loaded.names == ("chain.test",) and loaded.covers("CHAIN.test.")
    with pytest.raises(TlsConfigError, match="belongs to certificate 2 in the file, not the first one"):
        load_pair(CertSource("tls", str(reversed_), str(key)), NOW())
    with pytest.raises(TlsConfigError, match=r"^tls\.cert: .*chain out of order: certificate 2 .* did not issue certificate 1"):
        load_pair(CertSource("tls", str(foreign), str(key)), NOW())


def test_an_rsa_pair_serves(tmp_path: Path) -> None:
    import trustme

    rsa_ca = trustme.CA(key_type=trustme.KeyType.RSA)
    leaf = rsa_ca.issue_cert("rsa.test", key_type=trustme.KeyType.RSA)
    cert, key = tmp_path / "rsa.crt", tmp_path / "rsa.key"
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    key.write_bytes(leaf.private_key_pem.bytes())
    contexts = TlsContexts([CertSource("tls", str(cert), str(key))], NOW())
    client = client_context(rsa_ca)
    client.maximum_version = ssl.TLSVersion.TLSv1_2

    async def main() -> None:
        async with EchoServer(contexts.base) as srv:
            _, w, got = await connect(srv.port, client, "rsa.test")
            assert got == contexts.certs[0].fingerprint
            assert w.get_extra_info("ssl_object").cipher()[0].startswith("ECDHE-RSA-")
            w.close()

    uvloop.run(main())


def test_a_bad_pair_at_start_starts_nothing(tmp_path: Path, ca) -> None:
    good = write_pair(tmp_path, ca, "good.test", stem="good")
    bad = CertSource("tls.certificates[0]", good.cert, _other_key(tmp_path, ca))
    with pytest.raises(TlsConfigError, match=r"^tls\.certificates\[0\]\.key: "):
        TlsContexts([good, bad], NOW())


def test_replace_is_all_or_nothing(tmp_path: Path, ca) -> None:
    a = write_pair(tmp_path, ca, "a.test", stem="a")
    contexts = TlsContexts([a], NOW())
    before = contexts.certs
    broken = CertSource("tls.acme", str(tmp_path / "missing.pem"), a.key)
    with pytest.raises(TlsConfigError, match=r"^tls\.acme\.cert: cannot read"):
        contexts.replace([a, broken], NOW())
    assert contexts.certs == before
    b = write_pair(tmp_path, ca, "b.test", stem="b", field="tls.acme")
    contexts.replace([a, b], NOW())
    assert contexts.certs[0] is before[0]  # unchanged files are not read again
    assert contexts.select("b.test").source == b


def test_loads_from_the_paths_without_memfd(tmp_path: Path, ca, monkeypatch) -> None:
    src = write_pair(tmp_path, ca, "site.test")
    monkeypatch.delattr(os, "memfd_create")
    assert load_pair(src, NOW()).names == ("site.test",)


# -- protocol floor and ciphers ------------------------------------------------------------


def _client_hello(version: int, server_name: bytes) -> bytes:
    """A minimal ClientHello record (RFC 5246 §7.4.1.2) with SNI, groups, point formats and sigalgs."""
    ciphers = [0xC02B, 0xC02F, 0xC013, 0x002F]  # ECDHE-ECDSA/RSA-AES128-GCM-SHA256, then CBC-SHA suites
    sni_list = struct.pack("!BH", 0, len(server_name)) + server_name
    exts = [
        (0, struct.pack("!H", len(sni_list)) + sni_list),
        (10, struct.pack("!HHH", 4, 0x0017, 0x001D)),  # secp256r1, x25519
        (11, b"\x01\x00"),
        (13, struct.pack("!HHHH", 6, 0x0403, 0x0804, 0x0401)),
    ]
    ext_bytes = b"".join(struct.pack("!HH", t, len(b)) + b for t, b in exts)
    body = (struct.pack("!H", version) + os.urandom(32) + b"\x00"
            + struct.pack("!H", 2 * len(ciphers)) + b"".join(struct.pack("!H", c) for c in ciphers)
            + b"\x01\x00" + struct.pack("!H", len(ext_bytes)) + ext_bytes)
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def _first_bytes(port: int, hello: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(hello)
        data = b""
        while len(data) < 7:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def test_tls_1_1_is_refused_and_1_2_is_answered(tmp_path: Path, ca) -> None:
    """Raw ClientHellos, so the client's own OpenSSL policy cannot be what refuses TLS 1.1."""
    contexts = TlsContexts([write_pair(tmp_path, ca, "site.test")], NOW())

    async def main() -> None:
        async with EchoServer(contexts.base) as srv:
            loop = asyncio.get_running_loop()
            old = await loop.run_in_executor(None, _first_bytes, srv.port, _client_hello(0x0302, b"site.test"))
            new = await loop.run_in_executor(None, _first_bytes, srv.port, _client_hello(0x0303, b"site.test"))
            # uvloop closes a failed handshake without flushing OpenSSL's alert: no ServerHello, nothing
            assert old == b""
            assert new[0] == 0x16 and new[5] == 0x02, new[:8]  # a ServerHello for TLS 1.2

    uvloop.run(main())

    # the same context behind a blocking socket shows what OpenSSL answers: protocol_version (70)
    with socket.create_server(("127.0.0.1", 0)) as lsock:
        port = lsock.getsockname()[1]

        def serve_one() -> None:
            conn, _ = lsock.accept()
            with conn:
                try:
                    contexts.base.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    pass

        import threading

        t = threading.Thread(target=serve_one)
        t.start()
        alert = _first_bytes(port, _client_hello(0x0302, b"site.test"))
        t.join(5)
    assert alert[0] == 0x15 and alert[5:7] == b"\x02\x46", alert[:8]  # fatal alert, protocol_version


def test_tls_1_2_negotiates_a_modern_cipher_and_refuses_old_ones(tmp_path: Path, ca) -> None:
    src = write_pair(tmp_path, ca, "site.test")
    contexts = TlsContexts([src], NOW())
    modern = client_context(ca)
    modern.maximum_version = ssl.TLSVersion.TLSv1_2
    old = client_context(ca)
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    old.set_ciphers("AES128-SHA:ECDHE-ECDSA-AES128-SHA")  # CBC with SHA-1: not in the intermediate list

    async def main() -> None:
        async with EchoServer(contexts.base) as srv:
            _, w, _ = await connect(srv.port, modern, "site.test")
            name, version, _ = w.get_extra_info("ssl_object").cipher()
            assert version == "TLSv1.2" and name in CIPHERS.split(":")
            w.close()
            with pytest.raises((ssl.SSLError, ConnectionError)):
                await connect(srv.port, old, "site.test")
        # control: the same old client is served by a context that allows those suites
        permissive = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        permissive.load_cert_chain(src.cert, src.key)
        permissive.set_ciphers("AES128-SHA:ECDHE-ECDSA-AES128-SHA")
        async with EchoServer(permissive) as srv:
            _, w, _ = await connect(srv.port, old, "site.test")
            assert w.get_extra_info("ssl_object").cipher()[0] == "ECDHE-ECDSA-AES128-SHA"
            w.close()

    uvloop.run(main())
