"""``nonstop proxy``: the embedded proxy in the foreground.

The command is defined in ``nonstop.proxy.command`` so the data plane runs
(``python -m nonstop.proxy``) without importing the CLI package; this module
is where the CLI picks it up: ``from nonstop.cli.proxy_cmd import proxy``.
"""

from nonstop.proxy.command import proxy

__all__ = ["proxy"]
