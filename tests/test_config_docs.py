"""docs/config.md cannot drift from the config model: every setting is documented, nothing documented is unknown."""

from __future__ import annotations

import re
import types
import typing
from pathlib import Path

from pydantic import BaseModel

from nonstop import config

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"


def setting_paths() -> set[str]:
    """Every setting's path as a user writes it (``strategy.analysis.watch``, ``notify[].url``)."""
    out: set[str] = set()

    def models(t) -> list[tuple[type[BaseModel], bool]]:
        origin = typing.get_origin(t)
        if origin in (typing.Union, types.UnionType, typing.Annotated):
            return [m for a in typing.get_args(t) for m in models(a)]
        if origin is list:
            return [(m, True) for m, _ in models(typing.get_args(t)[0])]
        if origin in (dict, tuple):
            return []
        if isinstance(t, type) and issubclass(t, BaseModel):
            return [(t, False)]
        return []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, f in model.model_fields.items():
            if f.exclude:
                continue
            path = prefix + name
            out.add(path)
            for sub, listed in models(f.annotation):
                walk(sub, path + ("[]." if listed else "."))

    walk(config.Config, "")
    return out


def documented() -> set[str]:
    roots = {p.split(".")[0].split("[")[0] for p in setting_paths()}
    text = DOC.read_text()
    found = set()
    for row in re.findall(r"^\| `([^`]+)` \|", text, re.M):  # the first cell of each table row
        if row.split(".")[0].split("[")[0] in roots:
            found.add(row)
    return found


def test_every_setting_is_documented():
    missing = sorted(setting_paths() - documented())
    assert not missing, f"docs/config.md does not document: {missing}"


def test_nothing_documented_is_unknown():
    unknown = sorted(documented() - setting_paths())
    assert not unknown, f"docs/config.md documents settings the model does not have: {unknown}"
