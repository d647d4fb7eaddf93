"""Builds the embedded proxy's hot path with Cython (the rest of the project is plain Python).

Each module of ``nonstop/proxy`` with a ``.pxd`` beside it is ordinary Python,
valid and importable as it is; the ``.pxd`` declares its classes as C types
with typed fields and its hottest methods as ``cpdef``, and Cython compiles
the module into an extension imported in its place (``nonstop.proxy.build``
reports which). Without a C compiler, or with NONSTOP_NO_EXTENSIONS=1, the
build skips them and the same modules run as Python: slower, not different.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent


class OptionalBuildExt(build_ext):
    """Compiles on every core; a failed compile is a warning, not a failed install."""

    def finalize_options(self) -> None:
        super().finalize_options()
        if not self.parallel:
            self.parallel = os.cpu_count() or 1

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # no compiler, no Python headers
            print(f"nonstop: the proxy's hot path is not compiled ({e}); it runs as Python", file=sys.stderr)

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:
            print(f"nonstop: {ext.name} is not compiled ({e}); it runs as Python", file=sys.stderr)


def extensions() -> list:
    if os.environ.get("NONSTOP_NO_EXTENSIONS"):
        return []
    from Cython.Build import cythonize

    sources = sorted(str(p.with_suffix(".py").relative_to(HERE)) for p in (HERE / "nonstop/proxy").glob("*.pxd"))
    return cythonize(sources, compiler_directives={"language_level": 3, "binding": False}, quiet=True)


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
