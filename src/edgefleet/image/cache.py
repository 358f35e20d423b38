"""The builder's cache (``~/.cache/edgefleet`` or ``$EDGEFLEET_CACHE``): one directory per
stage output, named by the digest of everything that stage is built from. A stage is
built into a temporary sibling and renamed into place, so a crash never leaves a
half-built entry that a later build would trust."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from edgefleet.util.atomic import fsync_dir


def cache_root() -> Path:
    configured = os.environ.get("EDGEFLEET_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edgefleet"


def digest_of(inputs: Any) -> str:
    """A stable key for JSON-able ``inputs``."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# Entries of each stage kept (an image is about 1 GB; one test run makes eight, two VMs at
# once, and an entry pruned under a VM would take its disk away); the oldest go first.
KEEP = 12


def prune(base: Path, stage: str, keep: int = KEEP) -> None:
    """Remove all but the ``keep`` most recently used entries of ``stage``."""
    entries = sorted((p for p in base.glob(f"{stage}-*") if (p / ".complete").exists()),
                     key=lambda p: (p / ".complete").stat().st_mtime, reverse=True)
    for stale in entries[keep:]:
        shutil.rmtree(stale, ignore_errors=True)


@contextmanager
def _locked(base: Path) -> Iterator[None]:
    """One builder at a time per cache (two processes building the same entry would each
    replace the other's, under a VM that is reading it)."""
    base.mkdir(parents=True, exist_ok=True)
    with open(base / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached(stage: str, key: str, build: Callable[[Path], None], root: Path | None = None) -> tuple[Path, bool]:
    """The directory of ``stage`` for ``key``: (path, whether it was already there).
    ``build`` fills a fresh directory; only a build that returns is kept. Using an entry
    marks it recent; each stage keeps its KEEP most recent entries."""
    base = root or cache_root()
    final = base / f"{stage}-{key}"
    with _locked(base):
        if (final / ".complete").exists():
            os.utime(final / ".complete")
            return final, True
        work = base / f".{stage}-{key}.{os.getpid()}.tmp"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        try:
            build(work)
            (work / ".complete").write_text(key + "\n")
            shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover
            os.replace(work, final)
            fsync_dir(base)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        prune(base, stage)
    return final, False
