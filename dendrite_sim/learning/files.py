"""Atomic file writes: nothing the user saved is lost or half-written."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write", "remove_temporaries"]

TEMPORARY = ".tmp"


def atomic_write(path, write, mode: int | None = None) -> Path:
    """Call ``write(binary file)`` on a temporary file next to ``path``, fsync it, then
    ``os.replace`` it onto ``path``. On any error the temporary file is removed and ``path`` is
    left as it was. Permissions: ``mode``, else those of an existing ``path``, else 0644."""
    path = Path(path)
    if mode is None:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY)
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


def remove_temporaries(directory) -> list[Path]:
    """Remove the temporary files that :func:`atomic_write` leaves in ``directory`` when its
    process is killed mid-write (``.<name>.<random>.tmp``); return what was removed. Call it
    only where no other process writes (a run holds its directory's lock)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.glob(f".*{TEMPORARY}") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
