"""Certificates from an ACME CA (RFC 8555: Let's Encrypt, or a private CA), issued and renewed in the background.

``AcmeManager`` owns one certificate (``tls.acme.domains``) in the state
dir (see ``acme_files``): the account key and registration, the HTTP-01
challenge files the proxy serves on the plain listener, the issued chain
and key, and the renewal record. The protocol is the ``acme`` library's
(the one under certbot), run in a worker thread so the agent's loop never
waits on the CA. When to try is ``renew_at`` (no I/O): ``renew_before`` the
end of the certificate's life (at most a third of its lifetime, so short
certificates are not renewed forever), or after a failure, a backoff that
doubles from 5 minutes to 6 hours. A failed attempt changes no file the
proxy serves; it comes back as an ``IssueFailed`` carrying the CA's own
problem documents (``urn:ietf:params:acme:error:…`` and their detail).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nonstop import __version__
from nonstop.agent.acme_files import PRIVATE, PUBLIC, AcmePaths, read_json, write_atomic
from nonstop.config import AcmeConfig
from nonstop.errors import ConfigError, TlsConfigError
from nonstop.proxy.certs import CertSource, load_pair, stamp_of

__all__ = ["AcmeManager", "AcmeProblem", "Issued", "IssueFailed", "AcmeResult", "renew_at",
           "BACKOFF_START", "BACKOFF_MAX"]

log = logging.getLogger("nonstop.acme")

BACKOFF_START = 300.0  # Let's Encrypt allows 5 failed validations per hostname an hour
BACKOFF_MAX = 6 * 3600.0
FIELD = "tls.acme"


def renew_at(not_after: float | None, renew_before: float, last_failure: float | None, failures: int,
             now: float, *, not_before: float | None = None) -> float:
    """When to next ask the CA for this certificate (wall-clock seconds; ``<= now``: now).

    ``not_after`` is ``None`` when there is no usable certificate (none yet, or
    one that does not cover the configured domains): due at once. After
    ``failures`` failed attempts in a row, not before ``last_failure`` plus a
    backoff that doubles from ``BACKOFF_START`` up to ``BACKOFF_MAX``.
    """
    if not_after is None:
        due = now
    else:
        before = renew_before
        if not_before is not None:
            before = min(before, (not_after - not_before) / 3)
        due = not_after - before
    if failures > 0 and last_failure is not None:
        due = max(due, last_failure + min(BACKOFF_START * 2 ** (failures - 1), BACKOFF_MAX))
    return due


@dataclass(frozen=True)
class AcmeProblem:
    """One problem as the CA stated it (an RFC 7807 problem document), or as nonstop saw it."""

    type: str | None  # "urn:ietf:params:acme:error:rejectedIdentifier"; None: not the CA's (network, timeout)
    detail: str
    identifier: str | None = None  # the domain a challenge problem is about

    def text(self) -> str:
        who = f"{self.identifier}: " if self.identifier else ""
        return f"{who}{self.type}: {self.detail}" if self.type else f"{who}{self.detail}"


@dataclass(frozen=True)
class Issued:
    """A certificate was issued and stored; the proxy can load ``cert`` / ``key``."""

    domains: tuple[str, ...]
    cert: str
    key: str
    serial: str
    not_before: float
    not_after: float
    seconds: float
    ok: bool = True

    def event(self) -> dict:
        """Type, message and fields for ``EventBus.emit(None, **event())``: events carry fields, not prose."""
        return {"type": "tls_certificate", "message": self.message(), "domains": list(self.domains),
                "serial": self.serial, "not_after": _iso(self.not_after), "cert": self.cert, "key": self.key}

    def message(self) -> str:
        end = dt.datetime.fromtimestamp(self.not_after, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        return f"certificate issued for {', '.join(self.domains)} (serial {self.serial}, valid until {end}) in {self.seconds:.1f}s"


@dataclass(frozen=True)
class IssueFailed:
    """An attempt failed; the certificate stored before (if any) is untouched and keeps serving."""

    domains: tuple[str, ...]
    stage: str  # directory | account | order | challenge | validation | finalize | store
    problems: tuple[AcmeProblem, ...]
    at: float
    retry_at: float = 0.0
    ok: bool = False

    def event(self) -> dict:
        """Type, message and fields for ``EventBus.emit(None, **event())``; ``problems`` are the CA's own."""
        return {"type": "tls_error", "message": self.message(), "domains": list(self.domains), "stage": self.stage,
                "problems": [asdict(p) for p in self.problems], "retry_at": _iso(self.retry_at) if self.retry_at else None}

    def message(self) -> str:
        one = len(self.domains) == 1  # the domain is in the sentence already
        why = "; ".join(AcmeProblem(p.type, p.detail, None).text() if one else p.text() for p in self.problems)
        why = why or "no reason given"
        return f"ACME {self.stage} failed for {', '.join(self.domains)}: {why}"


