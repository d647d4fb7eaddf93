"""Room in the state dir: free space, the error of a full file system, and the reserve that lets work end cleanly.

A full disk must not leave things half-done: a deployment recorded as
running forever, a CLI waiting for a result that cannot be written. SQLite
itself never half-writes (a failed transaction is rolled back whole), so the
danger is the *next* writes: the ones that would record how the operation
ended. So the store keeps a ``Reserve`` — a preallocated file beside the
database — and gives it back to the file system the first time a write finds
the disk full: the write that failed is refused (``StateDirFull``, naming the
state dir and its free space), and what is under way can then record its end.
The reserve is made again once there is room.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from pathlib import Path

from nonstop.errors import NonstopError

__all__ = ["StateDirFull", "Reserve", "free_bytes", "human_bytes", "is_disk_full", "RESERVE_BYTES"]

RESERVE_BYTES = 1 << 20


def free_bytes(folder: str | Path) -> int | None:
    """Bytes an unprivileged writer may still use on ``folder``'s file system (None when it cannot be read)."""
    p = Path(folder)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        st = os.statvfs(p)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def human_bytes(n: int) -> str:
    """``1536`` → ``1.5 KiB``."""
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def is_disk_full(e: BaseException) -> bool:
    """SQLite's SQLITE_FULL, or ENOSPC from the file system."""
    if isinstance(e, sqlite3.Error):
        return getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "database or disk is full" in str(e)
    return isinstance(e, OSError) and e.errno == errno.ENOSPC


class StateDirFull(NonstopError):
    """The state dir's file system has no room left: the write was not made (SQLite rolled it back whole)."""

    def __init__(self, folder: str | Path, action: str = "", *, free: int | None = None, released: int = 0) -> None:
        folder = Path(folder)
        free = free_bytes(folder) if free is None else free
        shown = "unknown" if free is None else human_bytes(free)
        doing = f" ({action})" if action else ""
        gave = (f" nonstop gave back its {human_bytes(released)} reserve, so what is under way can end cleanly."
                if released else "")
        super().__init__(
            f"the state dir is full: {folder} has {shown} free{doing}; nothing was written.{gave} "
            "Free some space there (old logs in logs/, releases beyond keep_releases) and try again",
            detail={"field": "state_dir", "path": str(folder), "free_bytes": free, "reserve_released": released},
        )


class Reserve:
    """Owns one preallocated file (``RESERVE_BYTES``): made when there is room, given back when the disk is full."""

    recheck = 60.0  # seconds between looks at whether it can be made again

    def __init__(self, path: Path) -> None:
        self.path = path
        self._next_look = 0.0

    def keep(self) -> None:
        """Make the reserve if it is missing and the file system has room for it (several times over)."""
        now = time.monotonic()
        if now < self._next_look:
            return
        self._next_look = now + self.recheck
        if self.path.exists():
            return
        free = free_bytes(self.path.parent)
        if free is None or free < 8 * RESERVE_BYTES:
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            return
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)  # real blocks, not a sparse file
        except OSError:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            return
        os.close(fd)

    def release(self) -> int:
        """Give the reserve back to the file system; the bytes freed (0 when there was none)."""
        try:
            size = self.path.stat().st_size
            self.path.unlink()
        except OSError:
            return 0
        self._next_look = time.monotonic() + self.recheck
        return size
