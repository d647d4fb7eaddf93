"""Unix sockets at any path: ``sun_path`` holds only 107 bytes.

A state dir deep in a file system (CI work dirs, home directories with long
names) easily makes ``<state_dir>/proxy.sock`` longer than that, and
``bind``/``connect`` then fail with "AF_UNIX path too long". On Linux a
socket can be reached through a short alias of its folder,
``/proc/self/fd/<fd of the folder>/<name>``; ``reachable`` yields that alias
when the real path is too long (and the path itself otherwise).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

# sun_path is 108 bytes with the terminating NUL; keep a margin.
MAX_PATH = 100


@contextlib.contextmanager
def reachable(path: str | os.PathLike) -> Iterator[str]:
    """A path to bind or connect to that reaches ``path``, valid inside the ``with`` block."""
    p = os.fspath(path)
    if len(os.fsencode(p)) <= MAX_PATH:
        yield p
        return
    folder, name = os.path.split(os.path.abspath(p))
    fd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        alias = f"/proc/self/fd/{fd}/{name}"
        if len(os.fsencode(alias)) > MAX_PATH:
            raise OSError(f"socket name too long even through its folder: {name!r}")
        yield alias
    finally:
        os.close(fd)
