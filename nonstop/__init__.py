"""nonstop: deploy new versions of a web application without a single failed request.

Parts (see docs/internals.md):
- ``nonstop.proxy``  the data plane: embedded HTTP/1.1 reverse proxy (never imports ``agent``)
- ``nonstop.agent``  the control plane: instances, health, strategies, routers, state
- ``nonstop.cli``    a thin client of the agent's control API
"""

__version__ = "0.2.0"


def version_tuple(v: str | None) -> tuple[int, ...]:
    """``"0.2.0"`` → ``(0, 2, 0)``; anything unreadable (an older process that says no version) → ``()``."""
    try:
        return tuple(int(x) for x in str(v).split("+")[0].split("."))
    except ValueError:
        return ()
