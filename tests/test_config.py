"""Config: every error names the field and the file; good files load with their defaults."""

from __future__ import annotations

import pytest

from nonstop import config
from nonstop.configfile import ConfigProblems
from nonstop.errors import ConfigError

BASE = {"app": "shop", "run": {"command": "java -jar {artifact} --server.port={port}"}}


def load_yaml(tmp_path, text: str):
    p = tmp_path / "nonstop.yml"
    p.write_text(text)
    return config.load(p)


def test_the_designs_example_loads(tmp_path):
    cfg = load_yaml(tmp_path, """
app: roomescape
listen: 127.0.0.1:8080
state_dir: .nonstop
build:
  workdir: ../spring-roomescape-payment
  commands: ["git pull", "./gradlew clean bootJar"]
  artifact: build/libs/spring-roomescape-payment-0.0.1-SNAPSHOT.jar
run:
  command: java -jar {artifact} --spring.profiles.active=prod --server.port={port}
  env: {JAVA_OPTS: -Xmx512m}
  ports: 8081-8082
  instances: 1
  stop_signal: SIGTERM
  stop_timeout: 30s
health:
  path: /actuator/health
  expect_status: 200
  expect_body: UP
  interval: 200ms
  timeout: 2s
  startup_timeout: 120s
  healthy_threshold: 2
strategy:
  type: blue-green
drain_timeout: 30s
hold_timeout: 10s
keep_releases: 5
router:
  type: embedded
""")
    assert cfg.health.interval == 0.2 and cfg.run.stop_timeout == 30.0
    assert cfg.run.port_list == [8081, 8082]
    assert cfg.state_path == tmp_path / ".nonstop"
    assert cfg.strategy.type == "blue-green" and cfg.strategy.keep_previous == 600


def test_canary_block_from_the_design(tmp_path):
    cfg = load_yaml(tmp_path, """
app: a
run: {command: "app --port {port}"}
strategy:
  type: canary
  steps:
    - {weight: 10, pause: 30s}
    - {weight: 50, pause: 1m}
    - {pause: manual}
  sticky: true
  match: {header: {X-Canary: "1"}}
  analysis: {interval: 5s, max_error_rate: 0.01, max_p99: 800ms, min_requests: 50, failure_limit: 2}
""")
    s = cfg.strategy
    assert [st.weight for st in s.steps] == [10, 50, None]
    assert s.steps[2].pause == "manual" and s.steps[1].pause == 60
    assert s.analysis.max_p99 == 0.8 and s.match.header == {"X-Canary": "1"}


@pytest.mark.parametrize(
    "change, field, words",
    [
        ({"run": {"command": "java -jar app.jar"}}, "run.command", "{port}"),
        ({"run": {"command": "a {port}", "ports": "8081"}}, "run.ports", "needs 2"),
        ({"run": {"command": "a {port} --x={jar}"}}, "run.command", "unknown placeholder {jar}"),
        ({"run": {"command": "a {port}", "ports": "90000"}}, "run.ports", "1-65535"),
        ({"run": {"command": "a {port}", "stop_signal": "SIGFOO"}}, "run.stop_signal", "unknown signal"),
        ({"health": {"interval": "fast"}}, "health.interval", "duration"),
        ({"health": {"path": "health"}}, "health.path", "/"),
        ({"strategy": {"type": "big-bang"}}, "strategy.type", "unknown type"),
        ({"strategy": {"type": "canary", "steps": [{"weight": 101}]}}, "strategy.steps[0].weight", "100"),
        ({"strategy": {"type": "canary", "steps": [{"weight": 50}, {"weight": 10}]}}, "strategy.steps", "must not decrease"),
        ({"strategy": {"type": "rolling", "max_surge": 0, "max_unavailable": 0}}, "strategy", "both 0"),
        ({"strategy": {"type": "rolling", "max_surge": "abc"}}, "strategy.max_surge", "percentage"),
        ({"router": {"type": "nginx", "mode": "external"}}, "router.upstream_file", "required"),
        ({"listen": "8080"}, "listen", "HOST:PORT"),
        ({"listen": "127.0.0.1:8081"}, "listen", "also in run.ports"),
        ({"bogus": 1}, "bogus", "unknown setting"),
        ({"router": {"type": "nginx"}, "strategy": {"type": "recreate"}}, "router", "cannot honour strategy recreate"),
        ({"router": {"type": "haproxy", "mode": "external", "socket": "/run/h.sock", "backend": "app"},
          "strategy": {"type": "canary"}}, "router", "cannot honour strategy.sticky"),
        ({"router": {"type": "nginx", "mode": "external", "upstream_file": "/etc/nginx/u.inc"},
          "strategy": {"type": "canary"}}, "router", "cannot honour canary analysis"),
        ({"router": {"type": "haproxy", "mode": "external", "socket": "/run/h.sock", "backend": "app"},
          "strategy": {"type": "canary", "sticky": False, "split_key": {"header": "X-Account"}}},
         "router", "cannot honour strategy.split_key"),
        ({"router": {"type": "nginx"}, "strategy": {"type": "canary", "split_key": {"cookie": "account-id"}}},
         "strategy.split_key.cookie", "letters, digits and _; got 'account-id'"),
        ({"strategy": {"type": "canary", "split_key": {"cookie": "a", "header": "X-A"}}},
         "strategy.split_key", "exactly one of cookie or header"),
        ({"app": None}, "app", ""),
        ({"notify": [{"url": "ftp://x"}]}, "notify[0].url", "http"),
        ({"hooks": {"post_deploy": "curl -X POST http://127.0.0.1:{port}/warm"}}, "hooks.post_deploy",
         "hooks.post_deploy: unknown placeholder {port}; a hook runs once per deploy"),
        ({"hooks": {"pre_deploy": ["migrate", "--instance={instance}"]}}, "hooks.pre_deploy",
         "unknown placeholder {instance}"),
    ],
)
def test_errors_name_the_field_and_the_file(tmp_path, change, field, words):
    import yaml

    data = {**BASE, **change}
    p = tmp_path / "nonstop.yml"
    p.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as ei:
        config.load(p)
    e = ei.value
    assert e.field == field, e.message
    assert str(p) in e.message and field in e.message
    assert words in e.message
    assert e.exit_code == 2


