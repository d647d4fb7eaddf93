"""nonstop's data plane: an asyncio + uvloop + httptools HTTP/1.1 reverse proxy.

Never imports ``nonstop.agent`` or ``nonstop.cli``. Public pieces:

- ``routes``   RouteTable / Release / Target, JSON, atomic save/load
- ``split``    the pure canary split
- ``client``   AdminClient, the Python client of the admin API
- ``server``   ProxyServer / run (``python -m nonstop.proxy``)
"""

from nonstop.proxy.routes import InvalidRoutes, Release, RouteTable, StaleRevision, Target

__all__ = ["InvalidRoutes", "Release", "RouteTable", "StaleRevision", "Target"]
