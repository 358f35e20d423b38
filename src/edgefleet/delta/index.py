"""The any-base content index of an image, and the pieces it names.

The image is cut into chunks: fixed 4 KiB blocks when it is block-aligned (erofs, ext4,
anything whose files start on block boundaries), content-defined chunks (FastCDC, 2-8-32
KiB) otherwise. Each distinct chunk is one *piece*: zstd-compressed on its own and stored
as ``pieces/<namespace>/<id[:2]>/<id>``, where the id is the first 128 bits of the chunk's
SHA-256. Pieces are named by their content, so any dumb mirror, CDN or hub cache can
serve them and the same chunk in two releases is one file.

Chunks of 4 KiB compress poorly on their own, so pieces are compressed with a zstd
dictionary trained on the image (256 KiB): the namespace is the dictionary's id, and the
dictionary itself is ``pieces/<namespace>/dictionary``. A workspace keeps one dictionary
for its later releases, so their pieces stay shared and a device that kept the dictionary
does not fetch it again. The namespace ``raw`` holds pieces compressed without one.

The index (a signed TUF target of the release) lists every chunk of the image in order:
its id and length. A device rebuilds the image from the chunks it already has (its active
slot, an interrupted attempt) and fetches only the pieces it lacks.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import zstandard
from fastcdc import fastcdc

from edgefleet.delta import container
from edgefleet.delta.erofs import BLOCK, is_erofs
from edgefleet.errors import DeltaRefused
from edgefleet.util.atomic import atomic_write_bytes

MAGIC = b"EFINDEX1"
ID_BYTES = 16
CDC = (2048, 8192, 32768)  # FastCDC minimum, average and maximum chunk sizes
MAX_CHUNK = max(BLOCK, CDC[2])
RAW = "raw"
DICTIONARY_BYTES = 256 * 1024
MAX_DICTIONARY = 1 << 20
_LENGTH = struct.Struct("<I")


def piece_id(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:ID_BYTES]


def namespace_of(dictionary: bytes | None) -> str:
    return RAW if dictionary is None else piece_id(dictionary).hex()


def piece_path(root: Path, namespace: str, ident: bytes | str) -> Path:
    name = ident if isinstance(ident, str) else ident.hex()
    return root / namespace / name[:2] / name


def piece_url(base: str, namespace: str, ident: bytes) -> str:
    name = ident.hex()
    return f"{base.rstrip('/')}/pieces/{namespace}/{name[:2]}/{name}"


def dictionary_path(root: Path, namespace: str) -> Path:
    return root / namespace / "dictionary"


def dictionary_url(base: str, namespace: str) -> str:
    return f"{base.rstrip('/')}/pieces/{namespace}/dictionary"


def max_piece_bytes(length: int) -> int:
    """The most a compressed piece of ``length`` bytes may take (zstd's bound, rounded up)."""
    return length + (length >> 7) + 512


def chunks(path: Path, mode: str, length: int | None = None) -> Iterator[tuple[int, int]]:
    """(offset, length) of each chunk of the first ``length`` bytes of ``path`` (all of it
    when None): the same cut the index of an image with this ``mode`` makes."""
    size = os.stat(path).st_size if length is None else length
    if size == 0 and length is None:
        with open(path, "rb") as handle:  # a block device reports size 0: ask it
            size = handle.seek(0, os.SEEK_END)
    if mode == "blocks":
        for offset in range(0, size, BLOCK):
            yield offset, min(BLOCK, size - offset)
        return
    if size == 0:
        return
    # Mapped, not read: the pages are the page cache's, not the process's heap.
    with open(path, "rb") as handle, mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ) as mapped:
        view = memoryview(mapped)
        try:
            for chunk in fastcdc(view, *CDC):
                yield chunk.offset, chunk.length
        finally:
            view.release()


def choose_mode(image: Path) -> str:
    return "blocks" if is_erofs(image) else "cdc"


