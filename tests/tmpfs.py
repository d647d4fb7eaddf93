"""A small tmpfs mounted for a test: a real file system that runs out of room (the full-disk cases).

Needs root (``mount -t tmpfs``); the test suite runs as root here. Unmounted in
teardown, lazily if something still holds a file open in it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` (``"4m"``) at ``path`` for the duration of the block."""
    if os.geteuid() != 0:
        raise RuntimeError("mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=True)


def fill(folder: Path, leave: int = 0) -> Path:
    """Write a file in ``folder`` until its file system has at most ``leave`` bytes free; returns the file."""
    filler = folder / "filler"
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(filler, "ab") as f:
        want = max(0, free - leave)
        chunk = b"\0" * (1 << 20)
        while want > 0:
            try:
                n = f.write(chunk[: min(len(chunk), want)])
                f.flush()
            except OSError:
                break
            want -= n
    return filler
