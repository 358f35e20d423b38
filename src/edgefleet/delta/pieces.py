"""Pieces in transit and at rest: the pack format a publisher uploads them in, and the
check every holder (server, hub, device) makes before keeping or using one.

A pack is records ``id (16 bytes) | length (u32, little-endian) | compressed piece``, all
of one namespace (``delta.index``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import zstandard

from edgefleet.delta.container import MAX_WINDOW
from edgefleet.delta.index import (
    ID_BYTES,
    MAX_CHUNK,
    MAX_DICTIONARY,
    RAW,
    dictionary_path,
    max_piece_bytes,
    namespace_of,
    piece_id,
    piece_path,
)
from edgefleet.errors import DeltaRefused
from edgefleet.util.atomic import atomic_write_bytes

_RECORD = struct.Struct(f"<{ID_BYTES}sI")
MAX_PIECE = max_piece_bytes(MAX_CHUNK)
Dictionary = zstandard.ZstdCompressionDict


def decompressor(dictionary: Dictionary | None) -> zstandard.ZstdDecompressor:
    return zstandard.ZstdDecompressor(max_window_size=MAX_WINDOW, dict_data=dictionary)


def unpack_piece(ident: bytes, piece: bytes, length: int | None = None, *,
                 unpacker: zstandard.ZstdDecompressor | None = None) -> bytes:
    """The chunk a piece holds. Raises DeltaRefused unless it decompresses (to ``length``
    bytes, when given) into a chunk whose id is ``ident``. ``unpacker`` carries the
    namespace's dictionary (``decompressor``)."""
    limit = length or MAX_CHUNK
    try:
        # A frame may claim any size: check the claim before anything is allocated for it.
        claimed = zstandard.frame_content_size(piece)
        if claimed > limit:
            raise DeltaRefused(f"piece {ident.hex()} claims {claimed} bytes", code="piece_corrupt")
        data = (unpacker or decompressor(None)).decompress(piece, max_output_size=limit)
    except zstandard.ZstdError as exc:
        raise DeltaRefused(f"piece {ident.hex()} is corrupt: {exc}", code="piece_corrupt") from exc
    if (length is not None and len(data) != length) or piece_id(data) != ident:
        raise DeltaRefused(f"piece {ident.hex()} does not hold the chunk it is named for", code="piece_corrupt")
    return data


def check_dictionary(namespace: str, data: bytes) -> Dictionary:
    """The dictionary of ``namespace``. Raises DeltaRefused when ``data`` is not it."""
    if namespace == RAW or len(data) > MAX_DICTIONARY or namespace_of(data) != namespace:
        raise DeltaRefused(f"not the dictionary of namespace {namespace}", code="piece_corrupt")
    return Dictionary(data)


def load_dictionary(root: Path, namespace: str) -> Dictionary | None:
    """The kept dictionary of ``namespace`` (None for raw). Raises DeltaRefused when it is
    missing or is not the namespace's, OSError on the disk."""
    if namespace == RAW:
        return None
    try:
        data = dictionary_path(root, namespace).read_bytes()
    except FileNotFoundError as exc:
        raise DeltaRefused(f"no dictionary for namespace {namespace}", code="piece_missing") from exc
    return check_dictionary(namespace, data)


def pack(root: Path, namespace: str, idents: Iterable[bytes]) -> Iterator[bytes]:
    """The pack of these pieces from ``root`` (a workspace's or server's pieces directory)."""
    for ident in idents:
        data = piece_path(root, namespace, ident).read_bytes()
        yield _RECORD.pack(ident, len(data)) + data


class Unpacker:
    """Reads a pack as it arrives; ``feed`` returns the complete (id, piece) records."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[bytes, bytes]]:
        self._buffer += data
        records = []
        while len(self._buffer) >= _RECORD.size:
            ident, length = _RECORD.unpack_from(self._buffer)
            if length > MAX_PIECE:
                raise DeltaRefused(f"piece {ident.hex()} claims {length} bytes", code="piece_corrupt")
            end = _RECORD.size + length
            if len(self._buffer) < end:
                break
            records.append((bytes(ident), bytes(self._buffer[_RECORD.size:end])))
            del self._buffer[:end]
        return records

    def finished(self) -> bool:
        return not self._buffer


def keep_piece(root: Path, namespace: str, ident: bytes, piece: bytes,
               unpacker: zstandard.ZstdDecompressor) -> bool:
    """Check a piece and store it under ``root`` (atomically, durably); returns whether it
    was new. Raises DeltaRefused when it does not hold its chunk, PersistError on the disk."""
    path = piece_path(root, namespace, ident)
    if path.exists():
        return False
    unpack_piece(ident, piece, unpacker=unpacker)
    atomic_write_bytes(path, piece)
    return True
