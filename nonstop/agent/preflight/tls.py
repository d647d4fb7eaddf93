"""HTTPS: every certificate file named loads and matches its key and dates; ACME's CA bundle is there.

What ``certs.load_pair`` refuses is exit 2 naming the field (``tls.cert``, ``tls.key``,
``tls.certificates[1].cert``, …), before any proxy starts: never a half-started proxy.
"""

from __future__ import annotations

import time

from nonstop.agent.preflight.base import Env, Problem

__all__ = ["certificates"]


def certificates(env: Env) -> list[Problem]:
    t = env.cfg.tls
    if t is None:
        return []
    from nonstop.errors import TlsConfigError
    from nonstop.proxy.certs import CertSource, load_pair

    cfg = env.cfg
    pairs = ([("tls", t.cert, t.key)] if t.cert else []) + [
        (f"tls.certificates[{i}]", c.cert, c.key) for i, c in enumerate(t.certificates)
    ]
    out = []
    now = time.time()
    for field, cert, key in pairs:
        try:
            load_pair(CertSource(field, str(cfg.path(cert)), str(cfg.path(key))), now)
        except TlsConfigError as e:
            name = e.field or field
            msg = e.message[len(name) + 2:] if e.message.startswith(f"{name}: ") else e.message
            out.append(env.problem(name, msg))
    if t.acme is not None and t.acme.ca_bundle and not cfg.path(t.acme.ca_bundle).is_file():
        out.append(env.problem("tls.acme.ca_bundle", f"no such file: {cfg.path(t.acme.ca_bundle)}"))
    return out
