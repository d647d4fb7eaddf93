"""nonstop's data plane: an asyncio + uvloop + httptools HTTP/1.1 reverse proxy.

Never imports ``nonstop.agent`` or ``nonstop.cli``. Public pieces:

- ``routes``   RouteTable / Release / Target, JSON, atomic save/load
- ``split``    the pure canary split
- ``client``   AdminClient, the Python client of the admin API
- ``server``   ProxyServer / run (``python -m nonstop.proxy``)
- ``build``    which hot-path modules run compiled (Cython, see setup.py)
"""

import os as _os

from nonstop.proxy import build as _build

if _os.environ.get(_build.PURE_ENV):
    _build.use_python_sources()

from nonstop.proxy.routes import InvalidRoutes, Release, RouteTable, StaleRevision, Target  # noqa: E402

__all__ = ["InvalidRoutes", "Release", "RouteTable", "StaleRevision", "Target"]
