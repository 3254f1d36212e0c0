"""Atomic file writes: nothing the user saved is lost or half-written."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


def atomic_write(path, write, mode: int | None = None) -> Path:
    """Call ``write(binary file)`` on a temporary file next to ``path``, fsync it, then
    ``os.replace`` it onto ``path``. On any error the temporary file is removed and ``path`` is
    left as it was. Permissions: ``mode``, else those of an existing ``path``, else 0644."""
    path = Path(path)
    if mode is None:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