AcmeResult = Issued | IssueFailed


class _Failed(Exception):
    def __init__(self, stage: str, problems: list[AcmeProblem]) -> None:
        super().__init__(stage)
        self.stage, self.problems = stage, tuple(problems)


@dataclass
class _Record:
    """What survives a restart: the failures in a row, and the CA's last word."""

    failures: int = 0
    last_failure: float | None = None
    last_success: float | None = None
    last_error: dict | None = field(default=None)


class AcmeManager:
    """Owns one ACME certificate: account, challenges, issuance, storage and the renewal schedule."""

    def __init__(self, acme: AcmeConfig, state_dir: Path, *, base_dir: Path | None = None,
                 on_result: Callable[[AcmeResult], Awaitable[None] | None] | None = None,
                 clock: Callable[[], float] = time.time, timeout: float = 120.0) -> None:
        self.cfg = acme
        self.domains = tuple(acme.domains)
        self.paths = AcmePaths(Path(state_dir), self.domains[0].lower())
        self.on_result = on_result
        self.clock = clock
        self.timeout = timeout
        self.verify: bool | str = True
        if acme.ca_bundle:
            bundle = Path(acme.ca_bundle).expanduser()
            if not bundle.is_absolute() and base_dir is not None:
                bundle = base_dir / bundle
            if not bundle.is_file():
                raise ConfigError(f"no such file: {bundle}", field="tls.acme.ca_bundle")
            self.verify = str(bundle)
        self.paths.make_dirs()
        self._record = self._load_record()
        self._lock = asyncio.Lock()
        self._current = None
        self.issuing = False

    # -- what the proxy and status read -------------------------------------------------

    @property
    def source(self) -> CertSource:
        """The certificate pair for the proxy (``TlsContexts``), once ``current()`` is not ``None``."""
        return CertSource(FIELD, str(self.paths.fullchain), str(self.paths.privkey))

    def has_files(self) -> bool:
        """Whether a certificate was stored (servable or not: ``TlsContexts`` checks it, and keeps the
        old one serving for the names it covers while a grown ``domains`` list waits for its order)."""
        return self.paths.fullchain.is_file() and self.paths.privkey.is_file()

    def current(self):
        """The stored certificate (a ``LoadedCert``) if it is servable now and covers the domains, else ``None``."""
        now = self.clock()
        cached = self._current
        if cached is not None and cached.not_before <= now < cached.not_after and _stamps(self.source) == cached.stamps:
            return cached  # status is polled: read and check the files again only when they change
        try:
            cert = load_pair(self.source, now)
        except TlsConfigError:
            self._current = None
            return None
        self._current = cert if all(cert.covers(d) for d in self.domains) else None
        return self._current

    def next_attempt(self, now: float | None = None) -> float:
        now = self.clock() if now is None else now
        cert = self.current()
        r = self._record
        return renew_at(cert.not_after if cert else None, self.cfg.renew_before, r.last_failure, r.failures, now,
                        not_before=cert.not_before if cert else None)

    def status(self) -> dict:
        """For ``status``, the dashboard and the API."""
        now = self.clock()
        cert = self.current()
        r = self._record
        state = "issuing" if self.issuing else ("failing" if r.failures else ("valid" if cert else "missing"))
        return {
            "domains": list(self.domains),
            "directory": self.cfg.directory,
            "state": state,
            "certificate": cert.summary(now) if cert else None,
            "next_attempt": _iso(self.next_attempt(now)),
            "failures": r.failures,
            "last_success": _iso(r.last_success) if r.last_success else None,
            "last_error": r.last_error,
        }

    # -- running -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, max_sleep: float = 3600.0) -> None:
        """Issue and renew until ``stop`` is set (the agent's background task)."""
        while not stop.is_set():
            now = self.clock()
            at = self.next_attempt(now)
            if at <= now:
                await self.issue()
                continue
            # wake at least hourly: a suspended machine or a clock step must not oversleep a renewal
            try:
                await asyncio.wait_for(stop.wait(), min(at - now, max_sleep))
            except asyncio.TimeoutError:
                pass

    async def issue(self) -> AcmeResult:
        """One attempt now (in a worker thread); records the outcome and reports it to ``on_result``."""
        async with self._lock:
            self.issuing = True
            try:
                result = await asyncio.to_thread(self._attempt)
            finally:
                self.issuing = False
            result = self._note(result)
            log.log(logging.INFO if result.ok else logging.WARNING, "%s", result.message())
            if self.on_result is not None:
                maybe = self.on_result(result)
                if inspect.isawaitable(maybe):
                    await maybe
            return result

    # -- the blocking part (a worker thread) ------------------------------------------

    def _attempt(self) -> AcmeResult:
        started = time.monotonic()
        try:
            return self._issue(started)
        except _Failed as f:
            return IssueFailed(self.domains, f.stage, f.problems, self.clock())

    def _issue(self, started: float) -> Issued:
        from acme import client as acme_client
        from acme import crypto_util, messages
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        stage = "directory"
        written: list[Path] = []
        try:
            key, saved = self._account_key()
            net = acme_client.ClientNetwork(key, verify_ssl=self.verify, timeout=int(min(self.timeout, 60)),
                                            user_agent=f"nonstop/{__version__} acme-python")
            directory = acme_client.ClientV2.get_directory(self.cfg.directory, net)
            client = acme_client.ClientV2(directory, net)
            stage = "account"
            self._register(client, net, key, saved)
            stage = "order"
            pkey = ec.generate_private_key(ec.SECP256R1())  # a new key for every certificate
            key_pem = pkey.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
            order = client.new_order(crypto_util.make_csr(key_pem, list(self.domains)))
            stage = "challenge"
            for authz in order.authorizations:
                if authz.body.status == messages.STATUS_VALID:
                    continue  # the CA remembers a recent validation
                challb = next((c for c in authz.body.challenges if c.chall.typ == "http-01"), None)
                if challb is None:
                    raise _Failed(stage, [AcmeProblem(None, "the CA offers no http-01 challenge",
                                                      authz.body.identifier.value)])
                response, validation = challb.response_and_validation(key)
                path = self.paths.challenge(challb.chall.encode("token"))
                write_atomic(path, validation.encode(), PUBLIC)
                written.append(path)
                client.answer_challenge(challb, response)
            stage = "validation"
            deadline = dt.datetime.now() + dt.timedelta(seconds=self.timeout)
            order = client.poll_authorizations(order, deadline)
            stage = "finalize"
            order = client.finalize_order(order, deadline)
            stage = "store"
            return self._store(order.fullchain_pem.encode(), key_pem, started)
        except _Failed:
            raise
        except Exception as e:  # translated at this one boundary, with the CA's own words
            problems = _problems(e, self.cfg.directory, self.timeout)
            if not any(p.type for p in problems) and not _expected(e):
                log.exception("acme %s failed unexpectedly", stage)
            raise _Failed(stage, problems) from None
        finally:
            for path in written:
                path.unlink(missing_ok=True)

    def _account_key(self):
        import josepy as jose
        from cryptography.hazmat.primitives.asymmetric import rsa

        saved = read_json(self.paths.account)
        if saved and saved.get("directory") == self.cfg.directory and saved.get("key"):
            return jose.JWK.from_json(saved["key"]), saved
        key = jose.JWKRSA(key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
        write_atomic(self.paths.account, json.dumps({"directory": self.cfg.directory, "key": key.to_json()}).encode(), PRIVATE)
        return key, None

    def _register(self, client, net, key, saved: dict | None) -> None:
        from acme import messages

        if saved and saved.get("registration"):
            regr = messages.RegistrationResource.from_json(saved["registration"])
            net.account = regr
            try:
                client.query_registration(regr)
                return
            except messages.Error as e:
                if e.code != "accountDoesNotExist":
                    raise
                log.info("acme account %s unknown to the CA now: registering again", regr.uri)
                net.account = None
        # Naming tls.acme in the config is agreeing to the CA's terms (docs/https.md says so).
        regr = client.new_account(messages.NewRegistration.from_data(email=self.cfg.email,
                                                                      terms_of_service_agreed=True))
        write_atomic(self.paths.account, json.dumps({
            "directory": self.cfg.directory, "key": key.to_json(), "registration": regr.to_json(),
            "email": self.cfg.email, "created": _iso(self.clock()),
        }).encode(), PRIVATE)
        log.info("acme account registered at %s (%s)", regr.uri, self.cfg.email)

    def _store(self, fullchain: bytes, key_pem: bytes, started: float) -> Issued:
        """Check the new pair exactly as the proxy will, then rename it over the served one."""
        d = self.paths.cert_dir
        tmp_cert, tmp_key = d / ".fullchain.pem.new", d / ".privkey.pem.new"
        try:
            write_atomic(tmp_key, key_pem, PRIVATE)
            write_atomic(tmp_cert, fullchain, PRIVATE)
            try:
                cert = load_pair(CertSource(FIELD, str(tmp_cert), str(tmp_key)), self.clock())
            except TlsConfigError as e:
                raise _Failed("store", [AcmeProblem(None, f"the CA's certificate cannot be served: {e.message}")])
            missing = [n for n in self.domains if not cert.covers(n)]
            if missing:
                raise _Failed("store", [AcmeProblem(None, f"the CA's certificate does not cover {', '.join(missing)}")])
            tmp_key.replace(self.paths.privkey)
            tmp_cert.replace(self.paths.fullchain)
        finally:
            tmp_cert.unlink(missing_ok=True)
            tmp_key.unlink(missing_ok=True)
        return Issued(self.domains, str(self.paths.fullchain), str(self.paths.privkey), cert.serial,
                      cert.not_before, cert.not_after, time.monotonic() - started)

    # -- the record ------------------------------------------------------------------

    def _load_record(self) -> _Record:
        data = read_json(self.paths.renewal) or {}
        try:
            return _Record(int(data.get("failures", 0)), data.get("last_failure"), data.get("last_success"),
                           data.get("last_error"))
        except (TypeError, ValueError):
            return _Record()

    def _note(self, result: AcmeResult) -> AcmeResult:
        r = self._record
        if result.ok:
            self._record = _Record(0, None, self.clock(), None)
        else:
            failures = r.failures + 1
            error = {"stage": result.stage, "message": result.message(), "at": _iso(result.at),
                     "problems": [asdict(p) for p in result.problems]}
            self._record = _Record(failures, result.at, r.last_success, error)
            cert = self.current()
            retry = renew_at(cert.not_after if cert else None, self.cfg.renew_before, result.at, failures,
                             result.at, not_before=cert.not_before if cert else None)
            result = IssueFailed(result.domains, result.stage, result.problems, result.at, retry)
        write_atomic(self.paths.renewal, json.dumps(asdict(self._record)).encode(), PRIVATE)
        return result


def _problems(e: Exception, directory: str, timeout: float) -> list[AcmeProblem]:
    from acme import errors, messages
    import requests

    if isinstance(e, messages.Error):
        return _from_error(e, None)
    if isinstance(e, errors.ValidationError):
        out = []
        for authzr in e.failed_authzrs:
            for chall in authzr.body.challenges:
                if chall.error is not None:
                    out += _from_error(chall.error, authzr.body.identifier.value)
        return out
    if isinstance(e, errors.IssuanceError):
        return _from_error(e.error, None)
    if isinstance(e, errors.TimeoutError):
        return [AcmeProblem(None, f"the CA did not finish the order within {timeout:g}s")]
    if isinstance(e, requests.exceptions.SSLError):
        return [AcmeProblem(None, f"cannot verify the TLS certificate of {directory} (set tls.acme.ca_bundle for a "
                                  f"private CA): {e}")]
    if isinstance(e, requests.exceptions.RequestException):
        return [AcmeProblem(None, f"cannot reach {directory}: {e}")]
    return [AcmeProblem(None, f"{type(e).__name__}: {e}")]


def _expected(e: Exception) -> bool:
    from acme import errors
    import requests

    return isinstance(e, (errors.Error, requests.exceptions.RequestException, OSError))


def _from_error(err, identifier: str | None) -> list[AcmeProblem]:
    ident = err.identifier.value if getattr(err, "identifier", None) else identifier
    out = [AcmeProblem(str(err.typ) if err.typ else None, err.detail or err.title or "", ident)]
    for sub in err.subproblems or ():
        out += _from_error(sub, ident)
    return out


def _stamps(src: CertSource):
    try:
        return tuple(stamp_of(os.stat(p)) for p in (src.cert, src.key))
    except OSError:
        return None


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
