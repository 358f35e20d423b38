"""The device side of the content index: rebuild an image from the chunks the device has
and the pieces it fetches, in place, resumable.

1. ``out`` is sized to the image (space reserved up front: a full disk is found before
   anything is fetched). Chunks an interrupted attempt already wrote are kept: each is
   re-hashed where it belongs.
2. Seeds (the active slot, read-only) are cut the way the index cuts the image; every
   chunk the image needs is copied to each place the index lists it.
3. The rest is fetched piece by piece (a few in parallel), each checked against its id
   before it is written.

Memory: the table of missing chunks (about 200 bytes per chunk: 10 MiB for a 256 MiB
image of 4 KiB blocks) plus a few pieces in flight; nothing scales with the image beyond
that table. The caller verifies ``out`` against the signed image before using it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from edgefleet.delta.index import Index, chunks, max_piece_bytes, piece_id
from edgefleet.delta.pieces import Dictionary, decompressor, unpack_piece
from edgefleet.errors import PersistError, TransportError
from edgefleet.util.stop import StopSignal

Fetch = Callable[[bytes, int], bytes]  # (piece id, most bytes it may have) -> compressed piece
IN_FLIGHT = 8


@dataclass
class Assembled:
    kept_bytes: int = 0  # already in place from an interrupted attempt
    seeded_bytes: int = 0  # copied from the seeds
    fetched_bytes: int = 0  # compressed piece bytes downloaded
    pieces: int = 0  # pieces downloaded


def _missing(index: Index, fd: int, fresh: bool, result: Assembled) -> dict[bytes, tuple[int, list[int]]]:
    """id -> (chunk length, offsets still to write)."""
    wanted: dict[bytes, tuple[int, list[int]]] = {}
    for offset, length, ident in index.offsets():
        if not fresh and piece_id(os.pread(fd, length, offset)) == ident:
            result.kept_bytes += length
            continue
        wanted.setdefault(ident, (length, []))[1].append(offset)
    return wanted


def _write(fd: int, data: bytes, offsets: list[int]) -> None:
    for offset in offsets:
        if os.pwrite(fd, data, offset) != len(data):
            raise OSError(28, "short write")


def _seed(index: Index, fd: int, seed: Path, seed_length: int | None, wanted: dict[bytes, tuple[int, list[int]]],
          result: Assembled, stop: StopSignal) -> None:
    try:
        source = os.open(seed, os.O_RDONLY)
    except OSError:
        return  # a seed that cannot be read only costs downloads
    try:
        for offset, length in chunks(seed, index.mode, seed_length):
            if not wanted:
                return
            if stop.is_set():
                raise TransportError("image assembly interrupted; it resumes from what is written")
            data = os.pread(source, length, offset)
            found = wanted.pop(piece_id(data), None)
            if found is not None:
                offsets = found[1]
                _write(fd, data, offsets)
                result.seeded_bytes += length * len(offsets)
    finally:
        os.close(source)


def _fetched(fetch: Fetch, todo: list[tuple[bytes, int, list[int]]], workers: int,
             stop: StopSignal) -> Iterator[tuple[bytes, int, list[int], bytes]]:
    """Each missing chunk with its piece, fetched ``workers`` at a time, in order."""
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="piece") as pool:
        pending: list[tuple[bytes, int, list[int], Future[bytes]]] = []
        items = iter(todo)
        try:
            while True:
                while len(pending) < IN_FLIGHT and (item := next(items, None)) is not None:
                    ident, length, offsets = item
                    pending.append((ident, length, offsets, pool.submit(fetch, ident, max_piece_bytes(length))))
                if not pending:
                    return
                ident, length, offsets, future = pending.pop(0)
                yield ident, length, offsets, future.result()
                if stop.is_set():
                    raise TransportError("image assembly interrupted; it resumes from what is written")
        finally:
            for *_, future in pending:
                future.cancel()


def assemble(index: Index, out: Path, seeds: list[tuple[Path, int | None]], fetch: Fetch, *,
             dictionary: Dictionary | None = None, stop: StopSignal | None = None,
             workers: int = 4) -> Assembled:
    """Rebuild the image ``index`` describes at ``out``; seeds are (file, bytes to use),
    ``dictionary`` the one of the index's namespace.

    Raises DeltaRefused (a piece does not match its id), TransportError (a piece could not
    be fetched, or ``stop`` was set: what is written stays and the next call keeps it) or
    PersistError (the disk is full or failing).
    """
    stop = stop or threading.Event()
    unpacker = decompressor(dictionary)
    result = Assembled()
    try:
        fresh = not out.exists()
        fd = os.open(out, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size != index.image_length:
                os.ftruncate(fd, index.image_length)
            os.posix_fallocate(fd, 0, index.image_length)
            wanted = _missing(index, fd, fresh, result)
            for seed, seed_length in seeds:
                _seed(index, fd, seed, seed_length, wanted, result, stop)
            todo = [(ident, length, offsets) for ident, (length, offsets) in wanted.items()]
            for ident, length, offsets, piece in _fetched(fetch, todo, workers, stop):
                _write(fd, unpack_piece(ident, piece, length, unpacker=unpacker), offsets)
                result.fetched_bytes += len(piece)
                result.pieces += 1
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise PersistError(f"cannot write {out}: {exc.strerror or exc}") from exc
    return result
