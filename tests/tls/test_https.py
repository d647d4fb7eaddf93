"""The plain/TLS listener helpers: challenge path, redirect, HSTS, forwarded scheme (pure functions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nonstop.proxy import https

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"


def test_challenge_token() -> None:
    assert https.challenge_token(b"/.well-known/acme-challenge/" + TOKEN.encode()) == TOKEN
    assert https.challenge_token(b"/.well-known/acme-challenge/" + TOKEN.encode() + b"?x=1") == TOKEN
    for bad in (b"/.well-known/acme-challenge/../../etc/passwd", b"/.well-known/acme-challenge/%2e%2e",
                b"/.well-known/acme-challenge/", b"/.well-known/acme-challenge/short", b"/index.html"):
        assert https.challenge_token(bad) is None, bad


def test_challenge_response(tmp_path: Path) -> None:
    (tmp_path / TOKEN).write_bytes(b"keyauth." + TOKEN.encode())
    ok = https.challenge_response(str(tmp_path), b"/.well-known/acme-challenge/" + TOKEN.encode())
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"\r\n\r\nkeyauth." + TOKEN.encode())
    missing = https.challenge_response(str(tmp_path), b"/.well-known/acme-challenge/" + b"A" * 43)
    assert missing.startswith(b"HTTP/1.1 404 ")
    assert https.challenge_response(str(tmp_path), b"/.well-known/acme-challenge/../x").startswith(b"HTTP/1.1 404 ")
    assert https.challenge_response(str(tmp_path), b"/app") is None  # not ours: proxied as usual


@pytest.mark.parametrize("host, target, port, want", [
    (b"example.com", b"/a?b=1", 443, b"https://example.com/a?b=1"),
    (b"Example.COM:8080", b"/", 443, b"https://example.com/"),
    (b"example.com:80", b"/x", 8443, b"https://example.com:8443/x"),
    (b"[::1]:8080", b"/", 8443, b"https://[::1]:8443/"),
    (b"127.0.0.1", b"*", 443, b"https://127.0.0.1/"),
    (None, b"/", 443, None),
    (b"evil.com\r\nSet-Cookie: x", b"/", 443, None),
    (b"a/b", b"/", 443, None),
])
def test_redirect_location(host, target, port, want) -> None:
    assert https.redirect_location(host, target, port) == want


def test_redirect_response() -> None:
    r = https.redirect_response(b"example.com", b"/pay", 443)
    assert r.startswith(b"HTTP/1.1 308 Permanent Redirect\r\nLocation: https://example.com/pay\r\n")
    assert b"Connection: close\r\n" in r
    head, body = r.split(b"\r\n\r\n", 1)
    assert b"Content-Length: %d" % len(body) in head
    assert https.redirect_response(None, b"/", 443).startswith(b"HTTP/1.1 400 ")


def test_hsts_and_forwarded_proto() -> None:
    assert https.hsts_line(None) == b""
    assert https.hsts_line(365 * 86400.0) == b"Strict-Transport-Security: max-age=31536000\r\n"
    assert https.forwarded_proto(True) == b"https" and https.forwarded_proto(False) == b"http"


def test_front_door_answers_challenges_and_redirects_before_routing(tmp_path: Path) -> None:
    (tmp_path / TOKEN).write_bytes(b"keyauth")
    challenge = b"/.well-known/acme-challenge/" + TOKEN.encode()
    host = [(b"Host", b"shop.example")]
    # a challenge is answered on either listener, redirect or not
    assert https.front_door(str(tmp_path), 443, b"http", challenge, host, False).endswith(b"keyauth")
    assert https.front_door(str(tmp_path), None, b"https", challenge, host, False).endswith(b"keyauth")
    # plain HTTP with a redirect: 308 to the HTTPS port; on the TLS listener, or without a redirect: routed
    assert b"Location: https://shop.example:8443/a" in https.front_door(None, 8443, b"http", b"/a", host, False)
    assert https.front_door(None, 8443, b"https", b"/a", host, False) is None
    assert https.front_door(None, None, b"http", b"/a", host, False) is None
    # TLS terminated by a trusted proxy in front (it says https): served, not redirected again; an
    # untrusted peer saying so is redirected all the same
    fwd = [*host, (b"X-Forwarded-Proto", b"https")]
    assert https.front_door(None, 443, b"http", b"/a", fwd, True) is None
    assert https.front_door(None, 443, b"http", b"/a", fwd, False).startswith(b"HTTP/1.1 308 ")
