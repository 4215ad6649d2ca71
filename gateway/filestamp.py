"""A file's identity for change polling: (mtime_ns, size, inode), or None if absent.

The inode matters: the token tools replace files atomically (rename), which can keep
mtime and size equal while the content changed."""

from __future__ import annotations

import os
from pathlib import Path

Stamp = tuple[int, int, int]


def file_stamp(path: str | Path) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)
