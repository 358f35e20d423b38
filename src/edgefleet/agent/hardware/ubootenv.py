"""The U-Boot environment, byte-for-byte as U-Boot's ``env`` code and ``fw_printenv`` /
``fw_setenv`` (u-boot-tools) read it.

One copy is ``size`` bytes: a little-endian CRC32 of the data area, then (redundant
environments only) one flags byte, then the data area: ``name=value`` strings, each ending
in NUL, the list ending in a second NUL, padded to the end. With two copies the reader
takes the valid copy with the newer flags counter (U-Boot's "incremental" scheme used for
files, block devices and NAND), and a writer always overwrites the *other* copy: a write
torn by a power cut leaves a copy whose CRC fails, and the reader falls back to the
previous one. Copies are written a sector at a time, as flash is programmed.
"""

from __future__ import annotations

import os
import stat
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edgefleet.errors import ConfigError, InvalidRequest, PersistError

SECTOR = 512


@dataclass(frozen=True)
class EnvCopy:
    """Where one copy of the environment lives: a file or block device, and an offset."""

    device: Path
    offset: int
    size: int


def encode(values: Mapping[str, str], size: int, *, flags: int | None = None) -> bytes:
    """One copy of ``size`` bytes; ``flags`` only for redundant environments.

    Raises InvalidRequest for names or values U-Boot cannot hold, or too much data.
    """
    header = 5 if flags is not None else 4
    data = bytearray()
    for name, value in values.items():
        if not name or "=" in name or "\0" in name or "\0" in value:
            raise InvalidRequest(f"invalid U-Boot variable {name!r}", code="invalid_bootenv")
        data += f"{name}={value}".encode() + b"\0"
    data += b"\0"
    if len(data) > size - header:
        raise InvalidRequest(f"U-Boot environment exceeds {size - header} bytes", code="invalid_bootenv")
    data += b"\0" * (size - header - len(data))
    crc = zlib.crc32(data).to_bytes(4, "little")
    return crc + (bytes([flags]) if flags is not None else b"") + bytes(data)


def decode(block: bytes, *, redundant: bool) -> tuple[dict[str, str], int] | None:
    """(variables, flags) of one copy, or None when its CRC does not match (torn or blank)."""
    header = 5 if redundant else 4
    if len(block) <= header:
        return None
    data = block[header:]
    if zlib.crc32(data).to_bytes(4, "little") != block[:4]:
        return None
    values: dict[str, str] = {}
    for entry in data.split(b"\0"):
        if not entry:
            break
        name, sep, value = entry.decode("utf-8", "replace").partition("=")
        if sep:
            values[name] = value
    return values, (block[4] if redundant else 0)


def newer(a: int, b: int) -> bool:
    """Whether flags ``a`` is newer than ``b`` in the incremental scheme (255 wraps to 0)."""
    if a == 255 and b == 0:
        return False
    if a == 0 and b == 255:
        return True
    return a > b


class UBootEnv:
    """A U-Boot environment in one or two copies (``fw_env.config`` lines)."""

    def __init__(self, copies: list[EnvCopy]) -> None:
        if len(copies) not in (1, 2) or len({c.size for c in copies}) != 1:
            raise InvalidRequest("a U-Boot environment has one or two copies of one size", code="invalid_bootenv")
        self.copies = copies

    @property
    def redundant(self) -> bool:
        return len(self.copies) == 2

    def fw_env_config(self) -> str:
        """The ``fw_env.config`` that makes ``fw_printenv -c`` read this environment."""
        return "".join(f"{c.device} {c.offset:#x} {c.size:#x}\n" for c in self.copies)

    def _read_copy(self, copy: EnvCopy) -> tuple[dict[str, str], int] | None:
        try:
            with open(copy.device, "rb") as handle:
                handle.seek(copy.offset)
                block = handle.read(copy.size)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise PersistError(f"cannot read U-Boot environment {copy.device}: {exc}") from exc
        return decode(block, redundant=self.redundant) if len(block) == copy.size else None

    def _current(self) -> tuple[int, dict[str, str], int] | None:
        """(index, variables, flags) of the copy U-Boot would use, None if none is valid."""
        found = [(i, *got) for i, copy in enumerate(self.copies) if (got := self._read_copy(copy)) is not None]
        if not found:
            return None
        if len(found) == 2 and newer(found[1][2], found[0][2]):
            return found[1]
        return found[0]

    def read(self) -> dict[str, str]:
        """The variables; empty when no copy is valid (U-Boot then uses its built-in default)."""
        current = self._current()
        return current[1] if current is not None else {}

    def write(self, values: Mapping[str, str]) -> None:
        """Replace all variables: the other copy of a redundant pair, with flags + 1."""
        current = self._current()
        if self.redundant:
            index = 0 if current is None else 1 - current[0]
            flags = 1 if current is None else (current[2] + 1) % 256
        else:
            index, flags = 0, None
        copy = self.copies[index]
        block = encode(values, copy.size, flags=flags)
        try:
            fd = os.open(copy.device, os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError as exc:
            raise PersistError(f"cannot write U-Boot environment {copy.device}: {exc}") from exc
        try:
            for start in range(0, len(block), SECTOR):
                os.pwrite(fd, block[start:start + SECTOR], copy.offset + start)
            # A file stands in for a device: make every copy's region exist, as on flash.
            end = max(c.offset + c.size for c in self.copies if c.device == copy.device)
            if stat.S_ISREG(os.fstat(fd).st_mode) and os.fstat(fd).st_size < end:
                os.ftruncate(fd, end)
            os.fsync(fd)
        except OSError as exc:
            raise PersistError(f"cannot write U-Boot environment {copy.device}: {exc}") from exc
        finally:
            os.close(fd)


class UBootEnvFile(UBootEnv):
    """The redundant environment as two copies in one file, as on an eMMC boot partition."""

    def __init__(self, path: Path, size: int = 0x4000) -> None:
        super().__init__([EnvCopy(path, 0, size), EnvCopy(path, size, size)])


def from_fw_env_config(path: Path) -> UBootEnv:
    """The environment an ``fw_env.config`` describes (device, offset, size per line).

    Raises ConfigError when the file is missing or malformed.
    """
    copies = []
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        try:
            copies.append(EnvCopy(Path(fields[0]), int(fields[1], 0), int(fields[2], 0)))
        except (IndexError, ValueError) as exc:
            raise ConfigError(f"{path}: bad line {line!r}") from exc
    try:
        return UBootEnv(copies)
    except InvalidRequest as exc:
        raise ConfigError(f"{path}: {exc.message}") from exc
