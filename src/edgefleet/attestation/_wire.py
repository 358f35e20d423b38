"""A bounded byte reader for wire structures: it refuses to read past the end or to stop
early. TPM structures are big-endian (the default); the TCG event log is little-endian."""

from __future__ import annotations

import struct

from edgefleet.errors import InvalidRequest

MAX_STRUCTURE = 4096


_BIG = tuple(struct.Struct(">" + f) for f in "HIQ")
_LITTLE = tuple(struct.Struct("<" + f) for f in "HIQ")


class Reader:
    """A reader that refuses to read past the end or to stop early. TPM structures are
    big-endian (the default); the TCG event log is little-endian."""

    def __init__(self, data: bytes, what: str, *, little_endian: bool = False, limit: int = MAX_STRUCTURE,
                 code: str | None = None) -> None:
        self.what, self.code = what, code or f"bad_{what.lower()}"
        if len(data) > limit:
            raise self.error(f"{len(data)} bytes is over the {limit} byte bound")
        self.data, self.at = data, 0
        self._u16, self._u32, self._u64 = _LITTLE if little_endian else _BIG

    def error(self, message: str) -> InvalidRequest:
        return InvalidRequest(f"{self.what}: {message}", code=self.code)

    def take(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise self.error(f"truncated at byte {self.at} (wanted {n} more)")
        chunk = self.data[self.at:self.at + n]
        self.at += n
        return chunk

    def unpack(self, layout: struct.Struct) -> tuple[int, ...]:
        """Several fixed-size fields at once (``layout`` carries its own byte order)."""
        if self.at + layout.size > len(self.data):
            raise self.error(f"truncated at byte {self.at} (wanted {layout.size} more)")
        values = layout.unpack_from(self.data, self.at)
        self.at += layout.size
        return values

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(self._u16.unpack(self.take(2))[0])

    def u32(self) -> int:
        return int(self._u32.unpack(self.take(4))[0])

    def u64(self) -> int:
        return int(self._u64.unpack(self.take(8))[0])

    @property
    def done(self) -> bool:
        return self.at == len(self.data)

    def tpm2b(self, limit: int = 1024) -> bytes:
        size = self.u16()
        if size > limit:
            raise self.error(f"a {size}-byte field is over its {limit}-byte bound")
        return self.take(size)

    def end(self) -> None:
        if self.at != len(self.data):
            raise self.error(f"{len(self.data) - self.at} trailing bytes")
