"""``nonstop logs`` on a cluster: the tail of each pod's log of a release, through the API server.

The same answer as the one-host ``offline.logs`` (``{"release", "files":
[{"name", "path", "lines"}]}``), one entry per pod of the release (its
container ``app``), so the CLI prints it the same way. Blocking (the
client is): the agent runs it in a thread; the CLI calls it directly when no
agent runs.
"""

from __future__ import annotations

from typing import Any

from nonstop.agent.kubernetes import manifests as mf
from nonstop.agent.kubernetes import state as st
from nonstop.config import Config
from nonstop.errors import UsageError

__all__ = ["pod_logs"]


def pod_logs(client: Any, cfg: Config, release: str | None, lines: int) -> dict:
    """The last ``lines`` lines of each pod of ``release`` (default: the live one); ``UsageError`` for a release
    the cluster's history does not know."""
    state, _rv = st.read(client, cfg)
    release = release or state.live
    if release is None:
        raise UsageError("no release is live in the cluster; name one: nonstop logs RELEASE")
    if state.release(release) is None:
        known = ", ".join(r["id"] for r in state.releases) or "none"
        raise UsageError(f"unknown release {release!r} (the cluster's history has: {known})")
    selector = f"{mf.LABEL_APP}={cfg.app},{mf.LABEL_RELEASE}={mf.label_value(release)}"
    files = []
    for pod in sorted(client.list("Pod", selector), key=lambda p: (p.get("metadata") or {}).get("name", "")):
        name = (pod.get("metadata") or {}).get("name", "?")
        text = client.pod_log(name, lines) if lines > 0 else ""
        if text is None:
            continue  # gone between the list and the read
        files.append({"name": f"pod/{name}", "path": f"{client.namespace}/{name}/app", "lines": text.splitlines()[-lines:] if lines > 0 else []})
    return {"release": release, "files": files, "source": "cluster"}