def train_dictionary(image: Path, mode: str | None = None) -> bytes | None:
    """A zstd dictionary for the chunks of ``image``, from a deterministic sample of them:
    ``DICTIONARY_BYTES``, or 1/64 of the image if that is less. None when the image is too
    small or too uniform to train one (its pieces are then compressed without)."""
    mode = mode or choose_mode(image)
    size = min(DICTIONARY_BYTES, image.stat().st_size // 64)
    with open(image, "rb") as handle:
        cuts = list(chunks(image, mode))
        picked = random.Random(0).sample(cuts, min(len(cuts), 20_000))
        samples: list[bytes | bytearray | memoryview] = []
        for offset, length in sorted(picked):
            handle.seek(offset)
            data = handle.read(length)
            if data.count(0) != len(data):
                samples.append(data)
    if size < 4096 or len(samples) < 64:
        return None
    try:
        # Fixed cover parameters: zstd's search for them takes minutes on a 200 MiB image and
        # found a dictionary no better on the Debian pair of bench/delta.py (k=512, d=6: 20 s).
        trained = zstandard.train_dictionary(size, samples, k=512, d=6, level=container.LEVEL)
    except zstandard.ZstdError:
        return None
    return bytes(trained.as_bytes())


@dataclass(frozen=True)
class Index:
    mode: str
    image_sha256: str
    image_length: int
    ids: bytes  # ID_BYTES per chunk, in image order
    lengths: tuple[int, ...]
    pieces: int  # distinct pieces
    pieces_bytes: int  # their compressed size, all together
    namespace: str  # RAW, or the id of the dictionary the pieces were compressed with
    dictionary_length: int

    def __len__(self) -> int:
        return len(self.lengths)

    def id(self, i: int) -> bytes:
        return self.ids[i * ID_BYTES:(i + 1) * ID_BYTES]

    def offsets(self) -> Iterator[tuple[int, int, bytes]]:
        """(offset, length, id) of every chunk."""
        offset = 0
        for i, length in enumerate(self.lengths):
            yield offset, length, self.id(i)
            offset += length

    @classmethod
    def load(cls, path: Path) -> Index:
        """Raises DeltaRefused when the file is not a consistent index."""
        handle, header, offsets, sizes = container.open_sections(path, MAGIC, "content index")
        try:
            mode, count = header.get("mode"), header.get("entries")
            if mode not in ("blocks", "cdc") or not isinstance(count, int) or count < 0 or len(sizes) != 1:
                raise DeltaRefused("content index header is not valid", code="delta_malformed")
            body = container.Section(handle, offsets[0], sizes[0], "content index").read(count * (ID_BYTES + 4))
            lengths = tuple(n for (n,) in _LENGTH.iter_unpack(body[count * ID_BYTES:]))
            index = cls(mode, str(header["image_sha256"]), int(header["image_length"]), body[:count * ID_BYTES],
                        lengths, int(header["pieces"]), int(header["pieces_bytes"]), str(header["namespace"]),
                        int(header["dictionary_length"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise DeltaRefused(f"content index header lacks {exc}", code="delta_malformed") from exc
        finally:
            handle.close()
        if sum(lengths) != index.image_length or any(not 0 < n <= MAX_CHUNK for n in lengths):
            raise DeltaRefused("content index chunks do not add up to its image", code="delta_malformed")
        valid_namespace = index.namespace == RAW or (len(index.namespace) == 32 and all(
            c in "0123456789abcdef" for c in index.namespace))
        if not valid_namespace or not 0 <= index.dictionary_length <= MAX_DICTIONARY:
            raise DeltaRefused("content index names no valid dictionary", code="delta_malformed")
        return index


@dataclass(frozen=True)
class IndexInfo:
    size: int
    entries: int
    pieces: int
    pieces_bytes: int
    mode: str
    namespace: str


def store_dictionary(pieces_dir: Path, dictionary: bytes) -> str:
    """Keep ``dictionary`` in its namespace; returns the namespace."""
    namespace = namespace_of(dictionary)
    path = dictionary_path(pieces_dir, namespace)
    if not path.exists():
        atomic_write_bytes(path, dictionary)
    return namespace


def build_index(image: Path, out: Path, pieces_dir: Path, mode: str | None = None,
                dictionary: bytes | None = None) -> IndexInfo:
    """Write the content index of ``image`` to ``out`` and every piece it names that
    ``pieces_dir`` lacks, compressed with ``dictionary`` (none: the raw namespace).
    ``mode`` defaults to blocks for erofs images, cdc otherwise."""
    mode = mode or choose_mode(image)
    namespace = RAW if dictionary is None else store_dictionary(pieces_dir, dictionary)
    compress = zstandard.ZstdCompressor(
        level=container.LEVEL, write_checksum=False, write_content_size=True, write_dict_id=False,
        dict_data=None if dictionary is None else zstandard.ZstdCompressionDict(dictionary))
    ids, lengths, seen = bytearray(), bytearray(), set()
    pieces_bytes, digest = 0, hashlib.sha256()
    with open(image, "rb") as handle:
        for offset, length in chunks(image, mode):
            handle.seek(offset)
            data = handle.read(length)
            digest.update(data)
            ident = piece_id(data)
            ids += ident
            lengths += _LENGTH.pack(length)
            if ident in seen:
                continue
            seen.add(ident)
            path = piece_path(pieces_dir, namespace, ident)
            if not path.exists():
                atomic_write_bytes(path, compress.compress(data))
            pieces_bytes += path.stat().st_size
    header = {"mode": mode, "block": BLOCK, "cdc": list(CDC), "entries": len(lengths) // 4,
              "image_sha256": digest.hexdigest(), "image_length": image.stat().st_size, "pieces": len(seen),
              "pieces_bytes": pieces_bytes, "id": "sha256-128", "namespace": namespace,
              "dictionary_length": 0 if dictionary is None else len(dictionary)}
    table = container.compressor().compress(bytes(ids) + bytes(lengths))
    atomic_write_bytes(out, container.encode(MAGIC, header, [table]))
    return IndexInfo(out.stat().st_size, len(lengths) // 4, len(seen), pieces_bytes, mode, namespace)
