"""The proxy's two fast paths: requests and responses whose heads need no parser.

Most traffic through a proxy is the same few heads again and again: a load
balancer's health checks, keep-alive clients polling, an upstream answering
with one Content-Length head whose only change is the Date. These shortcuts
take such heads without llhttp:

- ``fast_request``: a chunk that is exactly one plain bodyless request
  becomes a ``RequestHead`` (``_scan_request`` compiled, ``_regex_request``
  as Python: the same grammar, tested against each other);
- ``fast_response``: an upstream head framed by one Content-Length, checked
  once per distinct head bytes, and ``fast_client_head`` to write it out.

Each accepts a strict subset of what the parser path (``http.inspect_request``,
``http.inspect_raw_response``) accepts and reads it the same way;
tests/proxy/test_pure.py and test_fuzz.py compare them. Anything else takes
the general path.
"""

from __future__ import annotations

import re

import cython

from nonstop.proxy.http import RequestHead

__all__ = ["fast_request", "fast_response", "fast_client_head"]


# A final response head that llhttp would read the same way, framed by
# exactly one Content-Length, with no hop-by-hop header other than
# "Connection: keep-alive" and "Keep-Alive: ..." (what most servers send on a
# persistent connection; dropped on the way, as the parser path does): the
# upstream fast path takes it without running the parser (anything else goes
# through llhttp). One match validates the head, captures the length and
# says whether a line must be dropped.
_RESP_PLAIN = (
    rb"(?!(?i:connection|keep-alive|proxy-connection|proxy-authenticate|proxy-authorization|te|trailer"
    rb"|transfer-encoding|upgrade|content-length):)[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t !-~\x80-\xff]*\r\n"
)
_RESP_KEEP_ALIVE = (
    rb"(?i:connection):[ \t]*(?i:keep-alive)[ \t]*\r\n|(?i:keep-alive):[\t !-~\x80-\xff]*\r\n"
)
# a repeated group keeps its last capture: group 1 / 3 is set when any such line came before / after the length
_RESP_LINES = rb"(?:" + _RESP_PLAIN + rb"|(" + _RESP_KEEP_ALIVE + rb"))*"
_FAST_RESPONSE = re.compile(
    rb"HTTP/1\.1 [2-5][0-9][0-9] [\t !-~\x80-\xff]*\r\n"
    + _RESP_LINES
    + rb"(?i:content-length):[ \t]*([0-9]{1,15})[ \t]*\r\n"
    + _RESP_LINES
    + rb"\r\n"
)
# the lines _RESP_KEEP_ALIVE lets through, each with the CRLF before it
_KEEP_ALIVE_LINES = re.compile(rb"\r\n(?i:connection|keep-alive):[^\r]*(?=\r\n)")


# Verdicts of fast_response by exact head bytes. An upstream answers most
# requests with the same head bytes (only Date changes, once a second): a
# dict hit costs far less than the match. Bounded; emptied when full.
_fast_heads: dict[bytes, tuple[int, int, int, bytes] | None] = {}
_FAST_HEADS_MAX = 256
_MISSING = object()
_last_head = b"\r\n\r\n\r\n"  # matches no head (a blank line first); its verdict, None, would be right anyway
_last_verdict: tuple[int, int, int, bytes] | None = None


def fast_response(data: bytes) -> tuple[int, int, int, bytes] | None:
    """``(status, head_end, content_length, head)`` when ``data`` starts with a head the fast path may take.

    ``head`` is the head as the client gets it, before ``extra`` and the
    blank line: keep-alive lines dropped. None means: use llhttp (chunked, no
    length, 1xx/101/204/304, anything unusual or malformed, or a head not
    complete in ``data``).
    """
    global _last_head, _last_verdict
    # commonest of all: the same head as the last response (a head has no blank line before its end, so
    # sharing a prefix with it means having it as head); no slice, no hash
    if data.startswith(_last_head):
        return _last_verdict
    end = data.find(b"\r\n\r\n") + 4
    if end < 4:
        return None
    raw = data if end == len(data) else data[:end]
    verdict = _fast_heads.get(raw, _MISSING)
    if verdict is _MISSING:
        verdict = _fast_response(raw)
        if len(_fast_heads) >= _FAST_HEADS_MAX:
            _fast_heads.clear()
        _fast_heads[raw] = verdict
    _last_head, _last_verdict = raw, verdict
    return verdict


