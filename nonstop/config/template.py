"""The ``nonstop.yml`` that ``nonstop init`` writes."""

TEMPLATE = """\
# nonstop.yml — how nonstop runs and deploys this app (see DESIGN.md).
# `nonstop check` validates it and what it names (programs, ports, router) without changing anything.
app: {app}
listen: 127.0.0.1:8080            # public address clients use (the proxy listens here)
# state_dir: .nonstop             # state, logs, releases, sockets; default beside this file

# build:                          # optional: run before each deploy, then copy the artifact
#   workdir: .
#   commands: ["git pull", "./gradlew clean bootJar"]   # may name {{version}} {{release}} {{state_dir}}
#   artifact: build/libs/app.jar

run:
  # Any command; {{port}} is filled in per instance. Also: {{artifact}} {{release}} {{version}} {{instance}} {{state_dir}}.
  # Split like a shell would, never run through one (set shell: true to opt in).
  command: java -jar {{artifact}} --server.port={{port}}
  ports: 8081-8082                # blue-green and canary need 2 x instances; rolling instances + max_surge
  instances: 1
  stop_signal: SIGTERM
  stop_timeout: 30s               # then SIGKILL

health:
  path: /actuator/health
  expect_status: 200
  expect_body: UP
  interval: 200ms                 # a booting instance: every 50ms until its first pass (first 10s)
  timeout: 2s
  startup_timeout: 120s
  healthy_threshold: 2

strategy:
  type: blue-green                # recreate | blue-green | canary | rolling
  keep_previous: 10m              # old color stays warm for an instant rollback
  # canary:
  # type: canary
  # steps: [{{weight: 10, pause: 30s}}, {{weight: 50, pause: 1m}}, {{pause: manual}}]
  # analysis: {{interval: 5s, max_error_rate: 0.01, max_p99: 800ms, min_requests: 50, failure_limit: 2}}

drain_timeout: 30s                # in-flight requests of a retired instance finish within this
hold_timeout: 10s                 # a request waits this long for a ready instance before 503
keep_releases: 5

router:
  type: embedded                  # embedded | nginx | haproxy

dashboard:
  listen: 127.0.0.1:{dashboard_port:<14}# loopback; changes need the token file in the state dir
"""
"""``nonstop init`` fills in ``app`` and ``dashboard_port`` (9900, or the next port free on this machine)."""