def test_yaml_syntax_error_names_line(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_yaml(tmp_path, "app: x\nrun: [unclosed\n")
    assert "line" in ei.value.message and "nonstop.yml" in ei.value.message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as ei:
        config.load(tmp_path / "nope.yml")
    assert "nonstop init" in ei.value.message


def test_percentages_resolve_like_kubernetes():
    assert config.resolve_count("25%", 3, round_up=True) == 1
    assert config.resolve_count("25%", 3, round_up=False) == 0
    assert config.resolve_count(2, 3, round_up=True) == 2


def test_split_command_never_uses_a_shell_unless_asked():
    assert config.split_command("java -jar 'my app.jar' --x={port}", shell=False) == ["java", "-jar", "my app.jar", "--x={port}"]
    assert config.split_command("a && b", shell=True) == ["/bin/sh", "-c", "a && b"]


# -- every problem at once, with its line ------------------------------------------------------


def test_every_problem_is_reported_with_its_field_and_line(tmp_path):
    with pytest.raises(ConfigProblems) as ei:
        load_yaml(tmp_path, """\
app: shop
run:
  command: 5
  ports: eighty
health:
  interval: soon
strategy:
  type: canary
  steps:
    - {weight: 101}
  bogus: 1
notify:
  - url: ftp://x
""")
    e = ei.value
    got = [(p.field, p.line) for p in e.problems]
    assert got == [("run.command", 3), ("run.ports", 4), ("health.interval", 6), ("strategy.steps[0].weight", 10),
                   ("strategy.bogus", 11), ("notify[0].url", 13)]
    assert e.problems[0].message == "expected a string or a list; got 5"  # one line for the union, not two
    assert e.message.startswith("6 problems:\n") and "more problem" not in e.message
    assert f"  {tmp_path / 'nonstop.yml'}:6: health.interval: expected a duration" in e.message
    assert e.field == "run.command" and e.exit_code == 2
    assert e.detail["problems"][1] == {"field": "run.ports", "message": "expected a port range like 8081-8082; got 'eighty'",
                                       "file": str(tmp_path / "nonstop.yml"), "line": 4}


def test_a_missing_setting_points_at_its_block_and_a_cross_field_one_at_its_field(tmp_path):
    with pytest.raises(ConfigProblems) as ei:
        load_yaml(tmp_path, "app: shop\nlisten: 127.0.0.1:8081\nrun:\n  ports: 8081-8082\n")
    assert [(p.field, p.line) for p in ei.value.problems] == [("run.command", 3)]
    with pytest.raises(ConfigProblems) as ei:
        load_yaml(tmp_path, "app: shop\nlisten: 127.0.0.1:8081\nrun:\n  command: a {port}\n  ports: 8081-8082\n")
    assert [(p.field, p.line) for p in ei.value.problems] == [("listen", 2)]


@pytest.mark.parametrize("text, field, lines", [
    ("app: a\napp: b\nrun: {command: \"x {port}\"}\n", "app", (1, 2)),
    ("app: a\nrun:\n  command: x {port}\n  env: {A: 1, A: 2}\n", "run.env.A", (4, 4)),
    ("app: a\nrun: {command: \"x {port}\"}\nnotify:\n  - url: http://a\n    url: http://b\n", "notify[0].url", (4, 5)),
])
def test_a_key_written_twice_is_refused_naming_it_and_both_lines(tmp_path, text, field, lines):
    with pytest.raises(ConfigProblems) as ei:
        load_yaml(tmp_path, text)
    (p,) = ei.value.problems
    assert p.field == field and p.line == lines[1]
    assert p.message.startswith(f"written twice (lines {lines[0]} and {lines[1]})")


def test_field_paths_and_lines():
    from nonstop.configfile import field_path, line_of

    assert field_path("strategy.steps[1].weight") == ("strategy", "steps", 1, "weight")
    assert field_path("notify[0].url") == ("notify", 0, "url")
    lines = {("run",): 3, ("run", "ports"): 5}
    assert line_of(lines, ("run", "ports")) == 5 and line_of(lines, ("run", "command")) == 3
    assert line_of(lines, ("app",)) is None and line_of(None, ("run",)) is None


def test_the_template_loads_with_the_dashboard_port_it_is_given(tmp_path):
    p = tmp_path / "nonstop.yml"
    p.write_text(config.TEMPLATE.format(app="shop", dashboard_port=9917))
    assert config.load(p).dashboard.listen == "127.0.0.1:9917"


def test_the_package_exports_exactly_what_its_all_names():
    """``nonstop.config`` is a package of one module per part; its ``__init__`` re-exports the API. Every public
    name it offers is in ``__all__`` (and resolves), and its submodules never shadow one of those names."""
    import types

    offered = {n for n in dir(config) if not n.startswith("_") and n != "annotations"
               and not isinstance(getattr(config, n), types.ModuleType)}
    assert offered == set(config.__all__)
    assert callable(config.load) and callable(config.from_dict)
    assert config.Config.__module__ == "nonstop.config.model"
