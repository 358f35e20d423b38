"""Known-base deltas: from one release's image to the next, as small as bsdiff makes them,
applied on the device as a stream in bounded memory.

Building (release owners' machine, not the device) runs bsdiff's suffix-sorting matcher
over both images; it needs about 17 bytes of memory per byte of the base image. The result
is three zstd sections: the control triples (add ``x`` bytes of base + difference, copy
``y`` new bytes, move ``z`` in the base), the differences (mostly zeros) and the new bytes.

Applying reads the base (the device's active slot, read-only) at the offsets the control
stream names and writes the new image sequentially. Work is cut into batches of at most
``BATCH_OUT`` output bytes, so memory stays under 80 MiB whatever the image size: three
zstd windows (16 MiB at most each) and one batch of base bytes, differences, new bytes
and output.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import bsdiff4.core

from edgefleet.delta import container
from edgefleet.errors import DeltaRefused, PersistError, TransportError
from edgefleet.util.atomic import atomic_write_bytes
from edgefleet.util.stop import StopSignal

MAGIC = b"EFDELTA1"
BATCH_OUT = 4 << 20
_TRIPLE = struct.Struct("<QQQ")
_SIGN = 1 << 63


@dataclass(frozen=True)
class DeltaInfo:
    base_sha256: str
    base_length: int
    target_sha256: str
    target_length: int
    size: int


def file_sha256(path: Path, length: int | None = None) -> tuple[str, int]:
    """SHA-256 of the first ``length`` bytes of ``path`` (all of it when None) and how many
    bytes there were. Raises OSError."""
    digest, total = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20 if length is None else min(1 << 20, length - total)):
            digest.update(chunk)
            total += len(chunk)
    return digest.hexdigest(), total


def build_delta(base: Path, target: Path, out: Path) -> DeltaInfo:
    """Write the delta that turns ``base`` into ``target`` to ``out``."""
    old, new = base.read_bytes(), target.read_bytes()
    control, diff, extra = bsdiff4.core.diff(old, new)
    del old
    compress = container.compressor()
    info = DeltaInfo(file_sha256(base)[0], base.stat().st_size, hashlib.sha256(new).hexdigest(), len(new), 0)
    header = {"base_sha256": info.base_sha256, "base_length": info.base_length, "target_sha256": info.target_sha256,
              "target_length": info.target_length, "triples": len(control) // _TRIPLE.size}
    sections = [compress.compress(control), compress.compress(diff), compress.compress(extra)]
    atomic_write_bytes(out, container.encode(MAGIC, header, sections))
    return replace(info, size=out.stat().st_size)


def _signed(value: int) -> int:
    return -(value & ~_SIGN) if value & _SIGN else value


def _triples(control: container.Section, count: int) -> Iterator[tuple[int, int, int]]:
    size = _TRIPLE.size
    for chunk in control.chunks(size * 4096, count * size):
        for x, y, z in _TRIPLE.iter_unpack(chunk):
            yield _signed(x), _signed(y), _signed(z)


def _pieces(x: int, y: int) -> Iterator[tuple[int, int]]:
    """One triple's add and copy lengths, cut so that no piece outgrows a batch."""
    while x > BATCH_OUT:
        yield BATCH_OUT, 0
        x -= BATCH_OUT
    while y > BATCH_OUT:
        yield x, BATCH_OUT
        x, y = 0, y - BATCH_OUT
    yield x, y


def _read(base: int, base_length: int, start: int, length: int) -> bytes:
    """``length`` base bytes from ``start``; bytes outside the base are zeros, as in bspatch."""
    lo, hi = max(0, start), min(base_length, start + length)
    if hi <= lo:
        return bytes(length)
    data = os.pread(base, hi - lo, lo)
    if len(data) != hi - lo:
        raise DeltaRefused("the base is shorter than the delta needs", code="delta_wrong_base")
    return bytes(lo - start) + data + bytes(start + length - hi)


