"""The ``tls`` block: HTTPS on the embedded proxy, certificates from files (chosen by SNI) or from ACME."""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from nonstop.config.fields import Duration, _Model, _addr


class CertificateFiles(_Model):
    """A certificate chain and its private key, as PEM files."""

    cert: str
    key: str


class AcmeConfig(_Model):
    """Certificates issued and renewed automatically (ACME, RFC 8555; HTTP-01 answered on ``listen``)."""

    email: str = Field(pattern=r"^[^@\s]+@[^@\s]+$")
    domains: list[str] = Field(min_length=1)
    directory: str = "https://acme-v02.api.letsencrypt.org/directory"
    ca_bundle: str | None = Field(None, description="CA certificates to trust for the ACME directory (a private or test CA)")
    renew_before: Duration = Field(30 * 86400.0, description="renew a certificate this long before it expires")

    @field_validator("domains")
    @classmethod
    def _domains(cls, v: list[str]) -> list[str]:
        for d in v:
            if not re.fullmatch(r"(\*\.)?[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*", d):
                raise ValueError(f"not a domain name: {d!r}")
            if d.startswith("*."):
                # HTTP-01 (the only challenge nonstop answers) cannot prove a wildcard (RFC 8555 §8.3)
                raise ValueError(f"{d!r}: a wildcard needs a DNS-01 challenge, which nonstop does not answer; "
                                 "list the names, or use tls.cert/tls.key from another ACME client")
        if len({d.lower() for d in v}) != len(v):
            raise ValueError("a domain is listed twice")
        return v

    @field_validator("directory")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("https://", "http://")):
            raise ValueError("must be an https:// URL of an ACME directory")
        return v


class TlsConfig(_Model):
    """HTTPS on the embedded proxy: certificates from files (several: chosen by SNI) or from ACME."""

    listen: str = "0.0.0.0:443"
    cert: str | None = None
    key: str | None = None
    certificates: list[CertificateFiles] = Field(default_factory=list, description="more certificates, chosen by SNI")
    acme: AcmeConfig | None = None
    redirect_http: bool = False
    hsts: Duration | None = Field(None, description="Strict-Transport-Security max-age on HTTPS responses (e.g. 365d)")

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        _addr(v, "tls.listen")
        return v

    @model_validator(mode="after")
    def _source(self) -> "TlsConfig":
        if (self.cert is None) != (self.key is None):
            missing = "key" if self.key is None else "cert"
            raise ValueError(f"tls.{missing}: required with tls.{'cert' if missing == 'key' else 'key'}")
        if self.cert is None and not self.certificates and self.acme is None:
            raise ValueError("tls.cert: name a certificate (cert and key, certificates) or acme")
        return self
