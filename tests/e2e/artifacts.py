"""Artifacts for end-to-end tests: tiny launcher scripts standing in for a build of the app.

A deploy ships an artifact; here it is a Python file that runs the test app
(``nonstop.testing.app``) with the behaviour baked in — a healthy build, one
whose health never turns UP, a slow-booting one, a faulty one. nonstop copies
it into ``releases/<id>/`` like it would a jar, and runs it with
``python {artifact} --port {port} --version {version}``.
"""

from __future__ import annotations

import sys
from pathlib import Path

RUN_COMMAND = [sys.executable, "{artifact}", "--port", "{port}", "--version", "{version}"]

_TEMPLATE = """\
import runpy, sys
sys.argv = [sys.argv[0], *sys.argv[1:], *{extra!r}]
runpy.run_module("nonstop.testing.app", run_name="__main__", alter_sys=True)
"""


def make_artifact(dir: Path, name: str, *extra: str) -> Path:
    """Write ``<dir>/<name>.py`` running the test app with ``extra`` arguments."""
    dir.mkdir(parents=True, exist_ok=True)
    p = dir / f"{name}.py"
    p.write_text(_TEMPLATE.format(extra=list(extra)))
    return p


def good_and_faulty(dir: Path) -> dict[str, Path]:
    """The two artifacts the analysis tests deploy: one that boots in 0.3 s and serves, and one that
    answers a third of its requests with a 5xx."""
    return {
        "good": make_artifact(dir, "good", "--boot-seconds", "0.3"),
        "faulty": make_artifact(dir, "faulty", "--boot-seconds", "0.3", "--fail-rate", "0.33"),
    }
