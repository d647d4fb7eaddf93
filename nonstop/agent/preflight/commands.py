"""The programs the config names exist and can run; what kind of artifact ``run.command`` can take.

A program is looked up the way it will be started: a name without ``/`` on
the ``PATH`` its process gets (``run.env`` may set one), a path relative to
its working directory. With ``shell: true`` the command is a script for
``/bin/sh``: only the shell is checked (a script's first word may be ``cd``
or a variable). A program that is the artifact itself (``{artifact}``) is
checked at deploy, when there is one.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from nonstop.agent.preflight.base import Env, Problem
from nonstop.config import Command, RunConfig, split_command

__all__ = ["run_command", "run_workdir", "health_command", "smoke", "build", "artifact_kind", "uses_artifact", "program_problem"]


def program_problem(argv0: str, cwd: Path, path_env: str | None) -> str | None:
    """Why ``argv0`` could not be started from ``cwd`` with ``PATH=path_env``; None when it can."""
    if "/" in argv0:
        p = Path(argv0) if os.path.isabs(argv0) else cwd / argv0
        if not p.exists():
            return f"{argv0!r} does not exist" + ("" if os.path.isabs(argv0) else f" (in {cwd})")
        if p.is_dir():
            return f"{argv0!r} is a folder, not a program"
        if not os.access(p, os.X_OK):
            return f"{argv0!r} is not executable (chmod +x it)"
        return None
    path = path_env if path_env is not None else os.environ.get("PATH", os.defpath)
    if shutil.which(argv0, path=path) is None:
        return f"the program {argv0!r} is not on PATH" + (f" (run.env sets PATH={path})" if path_env is not None else "")
    return None


_PLACEHOLDER = re.compile(r"(?<![{$])\{([a-z_]+)\}(?!\})")


def _argv0(cmd: Command, shell: bool, values: dict[str, str]) -> str | None:
    """The program of a configured command, its placeholders filled in; None when it is not known before it runs."""
    argv = split_command(cmd, shell=shell and not isinstance(cmd, list))
    if not argv:
        return None
    first = argv[0]
    names = set(_PLACEHOLDER.findall(first))
    if names - set(values):
        return None  # the program is the artifact, or a value known only then
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], first)


def _cwd(env: Env) -> Path:
    run = env.cfg.run
    return env.cfg.path(run.workdir) if run.workdir else env.cfg.base_dir


def run_command(env: Env) -> list[Problem]:
    """``run.command``'s program."""
    run = env.cfg.run
    if run.command is None:
        return []
    argv0 = _argv0(run.command, run.shell, {"state_dir": str(env.cfg.state_path)})
    if argv0 is None:
        return []
    cwd = _cwd(env)
    if not cwd.is_dir():
        return []  # run_workdir says so
    why = program_problem(argv0, cwd, run.env.get("PATH"))
    return [env.problem("run.command", f"{why}: no instance could start")] if why else []


def run_workdir(env: Env) -> list[Problem]:
    run = env.cfg.run
    if run.workdir and not _cwd(env).is_dir():
        return [env.problem("run.workdir", f"{_cwd(env)} is not a folder")]
    return []


def health_command(env: Env) -> list[Problem]:
    hc = env.cfg.health
    if hc.type != "command" or not hc.command:
        return []
    argv0 = _argv0(hc.command, hc.shell, {})
    why = program_problem(argv0, Path.cwd(), None) if argv0 and (os.path.isabs(argv0) or "/" not in argv0) else None
    return [env.problem("health.command", why)] if why else []


def smoke(env: Env) -> list[Problem]:
    s = env.cfg.strategy
    cmd = getattr(s, "smoke", None)
    if not cmd:
        return []
    argv0 = _argv0(cmd, getattr(s, "shell", False), {"state_dir": str(env.cfg.state_path)})
    why = program_problem(argv0, env.cfg.base_dir, None) if argv0 else None
    return [env.problem("strategy.smoke", why)] if why else []


def build(env: Env) -> list[Problem]:
    """``build.workdir`` exists; each build command's program is on PATH (a relative one, like ``./gradlew``,
    may come from an earlier command such as ``git pull``: not checked)."""
    b = env.cfg.build
    if b is None:
        return []
    workdir = (env.cfg.base_dir / b.workdir).resolve()
    if not workdir.is_dir():
        return [env.problem("build.workdir", f"{workdir} is not a folder")]
    out = []
    for i, cmd in enumerate(b.commands):
        argv0 = _argv0(cmd, b.shell, {})
        if argv0 is None or ("/" in argv0 and not os.path.isabs(argv0)):
            continue
        why = program_problem(argv0, workdir, None)
        if why:
            out.append(env.problem(f"build.commands[{i}]", why))
    return out


# -- what the artifact must be ---------------------------------------------------------


def uses_artifact(run: RunConfig) -> bool:
    """True when instances need an artifact: ``{artifact}`` in ``run.command`` or in a ``run.env`` value."""
    texts = [run.command if isinstance(run.command, str) else " ".join(run.command or [])]
    texts += list(run.env.values())
    return any("{artifact}" in t for t in texts)


_JAR = re.compile(r"(?:^|\s)-jar\s+['\"]?\{artifact\}(?:['\"\s]|$)")


def artifact_kind(run: RunConfig) -> tuple[str, str] | None:
    """What ``run.command`` does with ``{artifact}`` that only a file, or only a folder, can be:
    ``("file", why)`` when it runs it (``{artifact} …``) or hands it to ``java -jar``; ``("folder", why)`` when it
    names a path inside it (``{artifact}/bin/start``); None when either works (``python {artifact}``: a folder
    with ``__main__.py`` runs too)."""
    if run.command is None:
        return None
    if run.shell and isinstance(run.command, str):
        script = run.command
        if re.search(r"\{artifact\}/", script):
            return "folder", "it names a path inside {artifact}"
        if _JAR.search(script):
            return "file", "java -jar {artifact} needs a jar file"
        if script.lstrip().startswith("{artifact}"):
            return "file", "it runs {artifact} as the program"
        return None
    argv = split_command(run.command, shell=False)
    for i, arg in enumerate(argv):
        if "{artifact}/" in arg:
            return "folder", "it names a path inside {artifact}"
        if arg == "{artifact}":
            if i == 0:
                return "file", "it runs {artifact} as the program"
            if argv[i - 1] == "-jar":
                return "file", "java -jar {artifact} needs a jar file"
    return None
