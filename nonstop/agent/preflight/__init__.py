"""Preflight: what would keep ``up`` or ``deploy`` from working, found before anything starts, stops or is recorded.

One place for every such check, shared by ``nonstop check`` (all of them,
changing nothing), ``up`` (before the proxy or an instance starts) and
``deploy`` (before an instance is stopped or a deployment recorded). A check
is a function of an ``Env`` (the config, the line of each setting, what the
state dir already runs) returning ``Problem``s, each naming its field and
file; ``refuse`` turns them into one ``ConfigProblems`` (exit 2) listing all.

The checks are chosen by what the config runs, so a new runtime or router adds
its own in one table: ``BY_RUNTIME`` (containers: the engine answers;
kubernetes: the cluster answers, its namespace exists, the verbs nonstop
uses are allowed, the gateway is there) and ``BY_ROUTER``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

from nonstop.agent.preflight import commands, containers, kubernetes, ports, routers, statedir, tls
from nonstop.agent.preflight.base import Check, Env
from nonstop.agent.preflight.deploy import DeployRequest
from nonstop.agent.preflight.deploy import problems as _deploy_problems
from nonstop.config import Config
from nonstop.configfile import ConfigProblems, Problem

__all__ = ["Problem", "Findings", "Env", "DeployRequest", "startup", "deploy", "refuse", "BY_RUNTIME", "BY_ROUTER", "COMMON"]

# (what it checks, as `nonstop check` lists it; the check)
COMMON: tuple[tuple[str, Check], ...] = (
    ("state_dir has room", lambda env: statedir.room(env)),
    ("build", commands.build),
    ("health.command", commands.health_command),
    ("strategy.smoke", commands.smoke),
    ("dashboard.listen", ports.dashboard),
    ("ports are distinct", ports.distinct),
    ("tls", tls.certificates),
)
BY_RUNTIME: dict[str, tuple[tuple[str, Check], ...]] = {
    "process": (("run.command", commands.run_command), ("run.workdir", commands.run_workdir), ("run.ports", ports.run_ports)),
    "docker": (("run.ports", containers.run_ports), ("the container engine", containers.engine)),
    "podman": (("run.ports", containers.run_ports), ("the container engine", containers.engine)),
    "kubernetes": (("the cluster (reachable, namespace, permissions, gateway)", kubernetes.cluster),),
}
BY_ROUTER: dict[str, tuple[tuple[str, Check], ...]] = {
    "embedded": (("listen", ports.listen),),
    "nginx": (("listen", ports.listen), ("router nginx", routers.nginx)),
    "haproxy": (("listen", ports.listen), ("router haproxy", routers.haproxy)),
}


@dataclass
class Findings:
    """The outcome of a preflight: what was checked, and every problem found."""

    checked: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def checks_for(cfg: Config) -> list[tuple[str, Check]]:
    out = list(BY_RUNTIME.get(cfg.run.runtime, ()))
    if cfg.run.runtime != "kubernetes":  # the cluster's Service or Gateway is the front door there
        out += BY_ROUTER.get(cfg.router.type, ())
    return out + list(COMMON)


async def startup(cfg: Config, env: Env | None = None) -> Findings:
    """Everything ``up`` needs, checked without changing anything."""
    env = env or Env.of(cfg)
    found = Findings()
    for label, check in checks_for(cfg):
        res = check(env)
        if inspect.isawaitable(res):
            res = await res
        found.checked.append(label)
        found.problems.extend(res)
    return found


async def deploy(cfg: Config, releases, req: DeployRequest, live, runtime=None) -> list[Problem]:
    """Every reason this deploy cannot work (``releases``: the agent's ``Releases``; ``live``: the live release;
    ``runtime``: the fleet's, for images)."""
    return await _deploy_problems(Env.of(cfg), releases, req, live, runtime)


def refuse(problems: list[Problem] | Findings) -> None:
    """Raise ``ConfigProblems`` listing every problem (exit 2); nothing when there is none."""
    found = problems.problems if isinstance(problems, Findings) else problems
    if found:
        raise ConfigProblems(found)
