"""Files written so that a reader never sees half of one and a failure leaves nothing behind."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def replace_atomically(path: str | Path, write: Callable[[Path], object]) -> Path:
    """``write(tmp)`` into a temporary file beside ``path``, fsync it, rename it over ``path``.

    A reader sees the old file or the new one, never a partial one. Whatever fails (disk
    full, an interrupt) the temporary file is removed and the error propagates unchanged.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # some filesystems cannot fsync a directory
        pass
    return path


def write_text_atomically(path: str | Path, text: str) -> Path:
    """:func:`replace_atomically` for a UTF-8 text file."""
    return replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
