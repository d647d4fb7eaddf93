"""Pure HAProxy rendering for managed mode: the static config, and the runtime maps of a routing. No I/O.

The config is written once, at start, and never reloaded. Everything a
routing changes lives in runtime state that the runtime API swaps atomically:

- ``bucket.map``  user bucket (0..99) → release name (canary first, see internals.md)
- ``match.map``   a regex over the request's match key → release name (first wins)
- ``release.map`` release name → slot backend (``nonstop_<app>_r0`` … ``_r3``)
- ``settings.map`` ``sticky`` → ``1`` / ``0``
- the servers of each slot backend (``add server`` / ``set server`` / ``del server``)

The match key is built from the header and cookie *names* known when the
config is written (``strategy.match`` of a canary): ``h0=<hex value>&c0=<hex value>&``.
Values are hex-encoded so no request can forge a separator.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

from dataclasses import dataclass

from nonstop.agent.routers.base import Release, RouteTable
from nonstop.agent.routers.common import BUCKETS, COOKIE_ATTRS, COOKIE_NAME, Plan, ident
from nonstop.errors import RouterError
from nonstop.proxy.split import normalise

__all__ = [
    "SLOTS", "HaproxyPaths", "MatchKey", "render_config", "bucket_entries", "match_entries", "server_name",
    "assign_slots", "server_weights",
]

HAPROXY_MAX_SOCKET_PATH = 97  # what HAProxy 2.6 accepts for `stats socket` (it says so when refusing)
SLOTS = 4  # releases with live targets at once (canary, stable, and room for a rollback)


@dataclass(frozen=True)
class HaproxyPaths:
    """Where a managed HAProxy keeps its files (all under ``<state_dir>/haproxy/``)."""

    root: str

    @property
    def conf(self) -> str:
        return f"{self.root}/haproxy.cfg"

    @property
    def pid(self) -> str:
        return f"{self.root}/haproxy.pid"

    @property
    def socket(self) -> str:
        """The runtime API socket. HAProxy binds it itself, so it must fit ``sun_path``: a state dir
        too deep for that gets its socket in a private folder under /tmp named after the state dir."""
        path = f"{self.root}/admin.sock"
        if len(path.encode()) <= HAPROXY_MAX_SOCKET_PATH:
            return path
        digest = hashlib.sha256(self.root.encode()).hexdigest()[:16]
        return f"{tempfile.gettempdir()}/nonstop-{os.getuid()}/haproxy-{digest}.sock"

    @property
    def access_log(self) -> str:
        return f"{self.root}/access.json.log"

    @property
    def error_log(self) -> str:
        return f"{self.root}/haproxy.log"

    @property
    def sidecar(self) -> str:
        return f"{self.root}/routing.json"

    def map(self, name: str) -> str:
        return f"{self.root}/{name}.map"


@dataclass(frozen=True)
class MatchKey:
    """The header and cookie names the managed config folds into the match key, in key order."""

    headers: tuple[str, ...] = ()
    cookies: tuple[str, ...] = ()

    @classmethod
    def of(cls, headers, cookies) -> "MatchKey":
        return cls(tuple(sorted({h.lower() for h in headers})), tuple(sorted(set(cookies))))

    @property
    def empty(self) -> bool:
        return not (self.headers or self.cookies)

    def fmt(self) -> str:
        """The ``set-var-fmt`` string building the key from a request."""
        parts = [f"h{i}=%[req.hdr({h}),hex]&" for i, h in enumerate(self.headers)]
        parts += [f"c{i}=%[req.cook({c}),hex]&" for i, c in enumerate(self.cookies)]
        return "".join(parts)

    def pattern(self, r: Release) -> str:
        """The ``map_reg`` pattern matching the requests ``r``'s match rules select."""
        want_h = {n.lower(): v for n, v in r.match_headers}
        want_c = dict(r.match_cookies)
        unknown = sorted(set(want_h) - set(self.headers)) + sorted(set(want_c) - set(self.cookies))
        if unknown:
            raise RouterError(
                f"release {r.name!r}: match on {', '.join(unknown)} is not in the HAProxy config nonstop wrote "
                f"(it knows headers {list(self.headers)} and cookies {list(self.cookies)} from strategy.match); "
                "restart the router after changing strategy.match"
            )
        parts = []
        for i, h in enumerate(self.headers):
            parts.append(f"h{i}=" + (want_h[h].encode().hex().upper() if h in want_h else "[0-9A-F]*") + "&")
        for i, c in enumerate(self.cookies):
            parts.append(f"c{i}=" + (want_c[c].encode().hex().upper() if c in want_c else "[0-9A-F]*") + "&")
        return "^" + "".join(parts) + "$"


def backend_name(app: str, slot: int) -> str:
    return f"nonstop_{ident(app)}_r{slot}"


def none_backend(app: str) -> str:
    return f"nonstop_{ident(app)}_none"


