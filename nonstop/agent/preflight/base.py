"""What every check is given (``Env``) and what it returns (``Problem``s)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from nonstop.agent.preflight.statedir import Owned
from nonstop.config import Config
from nonstop.configfile import Lines, Problem, field_path, line_of

__all__ = ["Env", "Check", "Problem"]


@dataclass
class Env:
    """One preflight's view: the config, where each setting is written (for lines), what the state dir runs."""

    cfg: Config
    lines: Lines = field(default_factory=dict)
    _owned: Owned | None = None

    @property
    def owned(self) -> Owned:
        """Read when a check first asks (a deploy's checks never do)."""
        if self._owned is None:
            self._owned = Owned.read(self.cfg.state_path)
        return self._owned

    @classmethod
    def of(cls, cfg: Config) -> "Env":
        from nonstop import configfile
        from nonstop.errors import ConfigError

        lines: Lines = {}
        if cfg.source:
            try:
                lines = configfile.read_located(Path(cfg.source))[1]
            except ConfigError:
                pass  # edited since it was loaded: problems then carry no line
        return cls(cfg, lines)

    @property
    def file(self) -> str | None:
        return self.cfg.source

    def problem(self, field: str, message: str) -> Problem:
        """A problem with a setting of the config file (its line when the setting is written there)."""
        path = field_path(field) if not field.startswith("-") else ()
        return Problem(field, message, self.file, line_of(self.lines, path) if path else None)


Check = Callable[[Env], "list[Problem] | Awaitable[list[Problem]]"]
