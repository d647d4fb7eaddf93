"""Helpers for the kubernetes runtime's tests: configs shaped like the seed's, and offline schema validation.

``validate(obj)`` checks one generated object against the official schemas,
offline: built-in kinds with ``kubernetes-validate``'s strict schemas for
``K8S_VERSION`` (the same schema files and validator class its
``validate(..., strict=True)`` uses, compiled once per kind and cached,
because loading ``_definitions.json`` per call costs ~0.3 s), HTTPRoute with
the Gateway API v1.6.1 CRD schema (tests/kubernetes/schemas; standard
channel, or experimental for fields only that channel has), made strict the
way the API server's ``fieldValidation=Strict`` treats a structural schema
(unknown fields refused). The CRD's CEL rules (x-kubernetes-validations) are
not evaluated: jsonschema does not know them.
"""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import jsonschema

from nonstop import config as configmod

K8S_VERSION = "1.37.0"  # the newest schema set kubernetes-validate 1.37.0 ships
OLDEST_SLEEP = "1.30.0"  # the preStop sleep action is on by default from 1.30
SCHEMAS = Path(__file__).parent / "schemas"

SEED = {
    "app": "roomescape",
    "run": {
        "runtime": "kubernetes",
        "image": "registry.example/roomescape:{version}",
        "container_port": 8080,
        "instances": 3,
        "env": {"JAVA_OPTS": "-Xmx512m", "SPRING_PROFILES_ACTIVE": "prod"},
        "stop_timeout": "30s",
    },
    "health": {
        "path": "/actuator/health",
        "expect_status": 200,
        "interval": "200ms",
        "timeout": "2s",
        "startup_timeout": "120s",
        "healthy_threshold": 2,
    },
    "strategy": {"type": "rolling", "max_surge": 1, "max_unavailable": 0},
    "drain_timeout": "30s",
    "keep_releases": 5,
    "kubernetes": {"namespace": "roomescape", "service_port": 80, "prestop_sleep": "10s"},
}


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and not v.get("type"):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def make_cfg(**over: Any) -> configmod.Config:
    """The seed app on a cluster, with top-level overrides merged in (a ``strategy`` with a type replaces)."""
    return configmod.from_dict(merge(SEED, over), source=None, shown="nonstop.yml")


@functools.lru_cache(maxsize=None)
def _k8s_validator(kind: str, api_version: str, version: str) -> jsonschema.Draft202012Validator:
    import re

    from kubernetes_validate import utils
    from referencing import Registry, Resource

    vdir = f"v{version}-local-strict"
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = utils.schema_contents(f"kubernetes-json-schema/{vdir}/{kind.lower()}-{api}.json", version)
    defs = utils.schema_contents(f"kubernetes-json-schema/{vdir}/_definitions.json", version)
    registry = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _strict(schema: Any) -> Any:
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if out.get("type") == "object" and "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


@functools.lru_cache(maxsize=None)
def _route_validator(channel: str) -> jsonschema.Draft7Validator:
    schema = json.loads((SCHEMAS / f"httproute-v1.6.1-{channel}.json").read_text())
    schema.pop("$comment", None)
    schema = _strict(schema)
    # metadata is the API server's ObjectMeta: checked with the built-in schema below
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def uses_experimental(route: dict) -> bool:
    return any("sessionPersistence" in r for r in route["spec"]["rules"])


def validate(obj: dict, version: str = K8S_VERSION) -> None:
    """Raise ``jsonschema.ValidationError`` unless ``obj`` is valid for its kind (strict)."""
    if obj["kind"] == "HTTPRoute":
        channel = "experimental" if uses_experimental(obj) else "standard"
        _route_validator(channel).validate(obj)
        meta_holder = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
        _k8s_validator("ConfigMap", "v1", version).validate(meta_holder)
        return
    _k8s_validator(obj["kind"], obj["apiVersion"], version).validate(obj)
