"""Unified kernel images (UAPI Group's UKI): systemd-stub with the kernel, initramfs,
command line and os-release as PE sections, built with objcopy (Debian 12 has no ukify).

objcopy stamps the wall-clock time into the PE header, and that field is inside the
Authenticode digest the firmware measures into PCR 4: it is zeroed (with the checksum)
so that the same inputs always give the same bytes, and the same PCR values.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pefile

from edgefleet.errors import BuildError
from edgefleet.image import _tools

# Section -> virtual address for objcopy; the stub's own sections sit below 0x20000, and the
# kernel's room (up to 16 MiB) ends before the initramfs.
SECTION_VMA = {".osrel": 0x20000, ".cmdline": 0x30000, ".linux": 0x2000000, ".initrd": 0x3000000}
KERNEL_ROOM = 0x3000000 - 0x2000000


@dataclass(frozen=True)
class UkiParts:
    linux: Path
    initrd: Path
    cmdline: str
    osrel: bytes

    def sections(self, work: Path) -> dict[str, Path]:
        cmdline, osrel = work / "cmdline.txt", work / "os-release"
        cmdline.write_text(self.cmdline)  # no newline: the stub passes it on byte for byte
        osrel.write_bytes(self.osrel)
        return {".osrel": osrel, ".cmdline": cmdline, ".linux": self.linux, ".initrd": self.initrd}


def normalise(path: Path) -> None:
    """Zero the PE timestamp and checksum (reproducible Authenticode digests)."""
    pe = pefile.PE(str(path), fast_load=True)
    try:
        pe.FILE_HEADER.TimeDateStamp = 0
        pe.OPTIONAL_HEADER.CheckSum = 0
        data = pe.write()
    finally:
        pe.close()
    path.write_bytes(bytes(data))


def build(stub: Path, parts: UkiParts, out: Path, work: Path) -> Path:
    """Write the UKI to ``out``. Raises BuildError when objcopy fails or the kernel is too large."""
    _tools.require(["objcopy"])
    if parts.linux.stat().st_size > KERNEL_ROOM:
        raise BuildError(f"kernel {parts.linux} is larger than the UKI layout's {KERNEL_ROOM >> 20} MiB")
    command: list[str | Path] = ["objcopy"]
    for name, source in parts.sections(work).items():
        command += ["--add-section", f"{name}={source}", "--change-section-vma", f"{name}={SECTION_VMA[name]:#x}"]
    _tools.run([*command, stub, out])
    normalise(out)
    return out
