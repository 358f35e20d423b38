"""The file layout shared by deltas and content indexes:

    magic (8 bytes) | header length (u32, little-endian) | header (JSON) | sections...

Each section is one zstd frame whose compressed length the header states, so a reader can
stream any section from its offset without reading the others, and a truncated file is
found before anything is written.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

import zstandard

from edgefleet.errors import DeltaRefused

MAX_HEADER = 64 * 1024
MAX_WINDOW = 1 << 24  # a device never needs more than 16 MiB per zstd stream
LEVEL = 19


def compressor(*, checksum: bool = True) -> zstandard.ZstdCompressor:
    """Sections carry zstd's checksum; pieces need none (their id is a hash)."""
    return zstandard.ZstdCompressor(level=LEVEL, write_content_size=True, write_checksum=checksum)


def decompressor() -> zstandard.ZstdDecompressor:
    return zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW)


def encode(magic: bytes, header: dict[str, Any], sections: list[bytes]) -> bytes:
    """The whole file (callers write it with ``util.atomic.atomic_write_bytes``)."""
    header = {**header, "sections": [len(s) for s in sections]}
    encoded = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return b"".join([magic, struct.pack("<I", len(encoded)), encoded, *sections])


def read_header(handle: IO[bytes], magic: bytes, what: str) -> tuple[dict[str, Any], list[int]]:
    """The header and each section's starting offset. Raises DeltaRefused when the file is
    not one, or is shorter than its header says."""
    start = handle.read(len(magic) + 4)
    if len(start) < len(magic) + 4 or start[:len(magic)] != magic:
        raise DeltaRefused(f"{what} does not start with {magic.decode()}", code="delta_malformed")
    (length,) = struct.unpack("<I", start[len(magic):])
    if length > MAX_HEADER:
        raise DeltaRefused(f"{what} header claims {length} bytes", code="delta_malformed")
    try:
        header = json.loads(handle.read(length))
        sizes = [int(n) for n in header["sections"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise DeltaRefused(f"{what} header is not valid: {exc}", code="delta_malformed") from exc
    if not isinstance(header, dict) or any(n < 0 for n in sizes):
        raise DeltaRefused(f"{what} header is not valid", code="delta_malformed")
    offset = len(magic) + 4 + length
    offsets = []
    for size in sizes:
        offsets.append(offset)
        offset += size
    handle.seek(0, io.SEEK_END)
    if handle.tell() != offset:
        raise DeltaRefused(f"{what} is {handle.tell()} bytes, its header says {offset}", code="delta_truncated")
    return header, offsets


class _Region(io.RawIOBase):
    """``length`` bytes of ``handle`` from ``offset``, as a file of its own."""

    def __init__(self, handle: IO[bytes], offset: int, length: int) -> None:
        self._handle, self._offset, self._left = handle, offset, length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._left <= 0:
            return 0
        self._handle.seek(self._offset)
        data = self._handle.read(min(len(buffer), self._left))
        buffer[:len(data)] = data
        self._offset += len(data)
        self._left -= len(data)
        return len(data)


class Section:
    """One section, decompressed as a stream: ``read(n)`` gives exactly n bytes or raises."""

    def __init__(self, handle: IO[bytes], offset: int, length: int, what: str) -> None:
        region = cast(IO[bytes], _Region(handle, offset, length))
        self._reader = decompressor().stream_reader(region, read_across_frames=False)
        self._what = what

    def read(self, size: int) -> bytes:
        parts, want = [], size
        try:
            while want:
                data = self._reader.read(want)
                if not data:
                    break
                parts.append(data)
                want -= len(data)
        except zstandard.ZstdError as exc:
            raise DeltaRefused(f"{self._what} is corrupt: {exc}", code="delta_corrupt") from exc
        if want:
            raise DeltaRefused(f"{self._what} ends early", code="delta_truncated")
        return b"".join(parts)

    def chunks(self, size: int, total: int) -> Iterator[bytes]:
        while total:
            data = self.read(min(size, total))
            total -= len(data)
            yield data

    def finished(self) -> bool:
        """Whether nothing is left (a longer stream than announced is corrupt)."""
        try:
            return self._reader.read(1) == b""
        except zstandard.ZstdError:
            return False


def open_sections(path: Path, magic: bytes, what: str) -> tuple[IO[bytes], dict[str, Any], list[int], list[int]]:
    """Open ``path``; returns (handle, header, section offsets, section sizes)."""
    handle = open(path, "rb")  # noqa: SIM115 - closed by the caller
    try:
        header, offsets = read_header(handle, magic, what)
    except BaseException:
        handle.close()
        raise
    return handle, header, offsets, list(header["sections"])
