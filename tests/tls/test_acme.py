"""ACME against a real CA (pebble): issuance, renewal, refusals in the CA's own words, the schedule."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import ssl
import stat
import tempfile
import threading
import time
from pathlib import Path

import pytest
import uvloop
from cryptography import x509

from nonstop.agent.acme import BACKOFF_MAX, BACKOFF_START, AcmeManager, IssueFailed, Issued, renew_at
from nonstop.config import AcmeConfig
from nonstop.errors import ConfigError
from nonstop.proxy.tls import CertReloaded, TlsContexts, load_pair
from tests.tls.helpers import EchoServer, connect, echo
from tests.tls.pebble import BLOCKED, VALIDITY, Pebble


@pytest.fixture(scope="module")
def pebble():
    tmp = Path(tempfile.mkdtemp(prefix="ns-pebble-"))
    p = Pebble(tmp)
    try:
        yield p.start()
    finally:
        p.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def _manager(pebble: Pebble, state: Path, *domains: str, **kw) -> AcmeManager:
    cfg = AcmeConfig(email="ops@nonstop.test", domains=list(domains), directory=pebble.directory,
                     ca_bundle=pebble.ca_bundle)
    m = AcmeManager(cfg, state, **kw)
    pebble.challenges.directory = str(m.paths.challenges)
    return m


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _issue(m: AcmeManager):
    return uvloop.run(m.issue())


def test_issuance(pebble: Pebble, tmp_path: Path) -> None:
    m = _manager(pebble, tmp_path, "app.nonstop.test", "www.app.nonstop.test")
    assert m.current() is None and m.next_attempt() <= time.time()
    assert m.status()["state"] == "missing"
    gaps: list[float] = []

    async def main():
        stop = asyncio.Event()

        async def ticker():  # the agent's loop keeps running while the CA is asked
            last = time.monotonic()
            while not stop.is_set():
                await asyncio.sleep(0.02)
                now = time.monotonic()
                gaps.append(now - last)
                last = now

        t = asyncio.ensure_future(ticker())
        try:
            return await m.issue()
        finally:
            stop.set()
            await t

    res = uvloop.run(main())
    assert isinstance(res, Issued), res
    assert res.domains == ("app.nonstop.test", "www.app.nonstop.test")
    assert res.event()["type"] == "tls_certificate" and res.event()["serial"] == res.serial
    assert len(gaps) > 20 and max(gaps) < 0.25, max(gaps)
    paths = m.paths
    assert res.cert == str(paths.fullchain) and res.key == str(paths.privkey)
    assert paths.fullchain == tmp_path / "tls" / "certs" / "app.nonstop.test" / "fullchain.pem"
    for f in (paths.fullchain, paths.privkey, paths.account, paths.renewal):
        assert _mode(f) == 0o600, f
    assert _mode(paths.cert_dir) == 0o700 and _mode(paths.account.parent) == 0o700
    assert _mode(paths.challenges) == 0o755
    assert os.listdir(paths.challenges) == []  # answered, then removed
    assert any(b"/.well-known/acme-challenge/" in r for r in pebble.challenges.requests)
    account = json.loads(paths.account.read_text())
    assert account["registration"]["uri"].startswith(f"https://127.0.0.1:{pebble.acme_port}/")
    # what the proxy will load, chained to pebble's root
    cert = load_pair(m.source, time.time())
    assert set(cert.names) == {"app.nonstop.test", "www.app.nonstop.test"}
    assert round(cert.not_after - cert.not_before) in (VALIDITY - 1, VALIDITY)
    chain = x509.load_pem_x509_certificates(paths.fullchain.read_bytes())
    root = x509.load_pem_x509_certificate(pebble.root_pem())
    chain[-1].verify_directly_issued_by(root)
    st = m.status()
    assert st["state"] == "valid" and st["failures"] == 0 and st["certificate"]["serial"] == res.serial
    # due again at two thirds of its life (renew_before 30d is more than a third of 1h)
    assert abs(m.next_attempt() - (cert.not_after - VALIDITY / 3)) < 2

    # a real handshake with it, as the proxy will serve it
    contexts = TlsContexts([m.source], time.time())
    client = ssl.create_default_context(cadata=pebble.root_pem().decode())

    async def handshake():
        async with EchoServer(contexts.base) as srv:
            r, w, _ = await connect(srv.port, client, "www.app.nonstop.test")
            assert await echo(r, w, b"tls") == b"tls"
            w.close()

    uvloop.run(handshake())


def test_renewal_replaces_the_files_whole_while_the_old_ones_serve(pebble: Pebble, tmp_path: Path) -> None:
    m = _manager(pebble, tmp_path, "renew.nonstop.test")
    first = _issue(m)
    assert first.ok
    contexts = TlsContexts([m.source], time.time(), settle=0)
    old_inode = m.paths.fullchain.stat().st_ino
    seen: set[str] = set()
    broken: list[str] = []
    done = threading.Event()

    def watch() -> None:  # every state a reader can see during the renewal is a whole chain
        while True:
            last = done.is_set()  # one more read after the renewal returned
            data = m.paths.fullchain.read_bytes()
            try:
                seen.add(hashlib.sha256(x509.load_pem_x509_certificates(data)[0].public_bytes(
                    serialization_der())).hexdigest())
            except ValueError as e:
                broken.append(str(e))
            if last:
                return
            time.sleep(0.005)

    t = threading.Thread(target=watch)
    t.start()
    try:
        second = _issue(m)
    finally:
        done.set()
        t.join(5)
    assert second.ok and second.serial != first.serial
    assert broken == [] and len(seen) == 2  # the old chain, then the new one, nothing between
    assert m.paths.fullchain.stat().st_ino != old_inode  # renamed over, not rewritten in place
    events = contexts.reload_if_changed(time.time())
    assert [type(e) for e in events] == [CertReloaded] and contexts.certs[0].serial == second.serial
    assert sorted(os.listdir(m.paths.cert_dir)) == ["fullchain.pem", "privkey.pem", "renewal.json"]  # no leftovers


def serialization_der():
    from cryptography.hazmat.primitives import serialization

    return serialization.Encoding.DER


def test_a_refusing_ca_leaves_the_certificate_and_says_why(pebble: Pebble, tmp_path: Path) -> None:
    ok = _manager(pebble, tmp_path, "keep.nonstop.test")
    assert _issue(ok).ok
    before = (ok.paths.fullchain.read_bytes(), ok.paths.privkey.read_bytes(), ok.paths.fullchain.stat().st_ino)
    results = []
    # the user adds a name the CA's policy forbids: same certificate (named by its first domain)
    grown = _manager(pebble, tmp_path, "keep.nonstop.test", BLOCKED, on_result=results.append)
    assert grown.current() is None and grown.next_attempt() <= time.time()  # does not cover the new name
    assert grown.has_files()  # but what is stored keeps serving the names it covers
    res = _issue(grown)
    assert isinstance(res, IssueFailed) and results == [res]
    assert res.stage == "order"
    assert res.problems[0].type == "urn:ietf:params:acme:error:rejectedIdentifier"
    assert BLOCKED in res.problems[0].detail  # pebble's own text
    assert "urn:ietf:params:acme:error:rejectedIdentifier" in res.message() and BLOCKED in res.message()
    after = (ok.paths.fullchain.read_bytes(), ok.paths.privkey.read_bytes(), ok.paths.fullchain.stat().st_ino)
    assert after == before
    assert ok.current() is not None  # still servable, still what the proxy loads
    st = grown.status()
    assert st["state"] == "failing" and st["failures"] == 1
    assert st["last_error"]["problems"][0]["type"] == "urn:ietf:params:acme:error:rejectedIdentifier"
    assert abs(res.retry_at - (res.at + BACKOFF_START)) < 1
    ev = res.event()
    assert ev["type"] == "tls_error" and ev["stage"] == "order" and ev["message"] == res.message()
    assert ev["problems"][0] == {"type": "urn:ietf:params:acme:error:rejectedIdentifier",
                                 "detail": res.problems[0].detail, "identifier": None}
    assert json.loads(json.dumps(ev)) == ev  # storable as an event's data
    # the record survives a restart of the agent: no hammering the CA after a crash loop
    again = _manager(pebble, tmp_path, "keep.nonstop.test", BLOCKED)
    assert again.status()["failures"] == 1 and again.next_attempt() >= res.at + BACKOFF_START - 1


def test_a_failed_validation_reports_the_ca_text(pebble: Pebble, tmp_path: Path) -> None:
    m = _manager(pebble, tmp_path, "unreachable.nonstop.test")
    assert _issue(m).ok
    before = m.paths.fullchain.read_bytes()
    pebble.challenges.directory = str(tmp_path / "not-served")  # port 80 answered by something else
    res = _issue(m)
    assert isinstance(res, IssueFailed) and res.stage == "validation", res
    p = res.problems[0]
    assert p.type == "urn:ietf:params:acme:error:unauthorized" and p.identifier == "unreachable.nonstop.test"
    assert "404" in p.detail or "key authorization" in p.detail, p.detail  # pebble's words on what it fetched
    assert m.paths.fullchain.read_bytes() == before
    assert os.listdir(m.paths.challenges) == []


def test_an_account_the_ca_forgot_is_registered_again(pebble: Pebble, tmp_path: Path) -> None:
    m = _manager(pebble, tmp_path, "forgot.nonstop.test")
    assert _issue(m).ok
    import josepy as jose
    from cryptography.hazmat.primitives.asymmetric import rsa

    saved = json.loads(m.paths.account.read_text())
    old_uri = saved["registration"]["uri"]
    saved["key"] = jose.JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=2048)).to_json()
    m.paths.account.write_text(json.dumps(saved))  # a key this CA never saw (a CA reset, a restored backup)
    res = _issue(m)
    assert res.ok, res
    assert json.loads(m.paths.account.read_text())["registration"]["uri"] != old_uri


def test_the_run_loop_issues_then_renews_on_schedule(pebble: Pebble, tmp_path: Path) -> None:
    offset = [0.0]
    results = []
    m = _manager(pebble, tmp_path, "loop.nonstop.test", clock=lambda: time.time() + offset[0],
                 on_result=results.append)

    async def main():
        stop = asyncio.Event()
        task = asyncio.ensure_future(m.run(stop, max_sleep=0.1))
        try:
            while not results:
                await asyncio.sleep(0.05)
            first = m.current()
            assert results[0].ok and first is not None
            await asyncio.sleep(0.5)
            assert len(results) == 1  # not due: sleeping
            offset[0] = (first.not_after - VALIDITY / 3) - time.time() + 1  # the clock reaches the renewal point
            while len(results) < 2:
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)

    uvloop.run(asyncio.wait_for(main(), 60))
    assert results[1].ok and results[1].serial != results[0].serial


def test_a_directory_whose_tls_is_not_trusted(pebble: Pebble, tmp_path: Path) -> None:
    cfg = AcmeConfig(email="ops@nonstop.test", domains=["x.nonstop.test"], directory=pebble.directory)
    res = uvloop.run(AcmeManager(cfg, tmp_path).issue())
    assert isinstance(res, IssueFailed) and res.stage == "directory"
    assert "cannot verify the TLS certificate" in res.message() and "tls.acme.ca_bundle" in res.message()


def test_a_missing_ca_bundle_is_a_config_error(tmp_path: Path) -> None:
    cfg = AcmeConfig(email="ops@nonstop.test", domains=["x.nonstop.test"], ca_bundle="nope.pem")
    with pytest.raises(ConfigError, match="tls.acme.ca_bundle: no such file") as ei:
        AcmeManager(cfg, tmp_path, base_dir=tmp_path)
    assert ei.value.exit_code == 2


# -- the schedule (pure) -------------------------------------------------------------------

DAY = 86400.0


def test_renew_at() -> None:
    now = 1_000_000.0
    assert renew_at(None, 30 * DAY, None, 0, now) == now  # nothing to serve: now
    assert renew_at(now + 90 * DAY, 30 * DAY, None, 0, now, not_before=now) == now + 60 * DAY
    # a 6-day certificate is renewed with 2 days left, not at once and forever
    assert renew_at(now + 6 * DAY, 30 * DAY, None, 0, now, not_before=now) == now + 4 * DAY
    # failures back off: 5 min, 10 min, 20 min … up to 6 h
    assert renew_at(None, 30 * DAY, now, 1, now) == now + BACKOFF_START
    assert renew_at(None, 30 * DAY, now, 3, now) == now + 4 * BACKOFF_START
    assert renew_at(None, 30 * DAY, now, 30, now) == now + BACKOFF_MAX
    # a backoff never brings a renewal forward
    assert renew_at(now + 90 * DAY, 30 * DAY, now, 1, now, not_before=now) == now + 60 * DAY


def test_acme_config_refuses_what_http01_cannot_do() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="wildcard needs a DNS-01"):
        AcmeConfig(email="a@b.c", domains=["*.example.com"])
    with pytest.raises(ValidationError, match="listed twice"):
        AcmeConfig(email="a@b.c", domains=["a.example.com", "A.example.com"])