def server_name(addr: str) -> str:
    return "t_" + ident(addr)


def assign_slots(old: dict[str, int], usable: list[str], leftovers: dict[int, int]) -> dict[str, int]:
    """Release name -> slot backend for the releases ``usable`` now (managed mode). Pure.

    A release keeps the slot it has; a new one takes a free slot, preferring one with the fewest
    leftover servers (``leftovers``: slot -> servers still in it; cleaner stats, nothing to drain).
    More than ``SLOTS`` live releases at once is a ``RouterError`` naming them.
    """
    keep = set(usable)
    slots = {n: s for n, s in old.items() if n in keep}
    taken = set(old.values())
    for name in usable:
        if name in slots:
            continue
        free = sorted((s for s in range(SLOTS) if s not in taken), key=lambda s: (leftovers.get(s, 0), s))
        if not free:
            raise RouterError(
                f"haproxy: more than {SLOTS} releases with live targets at once "
                f"({', '.join(sorted(set(old) | keep))}); retire one first"
            )
        slots[name] = free[0]
        taken.add(free[0])
    return slots


def server_weights(p: Plan) -> dict[str, tuple[int, str]]:
    """Server name -> (HAProxy weight, release) for external mode, where weights are the split. Pure.

    HAProxy weights are 0..256 per server: a release's share is spread over its targets, and a
    release with a share keeps at least 1 per server (0 would take it out of the balance).
    """
    shares = dict(zip([r.name for r in p.usable], normalise([r.weight for r in p.usable])))
    out: dict[str, tuple[int, str]] = {}
    for r in p.usable:
        n = len(r.live_targets)
        for t in r.live_targets:
            w = 0 if shares[r.name] == 0 else max(1, round(shares[r.name] * 256 / 100 / n))
            out[server_name(t.addr)] = (w, r.name)
    return out


def bucket_entries(p: Plan) -> list[tuple[str, str]]:
    return [(str(b), name) for b, name in enumerate(p.by_bucket)]


def match_entries(p: Plan, key: MatchKey) -> list[tuple[str, str]]:
    return [(key.pattern(r), r.name) for r in p.matchers]


LOG_FORMAT = (
    '{"ts":%Ts,"app":"APP","release":"%[var(txn.nonstop_rel)]","client":"%ci","method":"%HM",'
    '"uri":"%{+E}HU","status":%ST,"ta_ms":%Ta,"tr_ms":%Tr,"backend":"%b","server":"%s",'
    '"target":"%si:%sp","termination":"%ts","bytes":%B}'
)


