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


def state_dir(config_path: Path, *, strict: bool = True) -> Path:
    """The ``state_dir`` the config names (default ``.nonstop``), relative to the config file.

    ``strict=False`` (the incident verbs: rollback, abort, promote, pause, resume) reads the
    file as YAML only when it could name a state dir at all. Otherwise the default is
    certain, so the YAML parser (15-30 ms to import) is not loaded, and a config file
    broken mid-edit does not stand between an operator and a rollback: the agent runs
    on the config it validated."""
    text = None
    if not strict:
        try:
            text = config_path.read_text()
        except OSError:
            pass  # configfile.read names the problem
    if text is not None and not _may_set_state_dir(text):
        sd = ".nonstop"
    else:
        sd = configfile.read(config_path).get("state_dir", ".nonstop")
    if not isinstance(sd, str) or not sd:
        raise ConfigError("expected a folder path", file=str(config_path), field="state_dir")
    p = Path(os.path.expanduser(sd))
    return p if p.is_absolute() else config_path.resolve().parent / p


def _may_set_state_dir(text: str) -> bool:
    """False only when no YAML reading of ``text`` can have a ``state_dir`` key: the name appears on
    no line but comment lines (a line whose first character is ``#`` is never a key), and there is
    no backslash (no escape sequence can spell it)."""
    if "\\" in text:
        return True
    return any("state_dir" in line for line in text.splitlines() if not line.lstrip().startswith("#"))
