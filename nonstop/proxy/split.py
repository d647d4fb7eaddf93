"""The canary split: which release a request goes to. A pure function of the request and the table.

Users are hashed into 100 buckets. Releases take bucket ranges in list order
(first release ``[0, w0)``, next ``[w0, w0 + w1)``, ...), so raising the
first-listed canary's weight only adds buckets and never moves a user back.
Match rules (all listed headers/cookies equal) beat buckets; the first
matching release wins. Only releases with a non-draining target take part;
their weights are normalised to 100 when they do not already sum to 100.

A request's bucket (``bucket_of``), first found:

1. the table's ``split_key`` (the app's own user key, a cookie or a header), hashed;
2. by ``sticky``: ``True`` — the proxy's ``nonstop_bucket`` cookie, else a
   **random** bucket sent back in ``Set-Cookie`` (a browser keeps it; a client
   that never returns cookies is split per request by weight, so many users
   behind one address are never all on one side); ``"client_ip"`` — a hash
   of the client address (no cookie); ``False`` — a random bucket per request.
"""

from __future__ import annotations

import zlib
from typing import Callable, NamedTuple, Sequence

from nonstop.proxy.routes import RouteTable

BUCKETS = 100
COOKIE_NAME = "nonstop_bucket"
COOKIE_MAX_AGE = 86400
_COOKIE_NAME_B = COOKIE_NAME.encode()

class Decision(NamedTuple):
    """Release index into ``table.releases``; ``set_cookie`` is the bucket to send back, or None."""

    release: int
    set_cookie: int | None


def normalise(weights: Sequence[int]) -> list[int]:
    """Scale weights to sum to 100 (largest remainder, ties to list order); all zero → equal shares."""
    if not weights:
        return []
    total = sum(weights)
    if total == BUCKETS:
        return list(weights)
    if total == 0:
        weights = [1] * len(weights)
        total = len(weights)
    exact = [w * BUCKETS / total for w in weights]
    out = [int(x) for x in exact]
    short = BUCKETS - sum(out)
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - out[i]), i))
    for i in order[:short]:
        out[i] += 1
    return out


def bucket_from_cookie(cookie_header: bytes | None) -> int | None:
    """The ``nonstop_bucket`` value when present and a valid 0..99 integer, else None."""
    value = cookie_value(cookie_header, _COOKIE_NAME_B)
    if value is not None and value.isdigit() and len(value) <= 2:
        return int(value)
    return None


def bucket_from_client(client_ip: str) -> int:
    """A stable bucket for a client address (``sticky: client_ip``)."""
    return zlib.crc32(client_ip.encode()) % BUCKETS


def bucket_from_key(value: bytes) -> int:
    """A stable bucket for a user key (the ``split_key`` cookie's or header's value)."""
    return zlib.crc32(value) % BUCKETS


def cookie_value(cookie_header: bytes | None, name: bytes) -> bytes | None:
    """The value of cookie ``name`` in a Cookie header (the first one), or None. No dict is built."""
    if not cookie_header:
        return None
    idx = cookie_header.find(name)
    while idx != -1:
        if idx == 0 or cookie_header[idx - 1 : idx] in (b" ", b";"):
            rest = cookie_header[idx + len(name) :].lstrip(b" ")
            if rest[:1] == b"=":
                return rest[1:].split(b";", 1)[0].strip()
        idx = cookie_header.find(name, idx + 1)
    return None


def header_value(headers: Sequence[tuple[bytes, bytes]] | None, lname: bytes) -> bytes | None:
    """The first value of header ``lname`` (lower-case), or None."""
    if headers:
        for n, v in headers:
            if len(n) == len(lname) and n.lower() == lname:
                return v
    return None


