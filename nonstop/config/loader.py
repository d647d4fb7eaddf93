"""Reading ``nonstop.yml`` into a ``Config``: pydantic's errors turned into ``ConfigProblems``, each naming the
setting as the user wrote it (``strategy.steps[1].weight``), the file and the line."""

from __future__ import annotations

import os
import re

from pydantic import ValidationError

from nonstop import configfile
from nonstop.config.model import Config
from nonstop.configfile import ConfigProblems, Problem
from nonstop.names import ROUTERS, STRATEGIES

CONFIG_NAME = configfile.CONFIG_NAME


_TAGS = frozenset(STRATEGIES) | frozenset(ROUTERS)  # discriminator tags pydantic inserts in locations
_TYPE_WORDS = {
    "string_type": "a string", "list_type": "a list", "int_type": "a whole number", "int_parsing": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false", "bool_parsing": "true or false",
    "dict_type": "a mapping", "model_type": "a mapping", "none_required": "null",
}


def _loc_parts(loc: tuple) -> tuple:
    """A pydantic error location as the user wrote it: without the union tags and member types pydantic inserts."""
    out = []
    for part in loc:
        if isinstance(part, str) and (part in _TAGS or part.startswith("function-") or "[" in part
                                      or part in ("str", "int", "float", "bool", "dict", "list", "none")):
            continue  # a discriminator tag or a union member's type: the user never wrote it
        out.append(part)
    return tuple(out)


def _field_path(loc: tuple) -> str:
    out = ""
    for part in _loc_parts(loc):
        out += f"[{part}]" if isinstance(part, int) else ("." if out else "") + str(part)
    return out


def load(path: str | os.PathLike | None = None) -> Config:
    """Read and validate ``nonstop.yml``. Raises ``ConfigError`` (``ConfigProblems``: every problem, each with
    its field and line) and never exits."""
    p = configfile.find(path)
    data, lines = configfile.read_located(p)
    return from_dict(data, source=str(p.resolve()), shown=str(p), lines=lines)


def from_dict(
    data: dict, *, source: str | None = None, shown: str | None = None, lines: configfile.Lines | None = None
) -> Config:
    """Validate ``data``; every problem is reported at once (``ConfigProblems``), each naming its field and, when
    ``lines`` says where the setting is written, its line."""
    try:
        return Config.model_validate({**data, "source": source})
    except ValidationError as e:
        raise ConfigProblems(_problems(e, shown or source, lines)) from None


def _problems(e: ValidationError, file: str | None, lines: configfile.Lines | None) -> list[Problem]:
    by_field: dict[str, list[dict]] = {}
    for err in e.errors():
        by_field.setdefault(_field_path(tuple(err["loc"])) or "(top level)", []).append(err)
    problems = []
    for field, errs in by_field.items():
        err = errs[0]
        msg = err["msg"]
        for prefix in ("Value error, ", "Assertion failed, "):
            if msg.startswith(prefix):
                msg = msg[len(prefix):]
        if err["type"] == "extra_forbidden":
            msg = "unknown setting"
        elif err["type"] == "missing":
            msg = "required setting is missing"
        elif err["type"] == "union_tag_invalid":
            ctx = err.get("ctx", {})
            msg = f"unknown type {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
            field = (field + ".type").lstrip(".") if field != "(top level)" else "type"
        elif len(errs) > 1 and all(x["type"] in _TYPE_WORDS for x in errs):
            # one value against each member of a union (a command: a string or a list)
            wanted = " or ".join(dict.fromkeys(_TYPE_WORDS[x["type"]] for x in errs))
            msg = f"expected {wanted}; got {err.get('input')!r}"
        # Cross-field errors name their own field in the message ("run.ports: ...").
        m = re.match(r"^([a-z_]+(?:\.[a-z_]+|\[\d+\])*): (.*)$", msg, re.S)
        if m:
            field, msg = m.group(1), m.group(2)
        path = configfile.field_path(field) if field != "(top level)" else ()
        problems.append(Problem(field, msg, file, configfile.line_of(lines, path)))
    return sorted(problems, key=lambda p: (p.line is None, p.line or 0))
