"""The delta formats on their own: a known-base delta rebuilds its target exactly in
bounded batches, refuses another base and every damaged file; the content index cuts
block-aligned images in blocks and others by content; pieces that claim too much are
refused before anything is allocated; the server keeps only pieces that hold their chunk;
reproducible erofs images come out byte for byte the same."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import zstandard

from edgefleet.clock import SystemClock
from edgefleet.delta import bsdelta
from edgefleet.delta.assemble import assemble
from edgefleet.delta.erofs import build_erofs, is_erofs
from edgefleet.delta.index import Index, build_index, piece_id, piece_path
from edgefleet.delta.pieces import pack, unpack_piece
from edgefleet.errors import DeltaRefused, InvalidRequest
from edgefleet.server.repository import RepositoryService
from tests.conftest import need


def edited(data: bytes, seed: int, edits: int = 40) -> bytes:
    rng = random.Random(seed)
    out = bytearray(data)
    for _ in range(edits):
        at = rng.randrange(len(out))
        out[at:at + rng.randrange(1, 2000)] = rng.randbytes(rng.randrange(0, 2000))
    return bytes(out)


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    base = random.Random(1).randbytes(600_000)
    new = edited(base[200_000:] + base[:200_000], 2, edits=10)  # moved around, and edited
    (tmp_path / "base").write_bytes(base)
    (tmp_path / "new").write_bytes(new)
    return tmp_path / "base", tmp_path / "new"


@pytest.mark.parametrize("batch", [4096, 65536, bsdelta.BATCH_OUT])
def test_a_delta_rebuilds_its_target_exactly_whatever_the_batch_size(batch: int, pair: tuple[Path, Path],
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    base, new = pair
    info = bsdelta.build_delta(base, new, tmp_path / "delta")
    assert info.size < new.stat().st_size // 4
    monkeypatch.setattr(bsdelta, "BATCH_OUT", batch)
    assert bsdelta.apply_delta(tmp_path / "delta", base, tmp_path / "out") == new.stat().st_size
    assert (tmp_path / "out").read_bytes() == new.read_bytes()


def test_a_delta_refuses_another_base_before_writing_anything(pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, new = pair
    bsdelta.build_delta(base, new, tmp_path / "delta")
    other = tmp_path / "other"
    other.write_bytes(edited(base.read_bytes(), 3, edits=1))
    with pytest.raises(DeltaRefused) as refused:
        bsdelta.apply_delta(tmp_path / "delta", other, tmp_path / "out")
    assert refused.value.code == "delta_wrong_base"
    assert not (tmp_path / "out").exists()


def test_every_damaged_delta_is_refused(pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, new = pair
    good = bsdelta.build_delta(base, new, tmp_path / "delta")
    data = (tmp_path / "delta").read_bytes()
    rng = random.Random(4)
    for round_ in range(150):
        damaged = bytearray(data)
        if round_ % 3 == 0:
            del damaged[rng.randrange(len(damaged)):]
        else:
            damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        (tmp_path / "bad").write_bytes(bytes(damaged))
        try:
            bsdelta.apply_delta(tmp_path / "bad", base, tmp_path / "out", base_verified=True)
        except DeltaRefused:
            continue
        # A flip in the header's spare bytes may leave the delta whole: then it must be exact.
        assert (tmp_path / "out").read_bytes() == new.read_bytes()
    assert good.target_length == new.stat().st_size


def test_every_damaged_index_is_refused(pair: tuple[Path, Path], tmp_path: Path) -> None:
    _, new = pair
    build_index(new, tmp_path / "index", tmp_path / "pieces", "cdc")
    data = (tmp_path / "index").read_bytes()
    for cut in range(0, len(data), max(1, len(data) // 40)):
        (tmp_path / "bad").write_bytes(data[:cut])
        with pytest.raises(DeltaRefused):
            Index.load(tmp_path / "bad")
    damaged = bytearray(data)
    damaged[-10] ^= 0xFF  # inside the compressed table: zstd's checksum catches it
    (tmp_path / "bad").write_bytes(bytes(damaged))
    with pytest.raises(DeltaRefused):
        Index.load(tmp_path / "bad")


def test_content_defined_chunks_find_what_moved_in_an_image_that_is_not_block_aligned(
        pair: tuple[Path, Path], tmp_path: Path) -> None:
    base, new = pair
    info = build_index(new, tmp_path / "index", tmp_path / "pieces")
    assert info.mode == "cdc"  # not erofs
    index = Index.load(tmp_path / "index")

    def fetch(ident: bytes, limit: int) -> bytes:
        data = piece_path(tmp_path / "pieces", "raw", ident).read_bytes()
        assert len(data) <= limit
        return data

    done = assemble(index, tmp_path / "out", [(base, None)], fetch)
    assert (tmp_path / "out").read_bytes() == new.read_bytes()
    assert done.seeded_bytes > new.stat().st_size // 2  # most of it came from the old image
    again = assemble(index, tmp_path / "out", [], fetch)
    assert (again.kept_bytes, again.pieces) == (new.stat().st_size, 0)  # all kept, nothing fetched


def test_a_piece_claiming_more_than_its_chunk_is_refused_before_it_is_decompressed() -> None:
    huge = zstandard.ZstdCompressor(write_content_size=True).compress(bytes(1 << 20))
    with pytest.raises(DeltaRefused, match="claims"):
        unpack_piece(piece_id(bytes(4096)), huge, 4096)
    rng = random.Random(5)
    for _ in range(2000):
        with pytest.raises(DeltaRefused):
            unpack_piece(b"x" * 16, b"\x28\xb5\x2f\xfd" + rng.randbytes(60), 4096)


def test_the_server_keeps_only_pieces_that_hold_their_chunk(pair: tuple[Path, Path], tmp_path: Path) -> None:
    _, new = pair
    build_index(new, tmp_path / "index", tmp_path / "pieces", "blocks")
    index = Index.load(tmp_path / "index")
    ids = sorted({index.id(i) for i in range(len(index))})
    service = RepositoryService(tmp_path / "server", SystemClock(), 1 << 30)
    records = list(pack(tmp_path / "pieces", "raw", ids))

    async def stream(parts: list[bytes]) -> AsyncIterator[bytes]:
        data = b"".join(parts)
        for at in range(0, len(data), 1000):  # cut across records, as a network would
            yield data[at:at + 1000]

    good = records[:5]
    forged = records[5][:16] + records[6][16:]  # one piece's id on another's bytes
    with pytest.raises(InvalidRequest):
        asyncio.run(service.store_pieces("raw", stream([*good, forged])))
    assert service.missing_pieces("raw", [i.hex() for i in ids[:7]]) == [ids[5].hex(), ids[6].hex()]
    with pytest.raises(InvalidRequest, match="ends inside"):
        asyncio.run(service.store_pieces("raw", stream([records[7][:-1]])))
    assert asyncio.run(service.store_pieces("raw", stream(records))) == len(ids) - 5
    assert service.missing_pieces("raw", [i.hex() for i in ids]) == []


def test_erofs_images_are_reproducible_and_cut_in_blocks(tmp_path: Path) -> None:
    if shutil.which("mkfs.erofs") is None:
        need("erofs-utils", "mkfs.erofs is not installed")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("IMAGE_VERSION=1\n")
    (root / "bin").mkdir()
    (root / "bin" / "tool").write_bytes(random.Random(6).randbytes(50_000))
    first = build_erofs(root, tmp_path / "1.img", name="store-image")
    os.utime(root / "bin" / "tool", (1, 1))  # a later checkout: other mtimes, same content
    second = build_erofs(root, tmp_path / "2.img", name="store-image")
    assert first.read_bytes() == second.read_bytes()
    assert is_erofs(first)
    assert first.stat().st_size % 4096 == 0
    assert build_index(first, tmp_path / "index", tmp_path / "pieces").mode == "blocks"