def _fast_response(raw: bytes) -> tuple[int, int, int, bytes] | None:
    m = _FAST_RESPONSE.fullmatch(raw)
    if m is None:
        return None
    status = int(raw[9:12])
    if status == 204 or status == 304:
        return None
    head = raw[:-2]
    if m.group(1) is not None or m.group(3) is not None:
        head = _KEEP_ALIVE_LINES.sub(b"", head)
    return status, len(raw), int(m.group(2)), head


def fast_client_head(head: bytes, extra: bytes, close: bool, client_http10: bool) -> bytes:
    """The client-bound head for a fast-path response (``head`` from :func:`fast_response`)."""
    if close:
        return head + extra + b"Connection: close\r\n\r\n"
    if client_http10:
        return head + extra + b"Connection: keep-alive\r\n\r\n"
    return head + extra + b"\r\n"


_TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_VALUE = rb"[\t !-~\x80-\xff]*"
_PLAIN_HEADER = (
    rb"(?!(?i:connection|keep-alive|proxy-connection|proxy-authenticate|proxy-authorization|te|trailer"
    rb"|transfer-encoding|upgrade|content-length|x-forwarded-for|x-forwarded-proto|x-forwarded-host|x-real-ip"
    rb"|forwarded|host):)"
    + _TOKEN + rb":" + _VALUE + rb"\r\n"
)
# One whole bodyless HTTP/1.1 request in origin form, exactly one Host, no
# framing, hop-by-hop or X-Forwarded-* headers: a strict subset of what llhttp
# plus inspect_request accept, and read the same way. The client fast path
# takes it without running the parser.
# ... or with one "Connection: keep-alive" (what most HTTP/1.1 clients send), dropped on the way
_KEEP_ALIVE_LINE = rb"(?i:connection):[ \t]*(?i:keep-alive)[ \t]*\r\n"
_FAST_REQUEST = re.compile(
    rb"(GET|HEAD|DELETE|OPTIONS) (/[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*) HTTP/1\.1\r\n"
    rb"(?:" + _PLAIN_HEADER + rb")*"
    rb"(?:(" + _KEEP_ALIVE_LINE + rb")(?:" + _PLAIN_HEADER + rb")*)?"
    rb"(?i:host):[ \t]*([A-Za-z0-9\-._~!$&'()*+,;=:\[\]%]+)[ \t]*\r\n"
    rb"(?:" + _PLAIN_HEADER + rb")*"
    rb"(?:(" + _KEEP_ALIVE_LINE + rb")(?:" + _PLAIN_HEADER + rb")*)?"
    rb"\r\n"
)


def _regex_request(data: bytes, fwd: bytes) -> RequestHead | None:
    """A RequestHead when ``data`` is exactly one plain bodyless request (see ``_FAST_REQUEST``), else None.

    ``fwd`` is the connection's precomputed X-Forwarded-For / -Proto lines.
    """
    m = _FAST_REQUEST.fullmatch(data)
    if m is None:
        return None
    h = RequestHead()
    h.method = m.group(1)
    host = m.group(4)
    if m.group(3) is not None:
        if m.group(5) is not None:
            return None  # two Connection headers: the parser path decides
        a, b = m.span(3)
    elif m.group(5) is not None:
        a, b = m.span(5)
    else:
        h.upstream_head = data[:-2] + fwd + b"X-Forwarded-Host: " + host + b"\r\n\r\n"
        return h
    h.upstream_head = data[:a] + data[b:-2] + fwd + b"X-Forwarded-Host: " + host + b"\r\n\r\n"
    return h


def _table(chars: bytes) -> bytes:
    """A 256-byte lookup table: 1 at each byte of ``chars``."""
    t = bytearray(256)
    for c in chars:
        t[c] = 1
    return bytes(t)


