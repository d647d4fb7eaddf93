"""Helpers shipped with nonstop for tests, benches and the demo.

- ``nonstop.testing.app``     a small HTTP/1.1 app (``python -m nonstop.testing.app --port 0``),
                              the Python twin of ``examples/app``: boots in milliseconds
- ``nonstop.testing.launch``  start that app as a subprocess and stop it again (``run_app``)
- ``nonstop.testing.load``    a load client that counts every failed request (``LoadClient``)

Nothing in ``nonstop.proxy``, ``nonstop.agent`` or ``nonstop.cli`` imports this package.
"""
