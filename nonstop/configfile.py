"""Finding ``nonstop.yml``, reading it as plain data (with the line of every setting), and reporting problems.

Cheap on purpose (no pydantic): the CLI reads the state dir from it on every
call; ``nonstop.config.load`` validates what this returns. A problem with the
file, or with what it names, is a ``Problem`` (field, message, file, line);
``ConfigProblems`` carries all of them at once, so a user fixes a file in one
pass rather than one error per run.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from nonstop.errors import ConfigError, NonstopError

CONFIG_NAME = "nonstop.yml"

Lines = dict[tuple, int]
"""Where each setting is written: its key path (``("run", "ports")``, ``("notify", 0, "url")``) → 1-based line."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the config or with what it names: which setting (``field``, as written in the
    file: ``run.ports``, or a command-line option: ``--artifact``), in which file and on which line."""

    field: str
    message: str
    file: str | None = None
    line: int | None = None

    def __str__(self) -> str:
        where = self.file or ""
        if where and self.line:
            where += f":{self.line}"
        parts = [p for p in (where, self.field) if p]
        return ": ".join([*parts, self.message])

    def to_dict(self) -> dict:
        return asdict(self)


class ConfigProblems(ConfigError):
    """Every problem found in one pass (exit 2). ``field`` and ``file`` are the first one's; ``problems`` all."""

    def __init__(self, problems: list[Problem]) -> None:
        if not problems:
            raise ValueError("ConfigProblems needs at least one problem")
        self.problems = list(problems)
        first = self.problems[0]
        if len(self.problems) == 1:
            message = str(first)
        else:
            # a problem's own lines (a router's test output) stay indented under it
            message = f"{len(self.problems)} problems:\n" + "\n".join(
                "  " + str(p).replace("\n", "\n    ") for p in self.problems
            )
        NonstopError.__init__(
            self, message, detail={"file": first.file, "field": first.field, "problems": [p.to_dict() for p in self.problems]}
        )
        self.file = first.file
        self.field = first.field


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
    return read_located(path)[0]


def read_located(path: Path) -> tuple[dict, Lines]:
    """The file's top-level mapping and the line of each setting in it.

    Raises ``ConfigError`` naming the file (and the line) when it cannot be read
    or parsed, and ``ConfigProblems`` when a key is written twice in one mapping:
    YAML would silently keep the last one, and the user meant one of them."""
    import yaml

    shown = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError("no such file (run `nonstop init` to write one)", file=shown) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", file=shown) from None
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"not valid YAML{where}: {getattr(e, 'problem', e)}", file=shown) from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping of settings at the top level", file=shown)
    lines: Lines = {}
    twice: list[Problem] = []
    _walk(node, (), lines, twice, shown, depth=0)
    if twice:
        raise ConfigProblems(twice)
    return data, lines


def _walk(node, path: tuple, lines: Lines, twice: list[Problem], shown: str, depth: int) -> None:
    """Record the line of every key and item under ``node``; note keys written twice in one mapping."""
    import yaml

    if depth > 50:  # an alias loop (YAML allows them): deep enough for any config
        return
    if isinstance(node, yaml.MappingNode):
        seen: dict[object, int] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            key = key_node.value
            line = key_node.start_mark.line + 1
            if key in seen:
                field = ".".join(_show(p) for p in (*path, key)).replace(".[", "[")
                twice.append(
                    Problem(field, f"written twice (lines {seen[key]} and {line}); YAML would keep only the last one",
                            shown, line)
                )
                continue
            seen[key] = line
            lines[(*path, key)] = line
            _walk(value_node, (*path, key), lines, twice, shown, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*path, i)] = item.start_mark.line + 1
            _walk(item, (*path, i), lines, twice, shown, depth + 1)


def _show(part: object) -> str:
    return f"[{part}]" if isinstance(part, int) else str(part)


def line_of(lines: Lines | None, path: tuple) -> int | None:
    """The line of ``path``, else of its nearest written ancestor (a missing setting: its block's line)."""
    if not lines:
        return None
    for n in range(len(path), 0, -1):
        line = lines.get(tuple(path[:n]))
        if line is not None:
            return line
    return None


def field_path(field: str) -> tuple:
    """``"strategy.steps[1].weight"`` → ``("strategy", "steps", 1, "weight")``."""
    out: list[object] = []
    for part in field.split("."):
        name, _, rest = part.partition("[")
        if name:
            out.append(name)
        while rest:
            idx, _, rest = rest.partition("]")
            out.append(int(idx) if idx.isdigit() else idx)
            rest = rest.lstrip("[")
    return tuple(out)
