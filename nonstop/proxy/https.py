"""What the plain and the TLS listener do differently, as pure functions the connection code calls.

Per listener:

===========================  ======================================  ==========================
request                      plain listener (``listen``)             TLS listener (``tls.listen``)
===========================  ======================================  ==========================
``GET /.well-known/acme-     the key authorization from the           the same (CAs validate on
challenge/<token>``          challenge directory, or 404              port 80; harmless here)
anything else                308 to ``https://`` when                 proxied with
                             ``redirect_http``, else proxied with     ``X-Forwarded-Proto: https``
                             ``X-Forwarded-Proto: http``              and, with ``hsts``, a
                                                                      ``Strict-Transport-Security``
                                                                      header on every response
===========================  ======================================  ==========================
"""

from __future__ import annotations

import os
import re

__all__ = [
    "CHALLENGE_PREFIX", "challenge_token", "read_challenge", "challenge_response",
    "redirect_location", "redirect_response", "front_door", "hsts_line", "forwarded_proto",
]

CHALLENGE_PREFIX = b"/.well-known/acme-challenge/"
# RFC 8555 §8.3: a token is base64url; anything else is no token of ours (and never a path)
_TOKEN = re.compile(rb"[A-Za-z0-9_-]{16,256}")
# what a Host header may hold for us to build a redirect from it (RFC 3986 reg-name or IP literal)
_HOST = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]{1,253})(?::(\d{1,5}))?")


def challenge_token(target: bytes) -> str | None:
    """The token of an HTTP-01 challenge request (``/.well-known/acme-challenge/<token>``), else ``None``."""
    if not target.startswith(CHALLENGE_PREFIX):
        return None
    token = target[len(CHALLENGE_PREFIX):].split(b"?", 1)[0]
    return token.decode() if _TOKEN.fullmatch(token) else None


def read_challenge(directory: str, token: str) -> bytes | None:
    """The key authorization the agent wrote for ``token`` (``<directory>/<token>``), or ``None``."""
    try:
        with open(os.path.join(directory, token), "rb") as f:
            return f.read(4096)
    except OSError:
        return None


def challenge_response(directory: str, target: bytes) -> bytes | None:
    """The whole HTTP/1.1 response to a challenge request, or ``None`` when ``target`` is not one."""
    token = challenge_token(target)
    if token is None:
        return None if not target.startswith(CHALLENGE_PREFIX) else _plain(404, b"no such challenge\n")
    body = read_challenge(directory, token)
    if body is None:
        return _plain(404, b"no such challenge\n")
    return _plain(200, body, b"application/octet-stream")


def redirect_location(host: bytes | None, target: bytes, https_port: int) -> bytes | None:
    """Where a plain-HTTP request for ``host`` + ``target`` goes on HTTPS; ``None`` if the Host is unusable."""
    if not host:
        return None
    m = _HOST.fullmatch(host.strip())
    if m is None:
        return None
    name = m.group(1).lower()
    port = b"" if https_port == 443 else b":%d" % https_port
    if not target.startswith(b"/"):
        target = b"/"  # "*" (OPTIONS) or an absolute form: the site's root
    return b"https://" + name + port + target


def redirect_response(host: bytes | None, target: bytes, https_port: int) -> bytes:
    """308 to HTTPS (method and body kept, RFC 9110 §15.4.9), or 400 when the Host cannot make a URL.

    The response closes the connection: a request body, if any, was not read.
    """
    loc = redirect_location(host, target, https_port)
    if loc is None:
        return _plain(400, b"missing or invalid Host header\n")
    body = b"redirecting to " + loc + b"\n"
    return (b"HTTP/1.1 308 Permanent Redirect\r\nLocation: " + loc + b"\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)


def front_door(challenges: str | None, redirect_to: int | None, scheme: bytes, target: bytes,
               headers: list[tuple[bytes, bytes]], from_trusted_proxy: bool) -> bytes | None:
    """The whole response a listener with front-door rules gives before any routing, or ``None``.

    ``challenges`` is the ACME challenge directory (``None``: no ACME); ``redirect_to`` the HTTPS port
    plain requests are sent to (``None``: no redirect). A plain request a trusted proxy in front says
    came over HTTPS (``X-Forwarded-Proto: https``: TLS terminated before us) is served, not redirected.
    """
    if challenges and target.startswith(CHALLENGE_PREFIX):
        return challenge_response(challenges, target) or b""
    if scheme == b"http" and redirect_to is not None:
        host = None
        proto = None
        for n, v in headers:
            ln = n.lower()
            if ln == b"host" and host is None:
                host = v
            elif ln == b"x-forwarded-proto":
                proto = v
        if from_trusted_proxy and proto is not None and proto.strip().lower() == b"https":
            return None
        return redirect_response(host, target, redirect_to)
    return None


def hsts_line(max_age: float | None) -> bytes:
    """The ``Strict-Transport-Security`` header line for HTTPS responses (empty when HSTS is off)."""
    if max_age is None:
        return b""
    return b"Strict-Transport-Security: max-age=%d\r\n" % int(max_age)


def forwarded_proto(tls: bool) -> bytes:
    """The ``X-Forwarded-Proto`` value the app sees for a request that came in on this listener."""
    return b"https" if tls else b"http"


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}


def _plain(status: int, body: bytes, ctype: bytes = b"text/plain") -> bytes:
    return (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nCache-Control: no-store\r\n\r\n"
            % (status, _REASONS[status], ctype, len(body)) + body)
