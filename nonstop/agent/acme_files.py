"""Where ACME keeps its files in the state dir, and how they are written (atomically, private).

::

    <state>/tls/                       0755
      acme/account.json                0600 (dir 0700) the account key and registration
      certs/<first-domain>/            0700
        fullchain.pem  privkey.pem     0600 what the proxy serves
        renewal.json                   0600 failures and the CA's last error, kept across restarts
      challenges/<token>               0644 (dir 0755) HTTP-01 key authorizations the proxy serves

A file is written beside its final name and renamed over it, so a reader
sees the old file or the new one, never half of either; the certificate's
key is renamed in first and the chain second (the proxy reads a pair again
once both have settled).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from nonstop.files import write_atomic

__all__ = ["AcmePaths", "PRIVATE", "PUBLIC", "write_atomic", "read_json"]

PRIVATE = 0o600  # keys, the account, the renewal record: root only
PUBLIC = 0o644  # challenge answers: anyone may read them (the CA does, through the proxy)


@dataclass(frozen=True)
class AcmePaths:
    """The ACME files of one certificate (named by its first domain) in one state dir."""

    state_dir: Path
    name: str

    @property
    def root(self) -> Path:
        return self.state_dir / "tls"

    @property
    def account(self) -> Path:
        return self.root / "acme" / "account.json"

    @property
    def cert_dir(self) -> Path:
        return self.root / "certs" / self.name

    @property
    def fullchain(self) -> Path:
        return self.cert_dir / "fullchain.pem"

    @property
    def privkey(self) -> Path:
        return self.cert_dir / "privkey.pem"

    @property
    def renewal(self) -> Path:
        return self.cert_dir / "renewal.json"

    @property
    def challenges(self) -> Path:
        return self.root / "challenges"

    def make_dirs(self) -> None:
        """Create the tree with its modes (whatever the umask)."""
        for path, mode in ((self.root, 0o755), (self.account.parent, 0o700), (self.root / "certs", 0o700),
                           (self.cert_dir, 0o700), (self.challenges, 0o755)):
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, mode)

    def challenge(self, token: str) -> Path:
        if not token or "/" in token or token.startswith("."):
            raise ValueError(f"not an ACME token: {token!r}")
        return self.challenges / token


def read_json(path: Path) -> dict | None:
    """The JSON object at ``path``, or ``None`` when it is missing or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
