"""What the image builder and the device agent agree on about the real boot chain: how a
root slot carries the kernel image that boots it, and how systemd-boot entries are named.

**The slot file.** A root slot is one artifact:

    [erofs | verity superblock + hash tree | UKI | trailer (4 KiB)]

The UKI's command line carries the slot's verity root hash, so the UKI cannot sit inside
what the root hash covers; it rides after the tree. What authenticates it on a device is
the release's signed hash of the whole file (TUF targets, checked before the slot is
written); what the firmware measures at boot is the UKI itself. A release stays one file,
so delta updates, the content index and mirrors need no second artifact. The trailer
(little endian): magic ``EDGEFLEET-SLOT1\\0`` (16 bytes), the UKI's offset and length (u64
each), its SHA-256 (32 bytes), zeros to the end of the block.

**Boot entries** (UAPI.1 Boot Loader Specification, type #2, with boot counting): one UKI
per slot in ``EFI/Linux`` named ``edgefleet-<rank>-<slot>[+LEFT[-DONE]].efi``. The UKI's
os-release names no IMAGE_VERSION, so entries that share a Debian release sort by their
file names alone, highest rank first: the rank is the agent's boot order. systemd-boot
sorts an entry with no tries left after all others and decrements LEFT (renaming the
file) before it starts an entry; ``systemd-bless-boot`` drops the counter once the boot
is good. Names that start with a dot are invisible to systemd-boot (staged files).
"""

from __future__ import annotations

import hashlib
import re
import struct
from dataclasses import dataclass
from pathlib import Path

from edgefleet.errors import InstallError

BLOCK = 4096
MAGIC = b"EDGEFLEET-SLOT1\0"
_HEAD = struct.Struct("<16sQQ32s")
MAX_UKI = 256 << 20  # bytes: far above any UKI, far below what a device could hold in memory

ENTRY_DIR = "EFI/Linux"
LOADER_DEFAULT = "edgefleet-*"  # loader.conf's default: the first of our entries in systemd-boot's order
_ENTRY = re.compile(r"^edgefleet-(?P<rank>[1-9])-(?P<slot>[ab])(?:\+(?P<left>[0-9])(?:-(?P<done>[0-9]{1,3}))?)?\.efi$")


def append_uki(slot: Path, uki: Path) -> None:
    """Append ``uki`` (padded to a whole block) and the trailer to ``slot`` in place."""
    offset = slot.stat().st_size
    data = uki.read_bytes()
    head = _HEAD.pack(MAGIC, offset, len(data), hashlib.sha256(data).digest())
    with open(slot, "ab") as handle:
        handle.write(data + bytes(-len(data) % BLOCK) + head + bytes(BLOCK - _HEAD.size))


def read_uki(image: Path, length: int) -> bytes:
    """The UKI inside the first ``length`` bytes of ``image`` (a downloaded release, or the
    slot device it was written to), checked against its trailer.

    Raises InstallError when there is no trailer, it points outside the image, or the
    UKI does not match its recorded hash.
    """
    if length < 2 * BLOCK or length % BLOCK:
        raise InstallError(f"a {length}-byte image has no boot trailer (not a whole number of blocks)")
    try:
        with open(image, "rb") as handle:
            handle.seek(length - BLOCK)
            magic, offset, size, digest = _HEAD.unpack(handle.read(_HEAD.size))
            if magic != MAGIC:
                raise InstallError("the image carries no kernel image for the boot loader (no slot trailer)")
            if size == 0 or size > MAX_UKI or offset % BLOCK or offset + size > length - BLOCK:
                raise InstallError("the slot trailer points outside the image")
            handle.seek(offset)
            data = handle.read(size)
    except OSError as exc:
        raise InstallError(f"reading the slot's kernel image failed: {exc.strerror or exc}") from exc
    if len(data) != size or hashlib.sha256(data).digest() != digest:
        raise InstallError("the slot's kernel image does not match its trailer")
    return data


@dataclass(frozen=True)
class Entry:
    """One of our boot entries. ``left`` is None for an entry without a counter (good)."""

    rank: int
    slot: str
    left: int | None = None
    done: int = 0

    @classmethod
    def parse(cls, name: str) -> Entry | None:
        """None for a name that is not one of ours."""
        found = _ENTRY.match(name)
        if found is None:
            return None
        left = found["left"]
        return cls(int(found["rank"]), found["slot"], None if left is None else int(left), int(found["done"] or 0))

    @property
    def name(self) -> str:
        counter = "" if self.left is None else f"+{self.left}" + (f"-{self.done}" if self.done else "")
        return f"edgefleet-{self.rank}-{self.slot}{counter}.efi"
