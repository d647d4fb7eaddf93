"""Runtimes: how instances run (``run.runtime``). The interface is ``base.Runtime``."""
