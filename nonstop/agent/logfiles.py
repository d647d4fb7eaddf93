"""Instance and agent log files: reading their ends (``nonstop logs``, failure messages)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["tail"]


def tail(log_path: str | Path, lines: int = 50) -> str:
    """The last ``lines`` lines of a log file ("" when there is none)."""
    if lines <= 0:
        return ""
    try:
        with open(log_path, "rb") as f:
            f.seek(0, os.SEEK_END)
            end = f.tell()
            size, data = 4096, b""
            while True:
                start = max(0, end - size)
                f.seek(start)
                data = f.read(end - start)
                if start == 0 or data.count(b"\n") > lines:
                    break
                size *= 4
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])
