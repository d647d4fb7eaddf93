"""Which of the proxy's hot-path modules run compiled, and whether a compiled one is stale.

A module of this package with a ``.pxd`` beside it is compiled by Cython at
install time (setup.py); the extension is imported in place of the ``.py``.
Both are the same code: the ``.py`` is the source, the ``.pxd`` only declares
C types for its classes. ``NONSTOP_PURE_PYTHON=1`` makes a process import the
``.py`` files instead (the test command runs the proxy's tests that way too,
so the fallback of a machine without a C compiler stays tested).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PURE_ENV = "NONSTOP_PURE_PYTHON"


def compiled_modules() -> list[str]:
    """The modules setup.py compiles: those with a .pxd."""
    return sorted(p.stem for p in HERE.glob("*.pxd"))


def _extension(name: str) -> Path | None:
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        p = HERE / f"{name}{suffix}"
        if p.exists():
            return p
    return None


def report() -> dict[str, str]:
    """``{module: "compiled" | "python" | "stale"}`` for what this process imports (or would).

    "stale": the extension is older than its .py or .pxd, so it runs old code
    (a source checkout edited since its last build: run scripts/setup.sh).
    """
    out = {}
    for name in compiled_modules():
        mod = sys.modules.get(f"nonstop.proxy.{name}")
        ext = _extension(name)
        if os.environ.get(PURE_ENV) or ext is None or (mod is not None and mod.__file__.endswith(".py")):
            out[name] = "python"
            continue
        built = ext.stat().st_mtime
        newer = [s for s in (HERE / f"{name}.py", HERE / f"{name}.pxd") if s.stat().st_mtime > built]
        out[name] = "stale" if newer else "compiled"
    return out


def summary() -> str:
    """One line for logs and benchmark records."""
    r = report()
    kinds = set(r.values())
    if kinds == {"compiled"}:
        return "compiled (Cython)"
    if kinds == {"python"}:
        return "Python" + (f" ({PURE_ENV})" if os.environ.get(PURE_ENV) else " (not compiled)")
    return ", ".join(f"{k}: {v}" for k, v in r.items())


class _SourceFirst:
    """A meta-path finder that loads the compiled modules from their .py files."""

    def __init__(self, names: list[str]) -> None:
        self.names = {f"nonstop.proxy.{n}": HERE / f"{n}.py" for n in names}

    def find_spec(self, fullname, path=None, target=None):
        src = self.names.get(fullname)
        if src is None:
            return None
        return importlib.util.spec_from_file_location(fullname, src)


def use_python_sources() -> None:
    """Import the .py files even where an extension is built (before any of them is imported)."""
    if not any(isinstance(f, _SourceFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourceFirst(compiled_modules()))
