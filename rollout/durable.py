"""Durable file replacement: the new content is on disk before it takes the old one's name, and
the rename itself is on disk before the call returns.

Write a temporary file in the same directory, fsync it, rename it over the target (atomic on
POSIX), then fsync the directory so the rename survives a power cut. A crash at any point leaves
the old file or the new one, never a mix, and a returned call is never undone by one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path: Path, text: str, mode: int | None = None) -> None:
    """``path`` holds ``text`` (``mode``: its permission bits, else those it had, else 0o644).
    ``OSError`` (a full disk...) leaves ``path`` as it was and no temporary file behind."""
    path = Path(path)
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_directory(path.parent)
