"""Finding ``nonstop.yml`` and reading it as plain data, without validating it.

Cheap on purpose (no pydantic): the CLI reads the state dir from it on every
call; ``nonstop.config.load`` validates what this returns.
"""

from __future__ import annotations

import os
from pathlib import Path

from nonstop.errors import ConfigError

CONFIG_NAME = "nonstop.yml"


def find(explicit: str | os.PathLike | None = None) -> Path:
    """``explicit`` (``-c FILE``), else ``$NONSTOP_CONFIG``, else ``nonstop.yml`` here or in a parent folder."""
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


def read(path: Path) -> dict:
    """The file's top-level mapping. ``ConfigError`` (naming the file, and the line for YAML errors) otherwise."""
    import yaml

    shown = str(path)
    try:
        text = path.read_text()
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
    return data
