"""Durable, atomic file writes: temp file in the same directory, fsync, rename, fsync dir."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from edgefleet.errors import PersistError

__all__ = ["atomic_write_bytes", "atomic_write_json", "fsync_dir", "fsync_file"]


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (python-tuf forgets this; we don't)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """Flush a file someone else wrote (python-tuf renames its metadata into place without
    an fsync: after a power cut the new name can hold zero bytes). Raises OSError."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves either the old or the new file.

    Raises:
        PersistError: the file could not be written (full disk, permissions); the old
            content is untouched and no temp file is left behind.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise PersistError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise PersistError(f"cannot write {path}: {exc.strerror or exc}") from exc


def atomic_write_json(path: Path, value: Any, *, mode: int = 0o644) -> None:
    """Serialize ``value`` as JSON and write it atomically (see ``atomic_write_bytes``)."""
    atomic_write_bytes(path, json.dumps(value, indent=2, sort_keys=True).encode(), mode=mode)