def bucket_of(
    sticky: bool | str, key: bytes | None, cookie_header: bytes | None, client_ip: str, rand: Callable[[], int]
) -> tuple[int, bool]:
    """``(bucket, set_cookie)`` for one request: see the module docstring for the order.

    ``key`` is the split_key's value in this request (None: absent or empty); ``rand`` returns any
    non-negative int. ``set_cookie`` is true when the response should pin the bucket in a cookie.
    """
    if key:
        return bucket_from_key(key), False
    if sticky is True:
        bucket = bucket_from_cookie(cookie_header)
        if bucket is not None:
            return bucket, False
        return rand() % BUCKETS, True
    if sticky == "client_ip":
        return bucket_from_client(client_ip), False
    return rand() % BUCKETS, False


def parse_cookies(cookie_header: bytes | None) -> dict[str, str]:
    out: dict[str, str] = {}
    if not cookie_header:
        return out
    for part in cookie_header.decode("latin-1").split(";"):
        name, eq, value = part.strip().partition("=")
        if eq and name and name not in out:
            out[name] = value.strip()
    return out


def set_cookie_header(bucket: int) -> bytes:
    return (
        b"Set-Cookie: %s=%d; Path=/; Max-Age=%d; HttpOnly; SameSite=Lax\r\n"
        % (COOKIE_NAME.encode(), bucket, COOKIE_MAX_AGE)
    )


class Split:
    """A table compiled for choosing: bucket → release index, and the match rules.

    Built once per table swap; ``choose`` is O(1) for the common case of one
    usable release without match rules.
    """

    __slots__ = ("sticky", "by_bucket", "single", "matchers", "splits", "usable", "key_cookie", "key_header")

    def __init__(self, table: RouteTable) -> None:
        self.sticky = table.sticky
        key = table.split_key
        self.key_cookie = key.name.encode() if key is not None and key.kind == "cookie" else None
        self.key_header = key.name.encode() if key is not None and key.kind == "header" else None
        usable = [i for i, r in enumerate(table.releases) if r.usable]
        self.usable = tuple(usable)
        shares = normalise([table.releases[i].weight for i in usable])
        by_bucket: list[int] = []
        for i, share in zip(usable, shares):
            by_bucket.extend([i] * share)
        self.by_bucket: tuple[int, ...] = tuple(by_bucket)
        self.matchers = tuple(
            (i, table.releases[i].match_headers, table.releases[i].match_cookies)
            for i in usable
            if table.releases[i].has_match
        )
        self.splits = len(set(by_bucket)) > 1
        self.single: Decision | None = None
        if len(usable) == 1 and not self.matchers:
            self.single = Decision(usable[0], None)

    def choose(
        self,
        headers: Sequence[tuple[bytes, bytes]],
        cookie_header: bytes | None,
        client_ip: str,
        rand: Callable[[], int],
    ) -> Decision | None:
        """The release for one request, or None when no release has a usable target.

        ``headers`` are the request's raw (name, value) pairs; ``rand`` returns
        any non-negative int (a random bucket's source).
        """
        if self.single is not None:
            return self.single
        if not self.by_bucket:
            return None
        if self.matchers:
            hit = self._match(headers, cookie_header)
            if hit is not None:
                return Decision(hit, None)
        if not self.splits:
            return Decision(self.by_bucket[0], None)
        if self.key_cookie is not None:
            key = cookie_value(cookie_header, self.key_cookie)
        elif self.key_header is not None:
            key = header_value(headers, self.key_header)
        else:
            key = None
        bucket, pin = bucket_of(self.sticky, key, cookie_header, client_ip, rand)
        return Decision(self.by_bucket[bucket], bucket if pin else None)

    def _match(self, headers: Sequence[tuple[bytes, bytes]], cookie_header: bytes | None) -> int | None:
        lookup: dict[str, str] | None = None
        cookies: dict[str, str] | None = None
        for index, want_headers, want_cookies in self.matchers:
            if want_headers:
                if lookup is None:
                    lookup = {}
                    for n, v in headers:
                        lookup.setdefault(n.decode("latin-1").lower(), v.decode("latin-1"))
                if any(lookup.get(n) != v for n, v in want_headers):
                    continue
            if want_cookies:
                if cookies is None:
                    cookies = parse_cookies(cookie_header)
                if any(cookies.get(n) != v for n, v in want_cookies):
                    continue
            return index
        return None