_ALNUM = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_TOKEN_T = _table(_ALNUM + b"!#$%&'*+.^_`|~-")
_PATH_T = _table(_ALNUM + b"-._~!$&'()*+,;=:@/?%")
_HOST_T = _table(_ALNUM + b"-._~!$&'()*+,;=:[]%")
_VALUE_T = _table(b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100)))
# header names the request fast path does not pass through as they are (see _PLAIN_HEADER), by length
_FAST_METHODS = (b"GET", b"HEAD", b"DELETE", b"OPTIONS")  # as _FAST_REQUEST: bodyless methods
_SPECIAL_NAMES = frozenset((
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"proxy-authorization", b"te",
    b"trailer", b"transfer-encoding", b"upgrade", b"content-length", b"x-forwarded-for", b"x-forwarded-proto",
    b"x-forwarded-host", b"x-real-ip", b"forwarded", b"host",
))
# cheap pre-checks before a name is lowered and looked up: its first letter (lower-cased) and its length
_SPECIAL_FIRST = _table(bytes({n[0] for n in _SPECIAL_NAMES}) + bytes({n[0] for n in _SPECIAL_NAMES}).upper())
_SPECIAL_LENGTHS = sum(1 << k for k in {len(n) for n in _SPECIAL_NAMES})  # a bit mask (each length < 32)


def _scan_request(data: bytes, fwd: bytes) -> RequestHead | None:
    """:func:`_regex_request` as one pass over the bytes: the same grammar (``_FAST_REQUEST``), the same result.

    Compiled (fastpath.pxd types its locals), this is a C loop costing a fraction
    of the regex; as Python it would cost more, so the Python build keeps the
    regex (``fast_request`` below). tests/proxy checks both against each other
    and against the parser path.
    """
    n = len(data)
    if n < 20:
        return None
    for method in _FAST_METHODS:
        i = len(method)
        if data.startswith(method) and data[i] == 32:  # the method, then one space
            i += 1
            break
    else:
        return None
    if data[i] != 47:  # "/": origin form only
        return None
    i += 1
    while i < n and _PATH_T[data[i]]:
        i += 1
    if not data.startswith(b" HTTP/1.1\r\n", i):
        return None
    i += 11
    host_a = host_b = ka_a = ka_b = -1
    while True:
        if i + 2 > n:
            return None
        if data[i] == 13:  # CR: the blank line, which must end the data
            if i + 2 == n and data[i + 1] == 10:
                break
            return None
        start = i
        while i < n and _TOKEN_T[data[i]]:
            i += 1
        if i == start or i >= n or data[i] != 58:  # ":" right after a non-empty name
            return None
        name_end = i
        i += 1
        v = i
        while i < n and _VALUE_T[data[i]]:
            i += 1
        if i + 1 >= n or data[i] != 13 or data[i + 1] != 10:
            return None
        v_end = i
        i += 2
        if _SPECIAL_FIRST[data[start]] and name_end - start < 32 and (_SPECIAL_LENGTHS >> (name_end - start)) & 1:
            name = data[start:name_end].lower()
            if name in _SPECIAL_NAMES:
                while v < v_end and (data[v] == 32 or data[v] == 9):
                    v += 1
                while v_end > v and (data[v_end - 1] == 32 or data[v_end - 1] == 9):
                    v_end -= 1
                if name == b"host" and host_a < 0 and v < v_end:
                    host_a, host_b = v, v_end
                    while v < v_end:
                        if not _HOST_T[data[v]]:
                            return None
                        v += 1
                elif name == b"connection" and ka_a < 0 and data[v:v_end].lower() == b"keep-alive":
                    ka_a, ka_b = start, i
                else:
                    return None
    if host_a < 0:
        return None
    h = RequestHead()
    h.method = method
    tail = fwd + b"X-Forwarded-Host: " + data[host_a:host_b] + b"\r\n\r\n"
    if ka_a < 0:
        h.upstream_head = data[: n - 2] + tail
    else:
        h.upstream_head = data[:ka_a] + data[ka_b : n - 2] + tail
    return h


# The compiled module scans; the Python one matches the regex (each is the faster there).
fast_request = _scan_request if cython.compiled else _regex_request
