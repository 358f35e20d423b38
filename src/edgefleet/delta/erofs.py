"""Reproducible erofs images: the same root filesystem tree always gives the same bytes.

Deltas between releases are small only when unchanged files land in unchanged blocks. An
uncompressed erofs image is block-aligned (4 KiB), and ``mkfs.erofs`` is reproducible when
it is given a fixed timestamp for every file, a fixed filesystem UUID and (optionally)
fixed ownership. Tail packing is turned off so that every file's data starts and ends in
blocks of its own: a changed file then changes only its own blocks, not a metadata block
shared with its neighbours.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

from edgefleet.errors import InvalidRequest

BLOCK = 4096
MAGIC_OFFSET = 1024
MAGIC = bytes.fromhex("e2e1f5e0")  # EROFS_SUPER_MAGIC_V1, little-endian


def stable_uuid(name: str) -> str:
    """A filesystem UUID derived from a product name: the same for every release of it."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"edgefleet:image:{name}"))


def build_erofs(rootfs: Path, out: Path, *, name: str, epoch: int = 0, all_root: bool = False) -> Path:
    """Build an uncompressed, reproducible erofs image of ``rootfs`` at ``out``.

    Raises InvalidRequest when mkfs.erofs is missing or fails.
    """
    mkfs = shutil.which("mkfs.erofs")
    if mkfs is None:
        raise InvalidRequest("mkfs.erofs not found (Debian package erofs-utils)", code="tool_missing")
    if not rootfs.is_dir():
        raise InvalidRequest(f"{rootfs} is not a directory", code="invalid_rootfs")
    command = [mkfs, "--quiet", f"-T{epoch}", "--ignore-mtime", f"-U{stable_uuid(name)}", "-Enoinline_data"]
    if all_root:
        command.append("--all-root")
    out.unlink(missing_ok=True)
    result = subprocess.run([*command, str(out), str(rootfs)], capture_output=True, text=True,  # noqa: S603
                            check=False)
    if result.returncode != 0:
        out.unlink(missing_ok=True)
        raise InvalidRequest(f"mkfs.erofs failed: {result.stderr.strip()[-400:]}", code="image_build_failed")
    return out


def is_erofs(path: Path) -> bool:
    """Whether ``path`` starts with an erofs superblock (block-aligned content)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(MAGIC_OFFSET)
            return handle.read(4) == MAGIC
    except OSError:
        return False
