"""HTTPS on the proxy: the server contexts, the certificate chosen by SNI, and certificates swapped in live.

``TlsContexts.base`` is the one ``ssl.SSLContext`` the TLS listener is
created with. It holds no certificate itself: its ``sni_callback`` looks up
the name the client asked for in an ``SniTable`` (exact name, then wildcard,
then the default certificate: the first source) and points the connection at
that certificate's own context. Swapping certificates builds a new table and
replaces it in one assignment: handshakes that start afterwards get the new
certificate, established connections keep theirs, nothing restarts.

``reload_if_changed(now)`` stats the files; ``ReloadPlan`` (no I/O)
decides which pairs to read again: those whose (device, inode, size, mtime)
changed since the last attempt and then stayed put for ``settle`` seconds
(so a renewal that writes the key, then the certificate, is read once,
whole). A pair that fails its checks leaves the old certificate serving and
comes back as a ``CertReloadFailed`` for the proxy to log and the agent to
show; it is not tried again until its files change once more.
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

from nonstop.errors import TlsConfigError
from nonstop.proxy.certs import CIPHERS, CertSource, FileStamp, LoadedCert, load_pair, server_context, stamp_of

__all__ = [
    "CIPHERS", "CertSource", "LoadedCert", "load_pair", "server_context", "TlsConfigError",
    "SniTable", "ReloadPlan", "TlsContexts", "CertReloaded", "CertReloadFailed",
]

log = logging.getLogger("nonstop.proxy.tls")

Observed = tuple[FileStamp | None, FileStamp | None]
"""The stamps of a pair's cert and key files as seen now (``None``: cannot stat)."""


@dataclass(frozen=True)
class SniTable:
    """Which certificate answers which server name; built once per swap, read by every handshake."""

    exact: dict[str, LoadedCert]
    wildcard: dict[str, LoadedCert]  # "example.com" -> the certificate for "*.example.com"
    default: LoadedCert | None

    @classmethod
    def build(cls, certs: Sequence[LoadedCert]) -> "SniTable":
        """The first certificate listed is the default; a name two certificates cover goes to the first."""
        exact: dict[str, LoadedCert] = {}
        wildcard: dict[str, LoadedCert] = {}
        for c in certs:
            for n in c.names:
                if n.startswith("*."):
                    wildcard.setdefault(n[2:], c)
                else:
                    exact.setdefault(n, c)
        return cls(exact, wildcard, certs[0] if certs else None)

    def pick(self, server_name: str | None) -> LoadedCert | None:
        """The certificate for a ClientHello asking for ``server_name`` (``None``: no SNI sent)."""
        if server_name:
            name = server_name.lower().rstrip(".")
            hit = self.exact.get(name)
            if hit is not None:
                return hit
            _, dot, parent = name.partition(".")
            if dot:
                hit = self.wildcard.get(parent)
                if hit is not None:
                    return hit
        return self.default


@dataclass
class _Watch:
    attempted: Observed  # stamps at the last load attempt, whatever its outcome
    seen: Observed | None = None  # a change noticed, not yet settled
    seen_since: float = 0.0


class ReloadPlan:
    """Decides, from stamps and ``now``, which certificate pairs to read again. No I/O."""

    def __init__(self, settle: float = 1.0) -> None:
        self.settle = settle
        self._watch: dict[CertSource, _Watch] = {}

    def attempted(self, src: CertSource, observed: Observed) -> None:
        """``src`` was just read (successfully or not) with its files at ``observed``."""
        self._watch[src] = _Watch(observed)

    def forget(self, src: CertSource) -> None:
        self._watch.pop(src, None)

    def due(self, src: CertSource, observed: Observed, now: float) -> bool:
        """Whether to read ``src`` again now that its files look like ``observed``."""
        w = self._watch.get(src)
        if w is None:
            return True
        if observed == w.attempted:
            w.seen = None
            return False
        if observed != w.seen:  # a new change (or one still in progress): wait for it to settle
            w.seen, w.seen_since = observed, now
        return now - w.seen_since >= self.settle


@dataclass(frozen=True)
class CertReloaded:
    """A pair's files changed and the new certificate now answers new handshakes."""

    source: CertSource
    cert: LoadedCert
    previous: LoadedCert

    def message(self) -> str:
        return (f"{self.source.field}: certificate reloaded from {self.source.cert} "
                f"(serial {self.previous.serial} -> {self.cert.serial}, names {', '.join(self.cert.names) or '-'})")


