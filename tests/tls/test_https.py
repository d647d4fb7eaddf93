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
