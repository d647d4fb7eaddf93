"""A certificate and its key read from PEM files and checked before anything serves them.

``load_pair(src, now)`` reads both files, checks them the way a client
will (PEM, the key matches the certificate, the dates, the chain's order),
notes the names the certificate covers, and builds the ``ssl.SSLContext``
that serves it. Every problem is a ``TlsConfigError`` naming the config
field the file came from (``CertSource.field``) and the path: a broken pair
never reaches a listener.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import ssl
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.exceptions import UnsupportedAlgorithm

from nonstop.errors import TlsConfigError

__all__ = ["CertSource", "LoadedCert", "FileStamp", "load_pair", "server_context", "stamp_of", "CIPHERS"]

# Mozilla's "intermediate" configuration (v5.7) for TLS 1.2; TLS 1.3 keeps OpenSSL's
# suites, which are the same three Mozilla lists. The DHE suites stay inert: no DH
# parameters are loaded, so OpenSSL never picks them.
CIPHERS = ":".join([
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384", "DHE-RSA-CHACHA20-POLY1305",
])

_MAX_FILE = 1 << 20  # a PEM chain is a few KiB; anything this large is the wrong file

FileStamp = tuple[int, int, int, int]
"""(st_dev, st_ino, st_size, st_mtime_ns): a file replaced or rewritten gets a new one."""


def stamp_of(st: os.stat_result) -> FileStamp:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class CertSource:
    """Where one certificate and its key come from, and the config field that named them.

    ``field`` is the prefix of the pair's settings: ``tls`` for ``tls.cert`` /
    ``tls.key``, ``tls.certificates[1]`` for that entry, ``tls.acme`` for an
    issued one. Errors about one file name ``<field>.cert`` or ``<field>.key``.
    """

    field: str
    cert: str
    key: str

    @property
    def cert_field(self) -> str:
        return f"{self.field}.cert"

    @property
    def key_field(self) -> str:
        return f"{self.field}.key"


@dataclass(frozen=True)
class LoadedCert:
    """One checked certificate chain and key, with the context that serves them."""

    source: CertSource
    names: tuple[str, ...]  # SAN DNS names, lower case; "*.example.com" for a wildcard
    not_before: float  # seconds since the epoch
    not_after: float
    subject: str
    issuer: str
    serial: str  # hex
    fingerprint: str  # SHA-256 of the leaf, hex
    stamps: tuple[FileStamp, FileStamp]  # of the cert and key files as read
    context: ssl.SSLContext = field(compare=False, repr=False)

    def covers(self, name: str) -> bool:
        """Whether a client asking for ``name`` (SNI) accepts this certificate."""
        name = name.lower().rstrip(".")
        if name in self.names:
            return True
        _, dot, parent = name.partition(".")
        return bool(dot) and f"*.{parent}" in self.names

    def summary(self, now: float) -> dict:
        """What ``status`` and the dashboard show about it."""
        return {
            "field": self.source.field,
            "cert": self.source.cert,
            "key": self.source.key,
            "names": list(self.names),
            "subject": self.subject,
            "issuer": self.issuer,
            "serial": self.serial,
            "fingerprint": self.fingerprint,
            "not_before": _iso(self.not_before),
            "not_after": _iso(self.not_after),
            "expires_in_days": round((self.not_after - now) / 86400, 1),
        }


def server_context() -> ssl.SSLContext:
    """A server context with nonstop's TLS settings and no certificate yet."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options &= ~ssl.OP_NO_TICKET  # resumption saves a round trip for returning clients
    # the proxy speaks HTTP/1.1 only: a client offering h2 as well settles on http/1.1
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def load_pair(src: CertSource, now: float) -> LoadedCert:
    """Read and check ``src``'s files at wall-clock time ``now``; raises ``TlsConfigError`` naming the field."""
    for _ in range(3):
        chain_pem, cert_stamp = _read(src.cert, src.cert_field)
        key_pem, key_stamp = _read(src.key, src.key_field)
        # a pair rewritten while we read it (a renewal) would mix old and new: read again
        if _current_stamp(src.cert) == cert_stamp and _current_stamp(src.key) == key_stamp:
            break
    chain = _parse_chain(chain_pem, src)
    key = _parse_key(key_pem, src)
    leaf = chain[0]
    _check_key(chain, key, src)
    _check_order(chain, src)
    not_before = leaf.not_valid_before_utc.timestamp()
    not_after = leaf.not_valid_after_utc.timestamp()
    if now < not_before:
        raise TlsConfigError(
            f"{src.cert} is not valid yet: valid from {_iso(not_before)} (now {_iso(now)}; is the clock right?)",
            field=src.cert_field, path=src.cert,
        )
    if now >= not_after:
        raise TlsConfigError(
            f"{src.cert} expired on {_iso(not_after)} (now {_iso(now)}); renew it", field=src.cert_field, path=src.cert
        )
    ctx = server_context()
    _load_into(ctx, chain_pem, key_pem, src, (cert_stamp, key_stamp))
    return LoadedCert(
        source=src,
        names=_dns_names(leaf),
        not_before=not_before,
        not_after=not_after,
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        serial=f"{leaf.serial_number:x}",
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
        stamps=(cert_stamp, key_stamp),
        context=ctx,
    )


