"""The GRUB environment block, byte-for-byte as ``grub-editenv`` and GRUB's ``load_env`` /
``save_env`` read it: exactly 1024 bytes, a fixed header line, ``name=value`` lines, the
rest padded with ``#``."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from edgefleet.errors import InvalidRequest, PersistError
from edgefleet.util.atomic import atomic_write_bytes

BLOCK_SIZE = 1024
HEADER = b"# GRUB Environment Block\n"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def encode(values: Mapping[str, str]) -> bytes:
    """Raises InvalidRequest for names or values GRUB cannot hold, or a block over 1 KiB."""
    body = bytearray(HEADER)
    for name, value in values.items():
        if not _NAME.match(name):
            raise InvalidRequest(f"invalid GRUB variable name {name!r}", code="invalid_bootenv")
        if any(c in value for c in "\n\\"):
            raise InvalidRequest(f"GRUB variable {name} holds a newline or backslash", code="invalid_bootenv")
        body += f"{name}={value}\n".encode()
    if len(body) > BLOCK_SIZE:
        raise InvalidRequest("GRUB environment exceeds 1024 bytes", code="invalid_bootenv")
    return bytes(body) + b"#" * (BLOCK_SIZE - len(body))


def decode(block: bytes) -> dict[str, str]:
    """Raises InvalidRequest when ``block`` is not a GRUB environment block."""
    if len(block) != BLOCK_SIZE or not block.startswith(HEADER):
        raise InvalidRequest("not a GRUB environment block", code="invalid_bootenv")
    values: dict[str, str] = {}
    for line in block[len(HEADER):].decode("utf-8", "replace").split("\n"):
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if sep and _NAME.match(name):
            values[name] = value
    return values


class GrubEnvFile:
    """A grubenv file (``/boot/grub/grubenv`` on a real device)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, str]:
        try:
            return decode(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise PersistError(f"cannot read {self.path}: {exc}") from exc

    def write(self, values: Mapping[str, str]) -> None:
        """Atomic: a temp file, fsync, rename. A power cut leaves the old block or the new
        one, and at worst a stray temp file, which the next write removes."""
        data = encode(values)
        for stray in self.path.parent.glob(f".{self.path.name}.*.tmp"):
            stray.unlink(missing_ok=True)
        atomic_write_bytes(self.path, data)
