"""The router's binary and its own config test, on the config nonstop would generate, in a throwaway folder.

``managed``: the router object nonstop would run renders its config into a
temporary state dir (never the real one) and the real binary tests it
(``nginx -t``, ``haproxy -c``): neither binds a port nor signals a running
server. ``external``: the user's nginx answers its ``test_command`` and the
upstream file's folder is writable; the user's HAProxy answers on its
runtime socket and has the backend.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from nonstop.agent.preflight.base import Env, Problem
from nonstop.agent.preflight.commands import program_problem
from nonstop.agent.routers.base import RouteTable
from nonstop.config import split_command
from nonstop.errors import RouterError

__all__ = ["nginx", "haproxy"]

TEST_TIMEOUT = 30.0


def _run(argv: list[str]) -> tuple[int, str]:
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TEST_TIMEOUT)
    except subprocess.TimeoutExpired:
        return -1, f"did not finish within {TEST_TIMEOUT:g}s"
    except OSError as e:
        return -1, e.strerror or str(e)
    return p.returncode, (p.stdout + p.stderr).strip()


def _scratch() -> tempfile.TemporaryDirectory:
    d = tempfile.TemporaryDirectory(prefix="nonstop-check-")
    os.chmod(d.name, 0o755)  # as the real state dir: nginx workers (nobody) may need to traverse it
    return d


def _binary(env: Env, binary: str) -> list[Problem]:
    why = program_problem(binary, env.cfg.base_dir, None)
    return [env.problem("router.binary", f"{why} (router {env.cfg.router.type} runs it)")] if why else []


def nginx(env: Env) -> list[Problem]:
    rc = env.cfg.router
    if rc.mode == "external":
        return _nginx_external(env)
    out = _binary(env, rc.binary)
    if out:
        return out
    from nonstop.agent.routers.nginx import NginxRouter

    with _scratch() as tmp:
        router = NginxRouter(env.cfg, Path(tmp))
        Path(router.paths.temp).mkdir(parents=True)
        try:
            # The very files `up` would write (private to the router; no public render yet).
            router._write(router.upstream_file, router._upstreams_text(RouteTable()))
            router._write(Path(router.paths.conf), router._managed_conf())
        except (RouterError, OSError) as e:
            return [env.problem("router", f"cannot render the nginx config: {getattr(e, 'message', e)}")]
        code, text = _run(router._test_argv())
    if code != 0:
        return [env.problem("router", f"nginx -t refuses the config nonstop would run: {_clean(text, tmp)}")]
    return []


def _nginx_external(env: Env) -> list[Problem]:
    rc = env.cfg.router
    out = []
    upstream = env.cfg.path(rc.upstream_file or "")
    folder = upstream.parent
    if not folder.is_dir():
        out.append(env.problem("router.upstream_file", f"{folder} does not exist"))
    elif not os.access(folder, os.W_OK):
        out.append(env.problem("router.upstream_file", f"{folder} is not writable: nonstop writes {upstream.name} there"))
    for name in ("test_command", "reload_command"):
        argv = split_command(getattr(rc, name), shell=False)
        why = program_problem(argv[0], env.cfg.base_dir, None) if argv else "empty command"
        if why:
            out.append(env.problem(f"router.{name}", why))
    if out:
        return out
    code, text = _run(split_command(rc.test_command, shell=False))
    if code != 0:
        shown = rc.test_command if isinstance(rc.test_command, str) else " ".join(rc.test_command)
        out.append(env.problem("router.test_command", f"{shown} fails: {text[-800:]}"))
    return out


def haproxy(env: Env) -> list[Problem]:
    rc = env.cfg.router
    if rc.mode == "external":
        return _haproxy_external(env)
    out = _binary(env, rc.binary)
    if out:
        return out
    from nonstop.agent.routers.haproxy import HaproxyRouter
    from nonstop.agent.routers.haproxy_conf import initial_maps

    with _scratch() as tmp:
        router = HaproxyRouter(env.cfg, Path(tmp))
        router.dir.mkdir(parents=True)
        for name, text in initial_maps(None).items():
            Path(router.paths.map(name)).write_text(text)
        Path(router.paths.conf).write_text(router._config_text())  # what `up` writes (private to the router)
        code, text = _run([shutil.which(rc.binary) or rc.binary, "-c", "-f", router.paths.conf])
    if code != 0:
        return [env.problem("router", f"haproxy -c refuses the config nonstop would run: {_clean(text, tmp)}")]
    return []


async def _haproxy_external(env: Env) -> list[Problem]:
    from nonstop.agent.routers.haproxy_api import HaproxyApi

    rc = env.cfg.router
    api = HaproxyApi(str(env.cfg.path(rc.socket)))
    try:
        await api.servers(rc.backend)
    except RouterError as e:
        field = "router.backend" if "backend" in e.message else "router.socket"
        return [env.problem(field, e.message)]
    return []


def _clean(text: str, tmp: str) -> str:
    """A test's output without the throwaway folder's name (it means nothing to the user) nor HAProxy's
    ``[NOTICE]`` lines (its version and path)."""
    lines = [line for line in text.replace(tmp + "/", "").splitlines() if not line.startswith("[NOTICE]")]
    return "\n".join(lines).strip()[-1200:]
