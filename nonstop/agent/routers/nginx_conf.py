"""Pure nginx config rendering: a ``RouteTable`` in, nginx config text out. No I/O.

Two pieces:

- ``render_upstreams`` — the http-level include nonstop owns (``upstream_file``
  in external mode, ``upstreams.conf`` in managed mode): one ``upstream`` per
  release, the ``map`` / ``split_clients`` chain that picks a release per
  request (match rules first, then the user's bucket), the JSON ``log_format``.
- ``render_managed`` — the whole ``nginx.conf`` of a nonstop-managed nginx,
  which includes the file above.

Variables the include defines, for app ``roomescape`` (non-alphanumerics of
the app name become ``_``):

- ``$nonstop_roomescape_upstream`` — the upstream to ``proxy_pass`` to
- ``$nonstop_roomescape_release``  — the chosen release's name (header, log)
- ``$nonstop_roomescape_set_cookie`` — the ``Set-Cookie`` value pinning the
  user's bucket, or empty (``add_header`` then adds nothing)
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nonstop.agent.routers.base import Release, RouteTable
from nonstop.errors import RouterError
from nonstop.proxy.split import normalise  # the embedded proxy's rule, so every router gives the same buckets

__all__ = [
    "BUCKETS",
    "COOKIE_NAME",
    "LOG_FORMAT_FIELDS",
    "Plan",
    "normalise",
    "plan",
    "ident",
    "render_upstreams",
    "render_managed",
    "ManagedPaths",
]

BUCKETS = 100
COOKIE_NAME = "nonstop_bucket"
COOKIE_ATTRS = "Path=/; Max-Age=86400; HttpOnly; SameSite=Lax"

_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.:@+/=-]*$")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]+$")
_COOKIE_NAME = re.compile(r"^[A-Za-z0-9_]+$")
_ADDR = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):[0-9]{1,5}$")


@dataclass(frozen=True)
class Plan:
    """What a routing means for a router: usable releases, bucket → release, match rules in order."""

    usable: tuple[Release, ...]
    by_bucket: tuple[str, ...]  # 100 release names, or () when nothing is usable
    matchers: tuple[Release, ...]  # usable releases with match rules, first wins


def plan(routing: RouteTable) -> Plan:
    """Check a routing and compute its split (pure). Raises ``RouterError`` for names nginx/HAProxy cannot carry."""
    seen: set[str] = set()
    for r in routing.releases:
        if not r.name or not _SAFE_VALUE.match(r.name):
            raise RouterError(f"release name {r.name!r}: only letters, digits and _.:@+/=- are allowed")
        if r.name in seen:
            raise RouterError(f"release {r.name!r} is listed twice")
        seen.add(r.name)
        if not 0 <= r.weight <= 100:
            raise RouterError(f"release {r.name!r}: weight {r.weight} is not within 0..100")
        for t in r.targets:
            if not _ADDR.match(t.addr):
                raise RouterError(f"release {r.name!r}: target {t.addr!r} is not HOST:PORT")
        for name, _ in r.match_headers:
            if not _HEADER_NAME.match(name):
                raise RouterError(f"release {r.name!r}: match header name {name!r} is not a plain header name")
        for name, _ in r.match_cookies:
            if not _COOKIE_NAME.match(name):
                raise RouterError(f"release {r.name!r}: match cookie name {name!r}: only letters, digits and _")
        for _, value in (*r.match_headers, *r.match_cookies):
            if any(ord(c) < 0x20 or ord(c) > 0x7E for c in value):
                raise RouterError(f"release {r.name!r}: match value {value!r} must be printable ASCII")
    usable = tuple(r for r in routing.releases if r.live_targets)
    shares = normalise([r.weight for r in usable])
    by_bucket: list[str] = []
    for r, share in zip(usable, shares):
        by_bucket.extend([r.name] * share)
    matchers = tuple(r for r in usable if r.match_headers or r.match_cookies)
    return Plan(usable=usable, by_bucket=tuple(by_bucket), matchers=matchers)


def ident(text: str) -> str:
    """A name nginx/HAProxy accept in identifiers: non-alphanumerics become ``_``."""
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def _split_clients(source: str, var: str) -> str:
    """A ``split_clients`` block spreading ``source`` over the buckets 0..99 (1% each)."""
    lines = [f'\nsplit_clients "{source}" {var} {{\n']
    lines += [f"    1% {b};\n" for b in range(BUCKETS - 1)]
    lines.append(f"    * {BUCKETS - 1};\n}}\n")
    return "".join(lines)


def _regex_exact(value: str) -> str:
    """A PCRE matching exactly ``value``; every non-alphanumeric as ``\\xHH`` so nginx quoting never interferes."""
    return "".join(c if c.isalnum() else f"\\x{ord(c):02x}" for c in value)


# The JSON access-log line nonstop writes and reads (documented in docs/routers.md).
LOG_FORMAT_FIELDS: tuple[tuple[str, str, bool], ...] = (
    # (field, nginx variable, quoted)
    ("time", "$time_iso8601", True),
    ("msec", "$msec", False),
    ("app", "{app}", True),
    ("release", "$nonstop_{id}_release", True),
    ("remote_addr", "$remote_addr", True),
    ("method", "$request_method", True),
    ("uri", "$request_uri", True),
    ("status", "$status", False),
    ("request_time", "$request_time", False),
    ("bytes_sent", "$bytes_sent", False),
    ("upstream_addr", "$upstream_addr", True),
    ("upstream_status", "$upstream_status", True),
    ("upstream_response_time", "$upstream_response_time", True),
    ("upstream_bytes_received", "$upstream_bytes_received", True),
    ("request_id", "$request_id", True),
)


def log_format_name(app: str) -> str:
    return f"nonstop_{ident(app)}_json"


def render_log_format(app: str) -> str:
    parts = []
    for field, var, quoted in LOG_FORMAT_FIELDS:
        var = var.replace("{app}", app).replace("{id}", ident(app))
        parts.append(f'"{field}":"{var}"' if quoted else f'"{field}":{var}')
    body = "{" + ",".join(parts) + "}"
    return f"log_format {log_format_name(app)} escape=json '{body}';\n"


def render_upstreams(app: str, routing: RouteTable, *, keepalive: int = 32, log_format: bool = True) -> str:
    """The http-level include: upstreams, the release choice, the log format.

    Releases without a live target get no upstream and no buckets; when no
    release is usable, ``$nonstop_<app>_upstream`` names an upstream whose only
    server is ``down``, so nginx answers 502 at once (nginx cannot hold requests).
    """
    p = plan(routing)
    aid = ident(app)
    v = f"nonstop_{aid}"
    out: list[str] = [f"# Generated by nonstop for app {app}. Do not edit: nonstop rewrites this file on every change.\n"]
    if log_format:
        out.append(render_log_format(app))

    upstream_of: dict[str, str] = {}
    for i, r in enumerate(p.usable):
        name = f"{v}__{i}_{ident(r.name)}"
        upstream_of[r.name] = name
        out.append(f"\n# release {r.name} (weight {r.weight})\nupstream {name} {{\n    least_conn;\n")
        for t in r.live_targets:
            out.append(f"    server {t.addr} max_fails=1 fail_timeout=2s;\n")
        out.append(f"    keepalive {keepalive};\n    keepalive_timeout 60s;\n}}\n")
    none = f"{v}__none"
    out.append(f"\n# nothing routable: answer 502 at once\nupstream {none} {{\n    server 127.0.0.1:9 down;\n}}\n")

    # User bucket (the embedded proxy's rule, proxy/split.py): the split_key's value hashed, else by
    # `sticky`: the nonstop_bucket cookie when valid (0..99), else a random bucket pinned in a cookie;
    # "client_ip": a hash of the client address; false: a random bucket per request.
    splits = len(set(p.by_bucket)) > 1  # a cookie pins a bucket only while buckets matter
    out.append(
        f"\nmap $cookie_{COOKIE_NAME} ${v}_cookie_bucket {{\n"
        f'    "~^(?<b>[0-9]|[1-9][0-9])$" $b;\n'
        f'    default "";\n}}\n'
    )
    out.append(_split_clients("${request_id}", f"${v}_rand_bucket"))
    if routing.sticky is True:
        out.append(
            f"\nmap ${v}_cookie_bucket ${v}_sticky_bucket {{\n"
            f'    "" ${v}_rand_bucket;\n    default ${v}_cookie_bucket;\n}}\n'
        )
        pin = f'"{COOKIE_NAME}=${v}_rand_bucket; {COOKIE_ATTRS}"' if splits else '""'
        cookie_state = f"${v}_cookie_bucket"
    else:
        if routing.sticky == "client_ip":
            out.append(_split_clients("${remote_addr}", f"${v}_sticky_bucket"))
        else:
            out.append(f"\nmap ${v}_rand_bucket ${v}_sticky_bucket {{\n    default ${v}_rand_bucket;\n}}\n")
        pin = '""'
        cookie_state = '"none"'
    if routing.split_key is not None:
        kind, name = routing.split_key.kind, routing.split_key.name
        key_var = f"$cookie_{name}" if kind == "cookie" else f"$http_{name.lower().replace('-', '_')}"
        out.append(_split_clients(f"${{{key_var[1:]}}}", f"${v}_key_bucket"))
        out.append(
            f'\nmap {key_var} ${v}_bucket {{\n    "" ${v}_sticky_bucket;\n    default ${v}_key_bucket;\n}}\n'
            f'\nmap {key_var} ${v}_cookie_state {{\n    "" {cookie_state};\n    default "key";\n}}\n'
        )
        cookie_state = f"${v}_cookie_state"
    else:
        out.append(f"\nmap ${v}_sticky_bucket ${v}_bucket {{\n    default ${v}_sticky_bucket;\n}}\n")
    if cookie_state.startswith("$"):
        out.append(f'\nmap {cookie_state} ${v}_set_cookie {{\n    "" {pin};\n    default "";\n}}\n')
    else:
        out.append(f'\nmap ${v}_bucket ${v}_set_cookie {{\n    default "";\n}}\n')

    # Bucket → release (list order: canary first, so raising its weight only adds buckets).
    out.append(f"\nmap ${v}_bucket ${v}_bucket_release {{\n")
    if p.by_bucket:
        # Literal keys for all but the last range, which is the default.
        ranges: list[tuple[str, int, int]] = []
        for b, name in enumerate(p.by_bucket):
            if ranges and ranges[-1][0] == name:
                ranges[-1] = (name, ranges[-1][1], b)
            else:
                ranges.append((name, b, b))
        for name, lo, hi in ranges[:-1]:
            for b in range(lo, hi + 1):
                out.append(f"    {b} {name};\n")
        out.append(f"    default {ranges[-1][0]};\n")
    else:
        out.append('    default "";\n')
    out.append("}\n")

    # Match rules: one flag variable per matching release, then a chain where the first match wins.
    for i, r in enumerate(p.matchers):
        parts = [f"$http_{n.lower().replace('-', '_')}" for n, _ in r.match_headers]
        parts += [f"$cookie_{n}" for n, _ in r.match_cookies]
        want = [val for _, val in r.match_headers] + [val for _, val in r.match_cookies]
        joined = "|".join(parts)
        key = "\\x7c".join(_regex_exact(w) for w in want)
        out.append(f'\nmap "{joined}" ${v}_match_{i} {{\n    "~^{key}$" {r.name};\n    default "";\n}}\n')
    prev = f"${v}_bucket_release"
    for i in reversed(range(len(p.matchers))):
        chain = f"{v}_chain_{i}"
        out.append(f'\nmap ${v}_match_{i} ${chain} {{\n    "" {prev};\n    default ${v}_match_{i};\n}}\n')
        prev = f"${chain}"
    out.append(f"\nmap {prev} ${v}_release {{\n    default {prev};\n}}\n")

    out.append(f"\nmap ${v}_release ${v}_upstream {{\n")
    for name, ups in upstream_of.items():
        # "\" keeps a release called "default" (or "include", ...) a plain key.
        out.append(f"    \\{name} {ups};\n")
    out.append(f"    default {none};\n}}\n")
    return "".join(out)


@dataclass(frozen=True)
class ManagedPaths:
    """Where a managed nginx keeps its files (all under ``<state_dir>/nginx/``)."""

    root: str

    @property
    def conf(self) -> str:
        return f"{self.root}/nginx.conf"

    @property
    def upstreams(self) -> str:
        return f"{self.root}/upstreams.conf"

    @property
    def pid(self) -> str:
        return f"{self.root}/nginx.pid"

    @property
    def error_log(self) -> str:
        return f"{self.root}/error.log"

    @property
    def access_log(self) -> str:
        return f"{self.root}/access.json.log"

    @property
    def temp(self) -> str:
        return f"{self.root}/tmp"

    @property
    def sidecar(self) -> str:
        return f"{self.root}/routing.json"


def render_managed(
    app: str,
    listen: str,
    paths: ManagedPaths,
    *,
    user: str | None,
    upstreams_file: str,
    worker_shutdown_timeout: float,
    worker_processes: int = 1,
    connect_timeout: float = 2.0,
    read_timeout: float = 60.0,
    keepalive_timeout: float = 75.0,
    access_log: str | None = None,
    trusted_proxies: tuple[str, ...] | list[str] = (),
) -> str:
    """The whole ``nginx.conf`` of a managed nginx: own pid, logs and temp paths; no ``/etc/nginx``.

    Forwarded headers (DESIGN §2 ``trusted_proxies``): from a trusted peer the client is the rightmost
    untrusted hop of X-Forwarded-For (the realip module, recursive) and X-Forwarded-Proto/-Host pass
    through; from anyone else they are replaced by what nginx saw.
    """
    v = f"nonstop_{ident(app)}"
    t = paths.temp
    user_line = f"user {user};\n" if user else ""
    realip = "".join(f"        set_real_ip_from {c};\n" for c in trusted_proxies)
    if realip:
        realip += "        real_ip_header X-Forwarded-For;\n        real_ip_recursive on;\n"
    geo = "".join(f"        {c} 1;\n" for c in trusted_proxies)
    return f"""# Generated by nonstop for app {app} (router nginx, mode managed). Do not edit.
{user_line}worker_processes {worker_processes};
pid {paths.pid};
error_log {paths.error_log} notice;
# Old workers finish in-flight requests after a reload, for at most this long.
worker_shutdown_timeout {_secs(worker_shutdown_timeout)};

