"""HTTP/1.1 message heads, as the proxy reads and rewrites them. Bytes in, decisions out; no sockets.

httptools (llhttp) already refuses most framing tricks (Content-Length with
Transfer-Encoding, duplicate or malformed Content-Length, bad chunk sizes,
obs-fold, space before colon, bare LF, NUL and other control characters).
What it lets through and a proxy must not, is refused here: transfer codings
other than a lone ``chunked``, ``Transfer-Encoding`` on HTTP/1.0, HTTP/0.9 and
2.x request lines, a missing or repeated ``Host`` on HTTP/1.1, ``CONNECT``,
an upgrade request with a body.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Sequence

# Headers that describe one connection, never forwarded as they came
# (RFC 9110 §7.6.1); the proxy writes its own framing and connection headers.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# X-Forwarded-*, X-Real-IP and Forwarded say who the client is: believed only from a trusted proxy
# (forwarded.py), otherwise replaced by what the proxy itself saw.
_FORWARDING = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip", b"forwarded"})
_REQ_SPECIAL = HOP_BY_HOP | _FORWARDING | {b"host", b"content-length", b"cookie"}
_RESP_SPECIAL = HOP_BY_HOP | {b"content-length"}

REASONS = {
    100: "Continue", 101: "Switching Protocols", 103: "Early Hints",
    200: "OK", 201: "Created", 202: "Accepted", 204: "No Content", 206: "Partial Content",
    301: "Moved Permanently", 302: "Found", 303: "See Other", 304: "Not Modified",
    307: "Temporary Redirect", 308: "Permanent Redirect",
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict", 411: "Length Required",
    413: "Content Too Large", 414: "URI Too Long", 417: "Expectation Failed", 426: "Upgrade Required",
    429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 502: "Bad Gateway",
    503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
}


class Reject(NamedTuple):
    """The proxy answers the client itself: ``status`` and a short ``reason`` for X-Nonstop-Error."""

    status: int
    reason: str


class RequestHead:
    """What the proxy needs to know about one client request, and its head as sent upstream.

    Compiled, a C struct (http.pxd); its fields are set once, by the parser path or the fast path.
    """

    __slots__ = ("method", "keep_alive", "chunked", "content_length", "upgrade", "cookie", "upstream_head",
                 "no_body", "http10", "client")

    def __init__(self) -> None:
        self.client = ""  # the client's address when a trusted proxy named it; "" means the peer
        self.method = b""
        self.keep_alive = True
        self.chunked = False
        self.content_length: int | None = None
        self.upgrade = False
        self.cookie: bytes | None = None
        self.upstream_head = b""
        self.no_body = True
        self.http10 = False


def _tokens(value: bytes) -> list[bytes]:
    return [t.strip().lower() for t in value.split(b",") if t.strip()]


def inspect_request(
    method: bytes,
    url: bytes,
    version: str,
    headers: Sequence[tuple[bytes, bytes]],
    client_ip: bytes,
    upgrade: bool,
    max_body: int | None,
    scheme: bytes = b"http",
    trust=None,
) -> RequestHead | Reject:
    """Check a parsed request head and build the head to send upstream.

    ``version`` is ``parser.get_http_version()``; ``upgrade`` is llhttp's
    upgrade flag (Connection: upgrade plus Upgrade, or CONNECT). ``client_ip``
    is the peer's address; ``trust`` (a ``forwarded.TrustedProxies``) is given
    only when that peer is a trusted proxy, whose forwarded headers are then
    believed; otherwise they are replaced.
    """
    if version == "1.1":
        http10 = False
    elif version == "1.0":
        http10 = True
    elif version.startswith("0."):
        return Reject(400, "bad-version")
    else:
        return Reject(505, "bad-version")
    if method == b"CONNECT":
        return Reject(405, "connect-not-allowed")
    if not (url[:1] == b"/" or (url == b"*" and method == b"OPTIONS") or url[:7].lower() == b"http://"
            or url[:8].lower() == b"https://"):
        return Reject(400, "bad-target")

    h = RequestHead()
    h.method = method
    if http10:
        h.http10 = True
    out = [method, b" ", url, b" HTTP/1.1\r\n"]
    host: bytes | None = None
    hosts = 0
    te: bytes | None = None
    xff: bytes | None = None
    xfp: bytes | None = None
    xfh: bytes | None = None
    conn_tokens: list[bytes] | None = None
    upgrade_value: bytes | None = None
    for name, value in headers:
        lname = name.lower()
        if lname not in _REQ_SPECIAL:
            out += (name, b": ", value, b"\r\n")
            continue
        if lname == b"host":
            hosts += 1
            host = value
            out += (name, b": ", value, b"\r\n")
        elif lname == b"content-length":
            # llhttp has already refused duplicates, lists, signs and overflow
            h.content_length = int(value)
            out += (name, b": ", value, b"\r\n")
        elif lname == b"transfer-encoding":
            if te is not None:
                return Reject(400, "bad-transfer-encoding")
            te = value
        elif lname == b"cookie":
            h.cookie = value if h.cookie is None else h.cookie + b"; " + value
            out += (name, b": ", value, b"\r\n")
        elif lname == b"x-forwarded-for":
            xff = value if xff is None else xff + b", " + value
        elif lname == b"connection":
            conn_tokens = _tokens(value) if conn_tokens is None else conn_tokens + _tokens(value)
        elif lname == b"upgrade":
            upgrade_value = value
        elif trust is not None:
            if lname == b"x-forwarded-proto":
                xfp = value
            elif lname == b"x-forwarded-host":
                xfh = value
            elif lname == b"forwarded":
                out += (name, b": ", value, b"\r\n")
            # x-real-ip: written by us from the resolved client
        # from an untrusted peer: forwarding headers dropped (ours replace them); other hop-by-hop: dropped

    if not http10 and hosts != 1:
        return Reject(400, "missing-host" if hosts == 0 else "duplicate-host")
    if hosts > 1:
        return Reject(400, "duplicate-host")
    if te is not None:
        if http10 or te.strip().lower() != b"chunked":
            return Reject(400, "bad-transfer-encoding")
        h.chunked = True
    if h.chunked or h.content_length:
        h.no_body = False
    if max_body is not None and h.content_length is not None and h.content_length > max_body:
        return Reject(413, "body-too-large")

    if conn_tokens is None:
        if http10:
            h.keep_alive = False
    elif b"close" in conn_tokens:
        h.keep_alive = False
    else:
        h.keep_alive = (not http10) or b"keep-alive" in conn_tokens
    if conn_tokens:
        extra = set(conn_tokens) - {b"close", b"keep-alive", b"upgrade"}
        if extra:
            out = _drop_named(out, extra)

    if upgrade and upgrade_value is not None:
        if not h.no_body:
            return Reject(400, "upgrade-with-body")
        h.upgrade = True
        out += (b"Connection: upgrade\r\nUpgrade: ", upgrade_value, b"\r\n")
    elif h.chunked:
        out.append(b"Transfer-Encoding: chunked\r\n")
    if trust is not None and xff is not None:
        client, chain = trust.resolve(xff, client_ip.decode("latin-1"))
        h.client = client
        out += (b"X-Forwarded-For: ", chain, b"\r\nX-Real-IP: ", client.encode("latin-1"), b"\r\n")
    else:
        out += (b"X-Forwarded-For: ", client_ip, b"\r\nX-Real-IP: ", client_ip, b"\r\n")
    out += (b"X-Forwarded-Proto: ", xfp if xfp is not None else scheme, b"\r\n")
    if xfh is not None:
        out += (b"X-Forwarded-Host: ", xfh, b"\r\n")
    elif host is not None:
        out += (b"X-Forwarded-Host: ", host, b"\r\n")
    out.append(b"\r\n")
    h.upstream_head = b"".join(out)
    return h


def _drop_named(out: list[bytes], names: set[bytes]) -> list[bytes]:
    """Remove headers named in Connection from a flat [start-line parts..., name, ': ', value, CRLF, ...] list."""
    head, rest = out[:4], out[4:]
    kept = list(head)
    for i in range(0, len(rest), 4):
        if rest[i].lower() not in names:
            kept += rest[i : i + 4]
    return kept


class ResponseHead:
    """The client-bound head of one upstream response and how to frame its body.

    ``body``: "none", "length", "chunked" (decoded by llhttp) or "eof" (until
    the upstream closes).
    """

    __slots__ = ("head", "body", "chunked_out", "close", "upstream_reusable", "tunnel", "interim", "splice",
                 "length")

    def __init__(self) -> None:
        self.head = b""
        self.body = "none"
        self.chunked_out = False
        self.close = False
        self.upstream_reusable = True
        self.tunnel = False
        self.interim = False
        self.splice = False  # forward the body's raw bytes (``length`` of them) instead of decoding it
        self.length = 0


_status_lines: dict[tuple[int, bytes], bytes] = {}


def status_line(status: int, reason: bytes) -> bytes:
    key = (status, reason)
    line = _status_lines.get(key)
    if line is None:
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        if len(_status_lines) < 512:
            _status_lines[key] = line
    return line


def inspect_response(
    status: int,
    reason: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    upstream_keep_alive: bool,
    request: RequestHead,
    client_http10: bool,
    close: bool,
    extra: bytes,
) -> ResponseHead | Reject:
    """Build the head the client gets for an upstream response.

    ``close`` says the proxy will close the client connection after this
    response anyway; ``extra`` is precomputed header lines (X-Nonstop-Release,
    Set-Cookie). A response the proxy cannot frame safely is a Reject (502).
    """
    r = ResponseHead()
    out = [status_line(status, reason)]
    te: bytes | None = None
    length: bytes | None = None
    conn_tokens: list[bytes] | None = None
    upgrade_value: bytes | None = None
    for name, value in headers:
        lname = name.lower()
        if lname not in _RESP_SPECIAL:
            out += (name, b": ", value, b"\r\n")
        elif lname == b"content-length":
            length = value
        elif lname == b"transfer-encoding":
            te = value if te is None else te + b", " + value
        elif lname == b"connection":
            conn_tokens = _tokens(value) if conn_tokens is None else conn_tokens + _tokens(value)
        elif lname == b"upgrade":
            upgrade_value = value
    if conn_tokens:
        extra_names = set(conn_tokens) - {b"close", b"keep-alive", b"upgrade"}
        if extra_names:
            out = [out[0]] + _drop_named([b"", b"", b"", b""] + out[1:], extra_names)[4:]
    r.upstream_reusable = upstream_keep_alive

    if status < 200:
        if status == 101:
            if not request.upgrade or upgrade_value is None:
                return Reject(502, "unexpected-101")
            r.tunnel = True
            out += (b"Connection: upgrade\r\nUpgrade: ", upgrade_value, b"\r\n", extra, b"\r\n")
            r.head = b"".join(out)
            return r
        r.interim = True
        out.append(b"\r\n")
        r.head = b"".join(out)
        return r

    if te is not None:
        if te.strip().lower() != b"chunked":
            return Reject(502, "upstream-transfer-encoding")
    if request.method == b"HEAD" or status == 204 or status == 304:
        r.body = "none"
        if length is not None and status != 204:
            out += (b"Content-Length: ", length, b"\r\n")
        # llhttp would wait for a body after a HEAD response: never reuse
        if request.method == b"HEAD":
            r.upstream_reusable = False
    elif te is not None:
        r.body = "chunked"
        if client_http10:
            close = True
        else:
            r.chunked_out = True
            out.append(b"Transfer-Encoding: chunked\r\n")
    elif length is not None:
        r.body = "length"
        out += (b"Content-Length: ", length, b"\r\n")
    else:
        r.body = "eof"
        r.upstream_reusable = False
        close = True
    if request.upgrade:
        # the upstream refused the upgrade; llhttp skipped the request body
        # logic for this connection, so it cannot carry another request
        close = True
    r.close = close
    if close:
        out.append(b"Connection: close\r\n")
    elif client_http10:
        out.append(b"Connection: keep-alive\r\n")
    out += (extra, b"\r\n")
    r.head = b"".join(out)
    return r


def error_response(status: int, reason: str, *, close: bool, extra: bytes = b"") -> bytes:
    """A response the proxy writes itself, marked with X-Nonstop-Error."""
    body = b"%d %s\n" % (status, REASONS.get(status, "Error").encode())
    return b"".join(
        (
            status_line(status, REASONS.get(status, "Error").encode()),
            b"Content-Type: text/plain\r\nContent-Length: %d\r\nX-Nonstop-Error: %s\r\n" % (len(body), reason.encode()),
            b"Connection: close\r\n" if close else b"",
            extra,
            b"\r\n",
            body,
        )
    )


# hop-by-hop (or framing) header names at the start of a line of a lower-cased head
_SLOW_RESPONSE = re.compile(
    rb"\n(?:connection|keep-alive|proxy-connection|proxy-authenticate|proxy-authorization|te|trailer"
    rb"|transfer-encoding|upgrade):"
)
_EOF_LENGTH = 1 << 62


def parse_head_lines(raw: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """(reason, [(name, value)]) of a raw response head that llhttp has already validated."""
    lines = raw.split(b"\r\n")
    reason = lines[0].split(b" ", 2)[2] if lines[0].count(b" ") >= 2 else b""
    headers = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            headers.append((name, value.strip(b" \t")))
    return reason, headers


def inspect_raw_response(
    status: int,
    raw: bytes,
    upstream_keep_alive: bool,
    request: RequestHead,
    client_http10: bool,
    close: bool,
    extra: bytes,
) -> ResponseHead | Reject:
    """The client-bound head for a raw upstream head (status line to the blank line).

    Fast path: a final response without hop-by-hop headers (the common
    Content-Length case) keeps its head bytes as they came, plus ``extra``
    and our connection header, and its body is spliced. Anything else goes
    through :func:`inspect_response`.
    """
    low = raw.lower()
    if status >= 200 and _SLOW_RESPONSE.search(low) is None:
        r = ResponseHead()
        if not upstream_keep_alive:
            r.upstream_reusable = False
        if request.method == b"HEAD" or status == 204 or status == 304:
            r.body = "none"
            if request.method == b"HEAD":
                r.upstream_reusable = False  # llhttp would wait for a body after a HEAD response
        else:
            i = low.find(b"\ncontent-length:")
            if i >= 0:
                r.body = "length"
                r.length = int(raw[i + 16 : raw.index(b"\r", i)])
            else:
                r.body = "eof"
                r.length = _EOF_LENGTH
                r.upstream_reusable = False
                close = True
        r.splice = True
        if close:
            r.close = True
        head = raw[:-2] if raw[:9] == b"HTTP/1.1 " else b"HTTP/1.1" + raw[8:-2]
        if close:
            r.head = head + extra + b"Connection: close\r\n\r\n"
        elif client_http10:
            r.head = head + extra + b"Connection: keep-alive\r\n\r\n"
        else:
            r.head = head + extra + b"\r\n"
        return r
    reason, headers = parse_head_lines(raw)
    return inspect_response(status, reason, headers, upstream_keep_alive, request, client_http10, close, extra)


def forwarded_lines(client_ip: bytes, scheme: bytes = b"http") -> bytes:
    """The forwarding lines of a request whose client is the peer itself (the fast path's, per connection)."""
    return b"X-Forwarded-For: " + client_ip + b"\r\nX-Real-IP: " + client_ip + b"\r\nX-Forwarded-Proto: " + scheme + b"\r\n"
