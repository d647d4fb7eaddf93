"""Where the agent of this app lives, found without validating the whole config.

Every verb but ``up`` and ``init`` talks to a running agent, which validated
the config when it started and validates it again at each deploy; the CLI
only needs the state dir, so it reads just that (fast: no pydantic).
"""

from __future__ import annotations

import os
from pathlib import Path

from nonstop.errors import ConfigError

CONFIG_NAME = "nonstop.yml"


def find_config(explicit: str | None = None) -> Path:
    """``-c FILE``, else ``$NONSTOP_CONFIG``, else ``nonstop.yml`` here or in a parent folder."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("NONSTOP_CONFIG")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / CONFIG_NAME).exists():
            return d / CONFIG_NAME
    return here / CONFIG_NAME


def state_dir(config_path: Path) -> Path:
    """The ``state_dir`` the config names (default ``.nonstop``), relative to the config file."""
    import yaml

    shown = str(config_path)
    try:
        text = config_path.read_text()
    except FileNotFoundError:
        raise ConfigError("no such file (run `nonstop init` to write one)", file=shown) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", file=shown) from None
    try:
        data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"not valid YAML{where}: {getattr(e, 'problem', e)}", file=shown) from None
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping of settings at the top level", file=shown)
    sd = data.get("state_dir", ".nonstop")
    if not isinstance(sd, str) or not sd:
        raise ConfigError("expected a folder path", file=shown, field="state_dir")
    p = Path(os.path.expanduser(sd))
    return p if p.is_absolute() else config_path.resolve().parent / p