# -- reading -------------------------------------------------------------------


def _read(path: str, field: str) -> tuple[bytes, FileStamp]:
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read(_MAX_FILE + 1)
    except OSError as e:
        raise TlsConfigError(f"cannot read {path}: {e.strerror or e}", field=field, path=path) from None
    if len(data) > _MAX_FILE:
        raise TlsConfigError(f"{path} is larger than 1 MiB: not a PEM certificate or key", field=field, path=path)
    return data, stamp_of(st)


def _current_stamp(path: str) -> FileStamp | None:
    try:
        return stamp_of(os.stat(path))
    except OSError:
        return None


def _parse_chain(data: bytes, src: CertSource) -> list[x509.Certificate]:
    where = dict(field=src.cert_field, path=src.cert)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        if b"PRIVATE KEY-----" in data:
            raise TlsConfigError(f"{src.cert} holds a private key, not a certificate (cert and key swapped?)", **where)
        raise TlsConfigError(f"{src.cert} is not a PEM certificate (no -----BEGIN CERTIFICATE----- line)", **where)
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise TlsConfigError(f"{src.cert}: a certificate in it cannot be parsed ({e})", **where) from None


def _parse_key(data: bytes, src: CertSource):
    where = dict(field=src.key_field, path=src.key)
    if b"PRIVATE KEY-----" not in data:
        if b"-----BEGIN CERTIFICATE-----" in data:
            raise TlsConfigError(f"{src.key} holds a certificate, not a private key (cert and key swapped?)", **where)
        raise TlsConfigError(f"{src.key} is not a PEM private key (no -----BEGIN … PRIVATE KEY----- line)", **where)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TlsConfigError(
            f"{src.key} is encrypted with a passphrase; nonstop needs it unencrypted (keep the file mode 0600)", **where
        ) from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise TlsConfigError(f"{src.key}: the private key cannot be parsed ({e})", **where) from None


def _spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _check_key(chain: list[x509.Certificate], key, src: CertSource) -> None:
    mine = _spki(key.public_key())
    if _spki(chain[0].public_key()) == mine:
        return
    for i, c in enumerate(chain[1:], start=2):
        if _spki(c.public_key()) == mine:
            raise TlsConfigError(
                f"{src.cert}: the key {src.key} belongs to certificate {i} in the file, not the first one; "
                "put the server's certificate first, then its issuers",
                field=src.cert_field, path=src.cert,
            )
    raise TlsConfigError(
        f"the private key {src.key} does not match the certificate {src.cert} "
        f"({chain[0].subject.rfc4514_string()})",
        field=src.key_field, path=src.key,
    )


def _check_order(chain: list[x509.Certificate], src: CertSource) -> None:
    for i, (child, parent) in enumerate(zip(chain, chain[1:]), start=1):
        ok = child.issuer == parent.subject
        if ok:
            try:
                child.verify_directly_issued_by(parent)
            except TypeError:
                pass  # a key type cryptography cannot verify with: the names matched, let clients judge
            except Exception:
                ok = False
        if not ok:
            raise TlsConfigError(
                f"{src.cert}: chain out of order: certificate {i + 1} ({parent.subject.rfc4514_string()}) did not "
                f"issue certificate {i} ({child.subject.rfc4514_string()}); the file must hold the server's "
                "certificate first, then each issuer in turn",
                field=src.cert_field, path=src.cert,
            )


def _dns_names(leaf: x509.Certificate) -> tuple[str, ...]:
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()  # clients ignore the CN: such a certificate can only be the default one
    return tuple(dict.fromkeys(n.lower().rstrip(".") for n in san.get_values_for_type(x509.DNSName)))


def _load_into(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes, src: CertSource, stamps) -> None:
    """Give OpenSSL exactly the bytes that were checked: through memory files, never a copy on disk."""
    try:
        with _memfile("cert", chain_pem) as cert_path, _memfile("key", key_pem) as key_path:
            ctx.load_cert_chain(cert_path, key_path)
        return
    except ssl.SSLError as e:
        raise TlsConfigError(f"OpenSSL refused {src.cert} with {src.key}: {e.reason or e}", field=src.field,
                             path=src.cert) from None
    except (AttributeError, OSError):
        pass  # no memfd_create or no /proc: load from the paths, checked unchanged below
    try:
        ctx.load_cert_chain(src.cert, src.key)
    except (ssl.SSLError, OSError) as e:
        raise TlsConfigError(f"OpenSSL refused {src.cert} with {src.key}: {e}", field=src.field, path=src.cert) from None
    if (_current_stamp(src.cert), _current_stamp(src.key)) != stamps:
        raise TlsConfigError(f"{src.cert} changed while it was loaded; will read it again", field=src.field,
                             path=src.cert)


@contextlib.contextmanager
def _memfile(name: str, data: bytes):
    fd = os.memfd_create(f"nonstop-{name}", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        path = f"/proc/self/fd/{fd}"
        if not os.path.exists(path):
            raise OSError("no /proc/self/fd")
        yield path
    finally:
        os.close(fd)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