class _Batch:
    """Pieces applied by one call into bsdiff. The base bytes they add to are read one
    after the other into a window of their own, so no piece moves in it: memory is the
    batch's output, its differences and its new bytes, at most ``BATCH_OUT`` each."""

    def __init__(self) -> None:
        self.control: list[bytes] = []
        self.reads: list[tuple[int, int]] = []
        self.out = self.diff = self.extra = 0

    def fits(self, x: int, y: int) -> bool:
        return not self.control or self.out + x + y <= BATCH_OUT

    def add(self, start: int, x: int, y: int) -> None:
        self.control.append(_TRIPLE.pack(x, y, 0))
        if x:
            last = self.reads[-1] if self.reads else None
            if last is not None and last[0] + last[1] == start:
                self.reads[-1] = (last[0], last[1] + x)  # one read for adjacent ranges
            else:
                self.reads.append((start, x))
        self.out, self.diff, self.extra = self.out + x + y, self.diff + x, self.extra + y

    def apply(self, base: int, base_length: int, diff: container.Section, extra: container.Section) -> bytes:
        window = b"".join(_read(base, base_length, start, length) for start, length in self.reads)
        try:
            result: bytes = bsdiff4.core.patch(window, self.out, b"".join(self.control), diff.read(self.diff),
                                               extra.read(self.extra))
        except (ValueError, RuntimeError) as exc:
            raise DeltaRefused(f"delta does not apply: {exc}", code="delta_corrupt") from exc
        return result


def apply_delta(delta: Path, base: Path, out: Path, stop: StopSignal | None = None, *,
                base_verified: bool = False) -> int:
    """Write the image ``delta`` makes from ``base`` to ``out``; returns its length.

    ``base`` is only read, and first hashed unless ``base_verified`` (the caller checked it
    against the header's ``base_sha256``). ``out`` is written from the start; the caller verifies it
    against the signed image. Raises DeltaRefused (corrupt, truncated, wrong base: nothing
    usable is left in ``out``), PersistError (the disk), TransportError (``stop`` was set).
    """
    stop = stop or threading.Event()
    handle, header, offsets, sizes = container.open_sections(delta, MAGIC, "delta")
    try:
        if len(sizes) != 3:
            raise DeltaRefused("a delta has three sections", code="delta_malformed")
        target_length, base_length = int(header["target_length"]), int(header["base_length"])
        if not base_verified and file_sha256(base, base_length) != (header["base_sha256"], base_length):
            raise DeltaRefused(f"{base} is not the image this delta was made from", code="delta_wrong_base")
        control = container.Section(handle, offsets[0], sizes[0], "delta control")
        diff = container.Section(handle, offsets[1], sizes[1], "delta differences")
        extra = container.Section(handle, offsets[2], sizes[2], "delta new bytes")
        base_fd = os.open(base, os.O_RDONLY)
        try:
            return _run(base_fd, base_length, target_length, header, control, diff, extra, out, stop)
        finally:
            os.close(base_fd)
    except (KeyError, TypeError, ValueError) as exc:
        raise DeltaRefused(f"delta header lacks {exc}", code="delta_malformed") from exc
    finally:
        handle.close()


def _run(base: int, base_length: int, target_length: int, header: dict[str, object], control: container.Section,
         diff: container.Section, extra: container.Section, out: Path, stop: StopSignal) -> int:
    written, position = 0, 0
    digest = hashlib.sha256()
    try:
        with open(out, "wb") as sink:
            batch = _Batch()

            def flush() -> None:
                nonlocal written, batch
                if stop.is_set():
                    raise TransportError("delta apply interrupted; it starts over next time")
                data = batch.apply(base, base_length, diff, extra)
                if written + len(data) > target_length:
                    raise DeltaRefused("delta makes more bytes than its header says", code="delta_corrupt")
                sink.write(data)
                digest.update(data)
                written += len(data)
                batch = _Batch()

            for x, y, z in _triples(control, _count(header)):
                if x < 0 or y < 0:
                    raise DeltaRefused("delta control has a negative length", code="delta_corrupt")
                for px, py in _pieces(x, y):
                    if not batch.fits(px, py):
                        flush()
                    batch.add(position, px, py)
                    position += px
                position += z
            if batch.control:
                flush()
            sink.flush()
            os.fsync(sink.fileno())
    except OSError as exc:
        raise PersistError(f"cannot write {out}: {exc.strerror or exc}") from exc
    if not (diff.finished() and extra.finished()):
        raise DeltaRefused("delta holds more bytes than its control uses", code="delta_corrupt")
    if written != target_length or digest.hexdigest() != header.get("target_sha256"):
        raise DeltaRefused("the image the delta made does not hash to its target", code="delta_wrong_result")
    return written


def _count(header: dict[str, object]) -> int:
    count = header.get("triples")
    if not isinstance(count, int) or count < 0:
        raise DeltaRefused("delta header lacks its triple count", code="delta_malformed")
    return count
