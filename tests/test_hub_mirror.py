"""The hub's pull-through cache of the image repository, against a real HTTP upstream:
each file fetched once; a target whose bytes do not match the sha256 in its name is
neither kept nor served; timestamp.json is asked upstream every time and the cached copy
serves only while upstream is down; the byte bound evicts the least recently used."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import httpx
import pytest

from edgefleet.errors import InvalidRequest, NotFound, TransportError
from edgefleet.hub.mirror import MirrorCache
from tests.releases_world import StaticMirror


def target_name(content: bytes, name: str) -> str:
    return f"targets/os/{hashlib.sha256(content).hexdigest()}.{name}"


def populate(root: Path) -> dict[str, bytes]:
    files = {"metadata/1.root.json": b'{"root": 1}', "metadata/timestamp.json": b'{"timestamp": 1}',
             target_name(b"A" * 5000, "a.img"): b"A" * 5000, target_name(b"B" * 5000, "b.img"): b"B" * 5000}
    for path, content in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(content)
    return files


def test_the_mirror_fetches_once_verifies_targets_and_serves_the_cache_while_upstream_is_down(tmp_path: Path) -> None:
    upstream_dir = tmp_path / "upstream"
    files = populate(upstream_dir)
    corrupt = target_name(b"what was signed", "c.img")
    (upstream_dir / corrupt).write_bytes(b"something else")
    upstream = StaticMirror(upstream_dir)

    async def scenario() -> None:
        async with httpx.AsyncClient() as client:
            cache = MirrorCache(tmp_path / "cache", upstream.url, client, max_bytes=1 << 20)
            for path, content in files.items():
                assert (await cache.get(path)).read_bytes() == content
            for path in files:
                await cache.get(path)
            assert (cache.misses, cache.hits) == (5, 3)  # timestamp.json is asked upstream every time
            with pytest.raises(TransportError):
                await cache.get(corrupt)
            assert not (tmp_path / "cache" / corrupt).exists()
            with pytest.raises(NotFound):
                await cache.get("metadata/2.root.json")
            for bad in ("../etc/passwd", "metadata/../../x", "other/file", "targets/a b"):
                with pytest.raises(InvalidRequest):
                    await cache.get(bad)
            (upstream_dir / "metadata" / "timestamp.json").write_bytes(b'{"timestamp": 2}')
            assert (await cache.get("metadata/timestamp.json")).read_bytes() == b'{"timestamp": 2}'
            upstream.close()  # the uplink is gone: what is cached still serves
            for path in files:
                assert (await cache.get(path)).exists()
            assert (await cache.get("metadata/timestamp.json")).read_bytes() == b'{"timestamp": 2}'
            with pytest.raises(TransportError):
                await cache.get("metadata/2.targets.json")

    try:
        asyncio.run(scenario())
    finally:
        upstream.close()


def test_the_mirror_evicts_the_least_recently_used_beyond_its_bound(tmp_path: Path) -> None:
    upstream = StaticMirror(tmp_path / "upstream")
    files = populate(tmp_path / "upstream")
    a, b = (path for path in files if path.startswith("targets/"))

    async def scenario() -> None:
        async with httpx.AsyncClient() as client:
            cache = MirrorCache(tmp_path / "cache", upstream.url, client, max_bytes=7000)
            await cache.get(a)
            await asyncio.sleep(0.02)
            await cache.get(b)
            assert not (tmp_path / "cache" / a).exists()
            assert (tmp_path / "cache" / b).exists()
            assert cache.bytes() <= 7000

    try:
        asyncio.run(scenario())
    finally:
        upstream.close()


def test_the_mirror_caches_pieces_with_their_dictionary_and_refuses_a_piece_that_is_not_its_chunk(
        tmp_path: Path) -> None:
    import random

    from edgefleet.delta.index import build_index, dictionary_path, piece_path, train_dictionary

    image = tmp_path / "image"
    image.write_bytes(b"".join(random.Random(i % 7).randbytes(1024) * 4 for i in range(256)))
    upstream_dir = tmp_path / "upstream"
    dictionary = train_dictionary(image, "blocks")
    assert dictionary is not None
    info = build_index(image, tmp_path / "index", upstream_dir / "pieces", "blocks", dictionary)
    pieces = sorted(p for p in (upstream_dir / "pieces").rglob("*") if p.is_file() and p.name != "dictionary")
    good, bad = pieces[0], pieces[1]
    bad.write_bytes(good.read_bytes())  # a valid piece under another chunk's name
    upstream = StaticMirror(upstream_dir)

    def path(file: Path) -> str:
        return str(file.relative_to(upstream_dir))

    async def scenario() -> None:
        async with httpx.AsyncClient() as client:
            cache = MirrorCache(tmp_path / "cache", upstream.url, client, max_bytes=1 << 20)
            assert (await cache.get(path(good))).read_bytes() == good.read_bytes()
            assert (tmp_path / "cache" / path(dictionary_path(upstream_dir / "pieces", info.namespace))).exists()
            with pytest.raises(TransportError):
                await cache.get(path(bad))
            assert not (tmp_path / "cache" / path(bad)).exists()
            assert piece_path(tmp_path / "cache" / "pieces", info.namespace, good.name).exists()

    try:
        asyncio.run(scenario())
    finally:
        upstream.close()