def render_config(
    app: str,
    listen: str,
    paths: HaproxyPaths,
    key: MatchKey,
    *,
    user: str | None,
    hold_timeout: float,
    drain_timeout: float,
    connect_timeout: float = 2.0,
    read_timeout: float = 60.0,
    keepalive_timeout: float = 75.0,
    trusted_proxies: tuple[str, ...] | list[str] = (),
    split_key: tuple[str, str] | None = None,
) -> str:
    """The whole managed ``haproxy.cfg``; slot backends start empty, servers come through the runtime API.

    ``split_key`` (cookie or header name) is known when the config is written, like the match names;
    the sticky mode lives in ``settings.map`` and changes at run time.
    """
    v = "txn.nonstop"
    none = none_backend(app)
    user_lines = f"    user {user.split()[0]}\n    group {user.split()[1]}\n" if user else ""
    m = {n: paths.map(n) for n in ("bucket", "match", "release", "settings")}
    match_rules = ""
    if not key.empty:
        match_rules = (
            f'    http-request set-var-fmt({v}_mk) "{key.fmt()}"\n'
            f"    http-request set-var({v}_rel) var({v}_mk),map_reg({m['match']})\n"
        )
    backends = "".join(
        f"""
backend {backend_name(app, s)}
    balance leastconn
"""
        for s in range(SLOTS)
    )
    log_format = LOG_FORMAT.replace("APP", app)
    trusted_acl = f"src {' '.join(trusted_proxies)}" if trusted_proxies else "always_false"
    pt = f"{{ var({v}_peer_trusted) -m int 1 }}"
    key_rules = ""
    if split_key is not None:
        kind, name = split_key
        fetch = f"req.cook({name})" if kind == "cookie" else f"req.hdr({name})"
        key_rules = (
            f"    http-request set-var({v}_key) {fetch}\n"
            f"    http-request set-var({v}_bucket) var({v}_key),crc32,mod({BUCKETS}) if {{ var({v}_key) -m len gt 0 }}\n"
        )
    nb = f"!{{ var({v}_bucket) -m found }}"
    return f"""# Generated by nonstop for app {app} (router haproxy, mode managed). Do not edit.
# Never reloaded: servers, weights and the split change through the runtime API.
global
{user_lines}    pidfile {paths.pid}
    stats socket {paths.socket} mode 600 level admin
    stats timeout 30s
    log stdout format raw local0
    hard-stop-after {_ms(drain_timeout + 5)}

defaults
    mode http
    log global
    option http-keep-alive
    option redispatch
    retries 3
    # Only connection failures are retried: the request never reached the app, so any method is safe.
    retry-on conn-failure
    timeout connect {_ms(connect_timeout)}
    timeout client {_ms(read_timeout)}
    timeout server {_ms(read_timeout)}
    timeout http-request 30s
    timeout http-keep-alive {_ms(keepalive_timeout)}
    timeout queue {_ms(hold_timeout)}

frontend nonstop_{ident(app)}
    bind {listen}
    log-format '{log_format}'
    # Forwarded headers, believed only from trusted_proxies: the client is the rightmost untrusted hop of
    # X-Forwarded-For (up to three trusted hops deep); from anyone else they are replaced.
    acl nonstop_trusted {trusted_acl}
    http-request set-var({v}_peer) src
    http-request set-var({v}_peer_trusted) int(1) if nonstop_trusted
    http-request set-src req.hdr_ip(x-forwarded-for,-1) if nonstop_trusted {{ req.hdr_cnt(x-forwarded-for) ge 1 }}
    http-request set-src req.hdr_ip(x-forwarded-for,-2) if {pt} nonstop_trusted {{ req.hdr_cnt(x-forwarded-for) ge 2 }}
    http-request set-src req.hdr_ip(x-forwarded-for,-3) if {pt} nonstop_trusted {{ req.hdr_cnt(x-forwarded-for) ge 3 }}
    http-request set-header X-Forwarded-For "%[req.fhdr(x-forwarded-for)], %[var({v}_peer)]" if {pt} {{ req.hdr_cnt(x-forwarded-for) gt 0 }}
    http-request set-header X-Forwarded-For %[var({v}_peer)] unless {pt} {{ req.hdr_cnt(x-forwarded-for) gt 0 }}
    http-request set-header X-Forwarded-Proto http unless {pt} {{ req.hdr(x-forwarded-proto) -m found }}
    http-request set-header X-Forwarded-Host %[req.hdr(host)] unless {pt} {{ req.hdr(x-forwarded-host) -m found }}
    http-request del-header Forwarded unless {pt}
    http-request set-header X-Real-IP %[src]
    # User bucket (proxy/split.py's rule): the split_key's value hashed, else by the sticky mode of
    # settings.map: 1 — the {COOKIE_NAME} cookie when valid, else a random bucket pinned in a cookie;
    # client_ip — crc32(client address) % 100; 0 — a random bucket per request.
{key_rules}    http-request set-var({v}_sticky) str(sticky),map({m['settings']},1)
    http-request set-var({v}_split) str(split),map({m['settings']},1)
    http-request set-var({v}_bucket) req.cook({COOKIE_NAME}) if {nb} {{ var({v}_sticky) -m str 1 }} {{ req.cook({COOKIE_NAME}) -m reg ^([0-9]|[1-9][0-9])$ }}
    http-request set-var-fmt({v}_ip) "%[src]" if {nb} {{ var({v}_sticky) -m str client_ip }}
    http-request set-var({v}_bucket) var({v}_ip),crc32,mod({BUCKETS}) if {nb} {{ var({v}_sticky) -m str client_ip }}
    http-request set-var({v}_setck) str(1) if {nb} {{ var({v}_sticky) -m str 1 }} {{ var({v}_split) -m str 1 }}
    http-request set-var({v}_bucket) rand({BUCKETS}) if {nb}
    # Release: the first matching match rule, else the bucket's release.
{match_rules}    http-request set-var({v}_rel) var({v}_bucket),map({m['bucket']}) if !{{ var({v}_rel) -m found }}
    http-request set-var({v}_be) var({v}_rel),map({m['release']},{none})
    use_backend %[var({v}_be)]
    default_backend {none}
    http-response set-header X-Nonstop-Release %[var({v}_rel)] if {{ var({v}_rel) -m found }}
    http-response add-header Set-Cookie "{COOKIE_NAME}=%[var({v}_bucket)]; {COOKIE_ATTRS}" if {{ var({v}_setck) -m found }}

backend {none}
    http-request return status 503 content-type text/plain string "no release has a ready instance" hdr X-Nonstop-Error no-target
{backends}"""


def _ms(seconds: float) -> str:
    return f"{max(1, int(round(seconds * 1000)))}ms"


def sticky_setting(sticky: bool | str) -> str:
    """``settings.map``'s ``sticky`` value for a routing's mode."""
    return "client_ip" if sticky == "client_ip" else ("1" if sticky else "0")


def initial_maps(routing: RouteTable | None) -> dict[str, str]:
    """Map files as written before start: empty routing, sticky on."""
    sticky = sticky_setting(True if routing is None else routing.sticky)
    return {"bucket": "", "match": "", "release": "", "settings": f"sticky {sticky}\nsplit 0\n"}
