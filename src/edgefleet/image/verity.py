"""dm-verity over a root slot: the erofs image, then its hash tree in the same file, so a
slot is one artifact. The root hash goes on the kernel command line inside the UKI, which
the firmware measures: a device that attests its UKI attests every block of its root."""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from edgefleet.errors import BuildError
from edgefleet.image import _tools

BLOCK = 4096


@dataclass(frozen=True)
class Verity:
    data_blocks: int
    hash_offset: int  # bytes: where the hash tree starts (the superblock first)
    root_hash: str
    salt: str

    def cmdline(self) -> str:
        """What the initramfs reads (``edgefleet.verity=blocks,offset,roothash``)."""
        return f"edgefleet.verity={self.data_blocks},{self.hash_offset},{self.root_hash}"


def format_slot(image: Path) -> Verity:
    """Append the hash tree to ``image`` (an erofs image, block aligned) in place.

    Raises BuildError when the image is not block-aligned or veritysetup fails.
    """
    _tools.require(["veritysetup"])
    size = image.stat().st_size
    if size % BLOCK or not size:
        raise BuildError(f"{image} is {size} bytes, not a whole number of {BLOCK}-byte blocks")
    digest = hashlib.sha256()
    with open(image, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    # Salt and UUID follow from the content: the same tree gives the same root hash.
    salt = digest.hexdigest()
    shown = _tools.run(["veritysetup", "format", f"--data-blocks={size // BLOCK}", f"--hash-offset={size}",
                        f"--salt={salt}", f"--uuid={uuid.UUID(salt[:32])}", image, image]).decode()
    found = re.search(r"^Root hash:\s+([0-9a-f]{64})$", shown, re.MULTILINE)
    if found is None:
        raise BuildError(f"veritysetup printed no root hash: {shown[-300:]}")
    return Verity(size // BLOCK, size, found.group(1), salt)
