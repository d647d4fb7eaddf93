"""``nonstop manifests``: offline, prints what a deploy applies (the seed app's output is the golden file)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from nonstop.cli.app import cli

from tests.kubernetes.kube import SEED

GOLDEN = Path(__file__).parent / "golden" / "seed-rolling.yaml"


def write(tmp_path, data) -> str:
    p = tmp_path / "nonstop.yml"
    p.write_text(yaml.safe_dump(data))
    return str(p)


def test_prints_the_golden_manifests_of_the_seed_app(tmp_path):
    r = CliRunner().invoke(cli, ["-c", write(tmp_path, SEED), "manifests", "--version", "v1"])
    assert r.exit_code == 0, r.output
    assert r.output == GOLDEN.read_text()
    docs = list(yaml.safe_load_all(r.output))
    assert [d["kind"] for d in docs] == ["Deployment", "Service", "PodDisruptionBudget"]


def test_json_is_a_v1_list_and_image_overrides(tmp_path):
    r = CliRunner().invoke(cli, ["-c", write(tmp_path, SEED), "manifests", "--version", "v9", "--image", "other/app@sha256:" + "b" * 64, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["kind"] == "List" and out["items"][0]["spec"]["template"]["spec"]["containers"][0]["image"].startswith("other/app@sha256:")


def test_strategy_override_and_refusals(tmp_path):
    r = CliRunner().invoke(cli, ["-c", write(tmp_path, SEED), "manifests", "--version", "v1", "--strategy", "blue-green"])
    assert r.exit_code == 0 and "name: roomescape-blue" in r.output
    one_host = {"app": "roomescape", "run": {"command": "java -jar app.jar --server.port={port}"}}
    r = CliRunner().invoke(cli, ["-c", write(tmp_path, one_host), "manifests"])
    assert r.exit_code == 2 and "only with run.runtime: kubernetes" in r.output
    bad = {**SEED, "health": {**SEED["health"], "expect_body": "UP"}}
    r = CliRunner().invoke(cli, ["-c", write(tmp_path, bad), "manifests"])
    assert r.exit_code == 2 and "health.expect_body" in r.output