events {{
    worker_connections 4096;
}}

http {{
    client_body_temp_path {t}/body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    access_log off;
    server_tokens off;
    keepalive_timeout {_secs(keepalive_timeout) if keepalive_timeout > 0 else "0"};
    keepalive_requests 10000;

    include {upstreams_file};

    # 1 when the connection's peer is a trusted proxy (its forwarded headers are believed)
    geo $realip_remote_addr ${v}_trusted {{
        default 0;
{geo}    }}
    map "${v}_trusted$http_x_forwarded_for" ${v}_xff {{
        "~^1(?<hops>.+)$" "$hops, $realip_remote_addr";
        default $realip_remote_addr;
    }}
    map "${v}_trusted$http_x_forwarded_proto" ${v}_xfp {{
        "~^1(?<proto>.+)$" $proto;
        default $scheme;
    }}
    map "${v}_trusted$http_x_forwarded_host" ${v}_xfh {{
        "~^1(?<fhost>.+)$" $fhost;
        default $host;
    }}
    map ${v}_trusted ${v}_forwarded {{
        1 $http_forwarded;
        default "";
    }}

    server {{
        listen {listen};
        access_log {access_log or paths.access_log} {log_format_name(app)};
{realip}
        location / {{
            proxy_pass http://${v}_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_set_header X-Forwarded-For ${v}_xff;
            proxy_set_header X-Forwarded-Proto ${v}_xfp;
            proxy_set_header X-Forwarded-Host ${v}_xfh;
            proxy_set_header Forwarded ${v}_forwarded;
            # Retry the next server on connect errors and timeouts. nginx never passes a
            # non-idempotent request (POST...) on once it was sent, so a POST is retried only
            # when its connection failed: safe.
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 3;
            proxy_next_upstream_timeout {_secs(connect_timeout * 3)};
            proxy_connect_timeout {_secs(connect_timeout)};
            proxy_read_timeout {_secs(read_timeout)};
            proxy_send_timeout {_secs(read_timeout)};
            proxy_buffering on;
            add_header X-Nonstop-Release ${v}_release always;
            add_header Set-Cookie ${v}_set_cookie always;
        }}
    }}
}}
"""


def _secs(seconds: float) -> str:
    ms = max(1, int(round(seconds * 1000)))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"
