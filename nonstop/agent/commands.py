"""Configured commands, filled in: ``{port}``, ``{artifact}``, … placeholders, never a shell unless asked.

``render`` is how every command nonstop runs from the config becomes an argv:
``run.command``, container ``run.args``, health and smoke commands, hooks.
"""

from __future__ import annotations

import re
import shlex
import signal

from nonstop.config import PLACEHOLDERS, Command, split_command
from nonstop.errors import ConfigError

__all__ = ["PLACEHOLDERS", "BUILD_PLACEHOLDERS", "render", "render_build", "fill_build", "signal_number"]

BUILD_PLACEHOLDERS = ("version", "release", "state_dir")
"""What a ``build.commands`` entry may name: the release being built (``docker build -t app:{version} .``)."""


# `{name}` is a placeholder; `{{` / `}}` are literal braces; `${name}` is left
# alone (a shell variable, meaningful with shell: true).
_TOKEN = re.compile(r"\{\{|\}\}|\$\{[^}]*\}|\{([^{}]*)\}")


def _substitute(arg: str, values: dict[str, str], quote: bool) -> str:
    def one(m: re.Match) -> str:
        tok = m.group(0)
        if tok == "{{":
            return "{"
        if tok == "}}":
            return "}"
        if tok.startswith("$"):
            return tok
        name = m.group(1)
        if name in values:
            v = str(values[name])
            return shlex.quote(v) if quote else v
        if name in PLACEHOLDERS:
            raise ConfigError(f"placeholder {{{name}}} has no value here", field="command")
        known = ", ".join("{" + k + "}" for k in sorted(set(PLACEHOLDERS) | set(values)))
        raise ConfigError(f"unknown placeholder {{{name}}} in command; known: {known}", field="command")

    return _TOKEN.sub(one, arg)


def render(cmd: Command, values: dict[str, str], *, shell: bool) -> list[str]:
    """The argv of a configured command with its placeholders filled in.

    The command is split first (``config.split_command``) and each argument
    substituted after, so a value with spaces stays one argument. With
    ``shell`` the command is one ``sh -c`` script and values are shell-quoted
    into it. An unknown ``{x}`` raises ``ConfigError`` naming it.
    """
    argv = split_command(cmd, shell=shell)
    if shell and not isinstance(cmd, list):
        # ["/bin/sh", "-c", script]: only the script carries placeholders.
        return argv[:2] + [_substitute(argv[2], values, quote=True)]
    return [_substitute(a, values, quote=False) for a in argv]


_BUILD_TOKEN = re.compile(r"(?<!\{)\{(" + "|".join(BUILD_PLACEHOLDERS) + r")\}(?!\})")


def fill_build(text: str, values: dict[str, str], *, quote: bool = False) -> str:
    """``text`` with ``{version}``, ``{release}`` and ``{state_dir}`` filled in, every other brace as written."""
    return _BUILD_TOKEN.sub(lambda m: shlex.quote(values[m.group(1)]) if quote else values[m.group(1)], text)


def render_build(cmd: Command, values: dict[str, str], *, shell: bool) -> list[str]:
    """A ``build.commands`` entry's argv with the ``BUILD_PLACEHOLDERS`` filled in.

    Every other brace is left as written: build commands were run verbatim before they took
    placeholders, and commonly hold braces of their own (``docker inspect --format '{{.Id}}'``,
    ``find … -exec … {} +``)."""
    argv = split_command(cmd, shell=shell)
    if shell and not isinstance(cmd, list):
        return argv[:2] + [fill_build(argv[2], values, quote=True)]
    return [fill_build(a, values) for a in argv]


def signal_number(name: str | int) -> int:
    """``"SIGTERM"``, ``"TERM"`` or ``15`` → 15."""
    if isinstance(name, int):
        return name
    n = name.upper()
    if not n.startswith("SIG"):
        n = "SIG" + n
    sig = getattr(signal, n, None)
    if not isinstance(sig, signal.Signals):
        raise ConfigError(f"unknown signal {name!r}", field="run.stop_signal")
    return int(sig)
