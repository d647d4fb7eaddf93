"""Where the agent of this app lives, found without validating the whole config.

Every verb but ``up`` and ``init`` talks to a running agent, which validated
the config when it started and validates it again at each deploy; the CLI
only needs the state dir, so it reads just that (fast: no pydantic).
"""

from __future__ import annotations

import os
from pathlib import Path

from nonstop import configfile
from nonstop.errors import ConfigError

def state_dir(config_path: Path) -> Path:
    """The ``state_dir`` the config names (default ``.nonstop``), relative to the config file."""
    sd = configfile.read(config_path).get("state_dir", ".nonstop")
    if not isinstance(sd, str) or not sd:
        raise ConfigError("expected a folder path", file=str(config_path), field="state_dir")
    p = Path(os.path.expanduser(sd))
    return p if p.is_absolute() else config_path.resolve().parent / p
