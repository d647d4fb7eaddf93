"""The agent's one config object, as it is now.

The agent owns the config; its parts read ``LiveConfig.current`` when they act,
so a config read again before a deployment reaches all of them at once (no
copies to keep in step). Settings that shape running processes (the app's name,
the public address, the state dir, the router, the dashboard, TLS and trusted
proxies) take effect only after ``down`` and ``up``: a changed one is refused.
"""

from __future__ import annotations

from nonstop.config import Config
from nonstop.errors import ConfigError

__all__ = ["LiveConfig", "RESTART_ONLY"]

RESTART_ONLY = ("app", "listen", "state_dir", "router", "dashboard", "tls", "trusted_proxies")


class LiveConfig:
    """Owns the current ``Config``; ``reload`` reads ``nonstop.yml`` again."""

    def __init__(self, cfg: Config) -> None:
        self.current = cfg

    def reload(self) -> Config:
        """Read the file again (before a deploy): a broken file is a ConfigError and changes nothing."""
        from nonstop import config as configmod

        cur = self.current
        new = configmod.load(cur.source) if cur.source else cur
        for name in RESTART_ONLY:
            if getattr(new, name) != getattr(cur, name):
                raise ConfigError(
                    "changed since `nonstop up`; it takes effect after `nonstop down` and `nonstop up`",
                    file=cur.source,
                    field=name,
                )
        self.current = new
        return new
