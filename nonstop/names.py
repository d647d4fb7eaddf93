"""The names a user can choose from, written once (no imports: the CLI reads these on every call).

``nonstop.config`` builds its models on these lists and the agent's registries
(strategies, routers, runtimes) check at import that they cover exactly them.
"""

STRATEGIES = ("recreate", "blue-green", "canary", "rolling")
ROUTERS = ("embedded", "nginx", "haproxy")
RUNTIMES = ("process", "docker", "podman", "kubernetes")
CONTAINER_RUNTIMES = ("docker", "podman")
STEER_ACTIONS = ("promote", "promote_full", "abort", "pause", "resume")
