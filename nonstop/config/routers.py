"""The ``router`` block: one model per router (embedded, nginx, haproxy), told apart by ``type``; and what each
router, in each mode, can honour (checked at load, not mid-deploy)."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, model_validator

from nonstop.config.fields import Command, Duration, _Model
from nonstop.names import ROUTERS


class EmbeddedRouter(_Model):
    type: Literal["embedded"]
    connect_timeout: Duration = 2.0
    read_timeout: Duration = 60.0
    idle_timeout: Duration = 75.0
    max_body: int | None = Field(None, ge=0)
    workers: int = Field(1, ge=1, le=64)


class NginxRouter(_Model):
    type: Literal["nginx"]
    mode: Literal["managed", "external"] = "managed"
    binary: str = "nginx"
    upstream_file: str | None = None
    test_command: Command = "nginx -t"
    reload_command: Command = "nginx -s reload"
    access_log: str | None = None
    worker_shutdown_timeout: Duration = 30.0
    client_keepalive_timeout: Duration = Field(
        75.0, description="managed: keep-alive timeout for clients; 0 turns client keep-alive off (no reload drop, fewer req/s)"
    )

    @model_validator(mode="after")
    def _external(self) -> "NginxRouter":
        if self.mode == "external" and not self.upstream_file:
            raise ValueError("router.upstream_file: required with mode: external")
        return self


class HaproxyRouter(_Model):
    type: Literal["haproxy"]
    mode: Literal["managed", "external"] = "managed"
    binary: str = "haproxy"
    socket: str | None = None
    backend: str | None = None

    @model_validator(mode="after")
    def _external(self) -> "HaproxyRouter":
        if self.mode == "external" and not (self.socket and self.backend):
            raise ValueError("router.socket: router.socket and router.backend are required with mode: external")
        return self


Router = Annotated[Union[EmbeddedRouter, NginxRouter, HaproxyRouter], Field(discriminator="type")]


# What each router can do; config load refuses what a router cannot honour
# (DESIGN.md §6: "says so at config load, not mid-deploy").
ROUTER_CAPABILITIES: dict[str, frozenset[str]] = {
    "embedded": frozenset({"weights", "match", "sticky", "split_key", "stats", "drain", "hold"}),
    "nginx": frozenset({"weights", "match", "sticky", "split_key", "stats", "drain"}),
    "haproxy": frozenset({"weights", "match", "sticky", "split_key", "stats", "drain"}),
}


assert tuple(ROUTER_CAPABILITIES) == ROUTERS, "nonstop.names.ROUTERS and the router capabilities disagree"


def router_capabilities(r: "EmbeddedRouter | NginxRouter | HaproxyRouter") -> frozenset[str]:
    """What this router, in this mode, can do."""
    caps = ROUTER_CAPABILITIES[r.type]
    if r.type == "haproxy" and r.mode == "external":
        caps -= {"match", "sticky", "split_key"}  # only server weights in the user's backend
    if r.type == "nginx" and r.mode == "external" and not r.access_log:
        caps -= {"stats"}  # nonstop reads stats from the JSON access log it is pointed at
    return caps
