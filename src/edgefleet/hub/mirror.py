"""The hub's pull-through cache of the image repository: devices at the site fetch
metadata and artifacts from the hub, which fetches each from upstream once.

Safe without trusting the hub: devices verify everything with TUF. The hub still checks
what it can before keeping a file: a target's name starts with its sha256 (consistent
snapshots), a piece decompresses to the chunk its name is the hash of (with its
namespace's dictionary, whose name is its own hash), and a file that does not match is not
cached. Versioned metadata
(``3.targets.json``) and targets never change, so they are kept until the cache's byte
bound evicts the least recently used; ``timestamp.json`` changes, so it is fetched from
upstream every time and the cached copy is served only while upstream is unreachable
(devices refuse it once it expires)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from edgefleet.delta.index import RAW
from edgefleet.delta.pieces import check_dictionary, decompressor, unpack_piece
from edgefleet.errors import DeltaRefused, InvalidRequest, NotFound, TransportError

log = logging.getLogger("edgefleet.hub")
_PATH = re.compile(r"^(metadata|targets|pieces)/([A-Za-z0-9._-]+/)*[A-Za-z0-9._-]+$")
_PIECE = re.compile(r"^pieces/(raw|[0-9a-f]{32})/[0-9a-f]{2}/([0-9a-f]{32})$")
_DICTIONARY = re.compile(r"^pieces/([0-9a-f]{32})/dictionary$")
_TARGET = re.compile(r"^([0-9a-f]{64})\.")
_VERSIONED = re.compile(r"^\d+\.")


@dataclass
class MirrorCache:
    directory: Path
    upstream: str  # e.g. https://fleet.example:8443/repository
    client: httpx.AsyncClient
    max_bytes: int = 20 << 30
    hits: int = 0
    misses: int = 0
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    @staticmethod
    def _check(path: str) -> str:
        if not _PATH.fullmatch(path) or ".." in path.split("/"):
            raise InvalidRequest(f"not a repository path: {path!r}", code="bad_path")
        return path

    async def get(self, path: str) -> Path:
        """The local file for ``path``, fetched from upstream if need be. Raises NotFound
        (upstream has no such file), TransportError (upstream unreachable, nothing cached),
        InvalidRequest (not a repository path)."""
        self._check(path)
        local = self.directory / path
        name = path.rsplit("/", 1)[-1]
        immutable = path.startswith(("targets/", "pieces/")) or bool(_VERSIONED.match(name))
        if immutable and local.exists():
            self.hits += 1
            os.utime(local)  # recently used
            return local
        lock = self._locks.setdefault(path, asyncio.Lock())
        async with lock:
            if immutable and local.exists():  # another request fetched it meanwhile
                self.hits += 1
                return local
            try:
                await self._fetch(path, local)
            except TransportError:
                if local.exists():
                    log.warning("upstream unreachable: serving the cached %s", path)
                    self.hits += 1
                    return local
                raise
            self.misses += 1
        await asyncio.to_thread(self._evict)
        return local

    async def _fetch(self, path: str, local: Path) -> None:
        url = f"{self.upstream.rstrip('/')}/{path}"
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f".{local.name}.partial")
        digest = hashlib.sha256()
        try:
            async with self.client.stream("GET", url) as response:
                if response.status_code == 404:
                    raise NotFound(f"upstream has no {path}")
                if response.status_code != 200:
                    raise TransportError(f"GET {url}: HTTP {response.status_code}")
                with partial.open("wb") as out:
                    async for chunk in response.aiter_bytes(1 << 16):
                        digest.update(chunk)
                        await asyncio.to_thread(out.write, chunk)
                    out.flush()
                    os.fsync(out.fileno())
        except httpx.HTTPError as exc:
            partial.unlink(missing_ok=True)
            raise TransportError(f"GET {url}: {exc.__class__.__name__}: {exc}") from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        named = _TARGET.match(path.rsplit("/", 1)[-1]) if path.startswith("targets/") else None
        if named is not None and named.group(1) != digest.hexdigest():
            partial.unlink(missing_ok=True)
            log.error("upstream sent %s with sha256 %s: not cached, not served", path, digest.hexdigest())
            raise TransportError(f"upstream sent a corrupt {path}")
        try:
            await self._check_piece(path, partial)
        except DeltaRefused as exc:
            partial.unlink(missing_ok=True)
            log.error("upstream sent a corrupt %s: not cached, not served (%s)", path, exc.message)
            raise TransportError(f"upstream sent a corrupt {path}") from exc
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        partial.replace(local)

    async def _check_piece(self, path: str, partial: Path) -> None:
        """A piece must hold the chunk it is named for (its namespace's dictionary, fetched
        through this cache, decompresses it); a dictionary must be its namespace's."""
        named = _PIECE.match(path)
        dictionary = None
        if named is not None and named.group(1) != RAW:
            dictionary = await self.get(f"pieces/{named.group(1)}/dictionary")
        await asyncio.to_thread(_verify_piece, path, partial, dictionary)

    def _evict(self) -> None:
        files = [(p.stat().st_mtime, p.stat().st_size, p) for p in self.directory.rglob("*")
                 if p.is_file() and not p.name.startswith(".")]
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size
            log.info("mirror cache over %d bytes: evicted %s", self.max_bytes, path)

    def bytes(self) -> int:
        return sum(p.stat().st_size for p in self.directory.rglob("*") if p.is_file())


def _verify_piece(path: str, partial: Path, dictionary: Path | None) -> None:
    """Raises DeltaRefused when ``partial`` is not what ``path`` names (pieces only)."""
    if (named := _DICTIONARY.match(path)) is not None:
        check_dictionary(named.group(1), partial.read_bytes())
    elif (named := _PIECE.match(path)) is not None:
        data = None if dictionary is None else check_dictionary(named.group(1), dictionary.read_bytes())
        unpack_piece(bytes.fromhex(named.group(2)), partial.read_bytes(), unpacker=decompressor(data))