@dataclass(frozen=True)
class CertReloadFailed:
    """A pair's files changed but cannot be served; the previous certificate keeps serving."""

    source: CertSource
    error: TlsConfigError

    def message(self) -> str:
        return f"{self.error.message} (the previous certificate keeps serving)"


CertEvent = CertReloaded | CertReloadFailed


class TlsContexts:
    """Owns the proxy's server-side TLS contexts: the base one (given to the listener), one per
    certificate, the SNI table between them, and the watch on their files.

    Constructing it loads every source: a pair that fails is a ``TlsConfigError``
    (exit 2 naming the field), so a proxy never starts half-configured. With no
    sources (an ACME certificate not issued yet), handshakes are refused with an
    ``unrecognized_name`` alert until ``replace`` brings one.
    """

    def __init__(self, sources: Sequence[CertSource], now: float, *, settle: float = 1.0) -> None:
        self.base = server_context()
        self.base.sni_callback = self._on_sni
        self.plan = ReloadPlan(settle)
        self._certs: dict[CertSource, LoadedCert] = {}
        self._order: list[CertSource] = []
        self._errors: dict[CertSource, TlsConfigError] = {}
        self._table = SniTable.build([])
        self.replace(sources, now)

    # -- the handshake -------------------------------------------------------------

    def _on_sni(self, ssl_obj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext):
        # read the table once: a swap between two reads could mix two tables
        cert = self._table.pick(server_name)
        if cert is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        ssl_obj.context = cert.context
        return None

    def select(self, server_name: str | None) -> LoadedCert | None:
        """The certificate a client asking for ``server_name`` gets now."""
        return self._table.pick(server_name)

    @property
    def certs(self) -> list[LoadedCert]:
        """The certificates serving now, default first."""
        return [self._certs[s] for s in self._order]

    # -- changing certificates -------------------------------------------------------

    def replace(self, sources: Sequence[CertSource], now: float) -> None:
        """Serve exactly ``sources`` from now on (config reload, an ACME certificate issued).

        All or nothing: if any pair fails its checks, ``TlsConfigError`` is raised
        and the certificates serving before keep serving. Pairs already loaded whose
        files have not changed are kept as they are.
        """
        sources = list(dict.fromkeys(sources))
        fresh: dict[CertSource, LoadedCert] = {}
        for src in sources:
            old = self._certs.get(src)
            if old is not None and _observe(src) == old.stamps:
                fresh[src] = old
            else:
                fresh[src] = load_pair(src, now)
        for src in set(self._certs) - set(fresh):
            self.plan.forget(src)
            self._errors.pop(src, None)
        for src, cert in fresh.items():
            if self._certs.get(src) is not cert:
                self.plan.attempted(src, cert.stamps)
                self._errors.pop(src, None)
        self._certs, self._order = fresh, sources
        self._swap()

    def reload_if_changed(self, now: float) -> list[CertEvent]:
        """Read again the pairs whose files changed (and settled); returns what happened to each."""
        events: list[CertEvent] = []
        for src in self._order:
            observed = _observe(src)
            if not self.plan.due(src, observed, now):
                continue
            try:
                cert = load_pair(src, now)
            except TlsConfigError as e:
                self.plan.attempted(src, observed)
                self._errors[src] = e
                events.append(CertReloadFailed(src, e))
                log.warning("%s", events[-1].message())
                continue
            self.plan.attempted(src, cert.stamps)
            self._errors.pop(src, None)
            events.append(CertReloaded(src, cert, self._certs[src]))
            self._certs[src] = cert
            log.info("%s", events[-1].message())
        if any(isinstance(e, CertReloaded) for e in events):
            self._swap()
        return events

    def _swap(self) -> None:
        self._table = SniTable.build([self._certs[s] for s in self._order])

    # -- what status shows -----------------------------------------------------------

    def describe(self, now: float) -> list[dict]:
        """Each certificate serving now, with the error of its last failed reload, if any."""
        out = []
        for src in self._order:
            d = self._certs[src].summary(now)
            err = self._errors.get(src)
            d["reload_error"] = err.message if err else None
            out.append(d)
        return out


def _observe(src: CertSource) -> Observed:
    return (_stat(src.cert), _stat(src.key))


def _stat(path: str) -> FileStamp | None:
    try:
        return stamp_of(os.stat(path))
    except OSError:
        return None
