"""``nonstop manifests``: the objects a kubernetes deploy applies, printed for review or GitOps (offline)."""

from __future__ import annotations

import click

from nonstop.cli.context import Ctx
from nonstop.cli.options import json_option, pass_ctx
from nonstop.errors import UsageError


@click.command()
@click.option("--version", "version", default=None, help="the release's version (default: a timestamp + git sha, as deploy names it)")
@click.option("--image", default=None, metavar="IMG", help="the image to run (default: run.image with {version} filled in)")
@click.option("--strategy", type=click.Choice(["recreate", "blue-green", "canary", "rolling"]), default=None, help="override strategy.type")
@json_option
@pass_ctx
def manifests(c: Ctx, version: str | None, image: str | None, strategy: str | None) -> None:
    """Print the Deployments, Services, PodDisruptionBudgets and HTTPRoute a first deploy of VERSION leaves
    in the cluster (multi-document YAML; --json: a v1 List). Needs no cluster."""
    cfg = c.cfg
    if cfg.run.runtime != "kubernetes":
        raise UsageError(f"nonstop manifests: only with run.runtime: kubernetes (this app runs on {cfg.run.runtime})")
    from nonstop.agent.kubernetes import manifests as mf
    from nonstop.agent.kubernetes.shapes import KRelease, first_deploy_shape, image_for
    from nonstop.agent.releases import default_version
    from nonstop.agent.store import validate_version

    workdir = cfg.path(cfg.build.workdir) if cfg.build else cfg.base_dir
    version = validate_version(version) if version else default_version(workdir)
    rel = KRelease(version, version, image_for(cfg, version, version, image))
    objs = mf.render(cfg, first_deploy_shape(cfg, rel, strategy))
    if c.json:
        return c.print_json({"apiVersion": "v1", "kind": "List", "items": objs})
    click.echo(mf.to_yaml(objs), nl=False)


COMMANDS = [manifests]
