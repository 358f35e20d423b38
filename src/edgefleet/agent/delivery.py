"""How a device gets a release's image into ``downloads/``: the smallest way that works,
each verified against the same signed image target.

1. **Known-base delta**: the release's delta from the image the device runs (a signed
   target naming that image's sha256), applied from the active slot.
2. **Content index**: the release's index (a signed target); chunks come from the active
   slot and from an interrupted attempt, the rest as pieces from the mirrors.
3. **Full download**, resumable.

The active slot is a seed only when it hashes to the signed target of the release the
device runs: a slot that was tampered with (or a release the repository does not list)
gets the full download. A delta or index that is corrupt, truncated, for another base,
or whose result does not verify is logged and the next way is tried; a lost link stops
the attempt (``TransportError``) and the next one resumes. The active slot is only read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from tuf.api.metadata import TargetFile

from edgefleet.agent.download import fetch_target, verify_target
from edgefleet.errors import DeltaRefused, PersistError, TransportError, UpdateRefused
from edgefleet.releases.image import release_fields
from edgefleet.util.atomic import atomic_write_bytes
from edgefleet.util.stop import StopSignal

if TYPE_CHECKING:  # the delta code (fastcdc, bsdiff4, zstandard) loads when an update uses it
    from edgefleet.delta.index import Index
    from edgefleet.delta.pieces import Dictionary

log = logging.getLogger("edgefleet.agent.delivery")


@dataclass(frozen=True)
class Running:
    """What the device runs: its active slot (read-only) and that release's signed target."""

    slot: Path
    target: TargetFile | None


@dataclass(frozen=True)
class Delivery:
    path: Path
    method: str  # delta, index, full, or kept (verified earlier)
    downloaded_bytes: int  # fetched by the attempt that completed
    image_bytes: int

    def report(self) -> dict[str, object]:
        return {"method": self.method, "downloaded_bytes": self.downloaded_bytes, "image_bytes": self.image_bytes,
                "saved_bytes": max(0, self.image_bytes - self.downloaded_bytes)}


def slot_matches(running: Running) -> bool:
    """Whether the active slot holds exactly the signed image of the running release."""
    from edgefleet.delta.bsdelta import file_sha256

    target = running.target
    if target is None:
        return False
    try:
        return file_sha256(running.slot, target.length) == (target.hashes.get("sha256"), target.length)
    except OSError:
        return False


class PieceFetcher:
    """Pieces of one namespace from the mirrors, in turn; bounded, and checked by the caller."""

    def __init__(self, client: httpx.Client, mirrors: list[str], namespace: str) -> None:
        self.client, self.mirrors, self.namespace = client, mirrors, namespace

    def __call__(self, ident: bytes, limit: int) -> bytes:
        from edgefleet.delta.index import piece_url

        return self.get(piece_url("{mirror}", self.namespace, ident), ident.hex(), limit)

    def dictionary(self, length: int) -> bytes:
        from edgefleet.delta.index import dictionary_url

        return self.get(dictionary_url("{mirror}", self.namespace), f"dictionary {self.namespace}", length)

    def get(self, address: str, what: str, limit: int) -> bytes:
        errors, missing = [], 0
        for mirror in self.mirrors:
            url = address.replace("{mirror}", mirror.rstrip("/"), 1)
            try:
                with self.client.stream("GET", url) as response:
                    if response.status_code == 404:
                        missing += 1
                        continue
                    if response.status_code != 200:
                        errors.append(f"{url}: HTTP {response.status_code}")
                        continue
                    parts, size = [], 0
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > limit:
                            raise DeltaRefused(f"piece {what} is over {limit} bytes", code="piece_corrupt")
                        parts.append(chunk)
                    return b"".join(parts)
            except httpx.HTTPError as exc:
                errors.append(f"{url}: {exc}")
        if missing == len(self.mirrors):
            raise DeltaRefused(f"no mirror has piece {what}", code="piece_missing")
        raise TransportError(f"could not fetch piece {what}: {'; '.join(errors)}")


class Deliverer:
    def __init__(self, client: httpx.Client, mirrors: list[str], directory: Path) -> None:
        self.client, self.mirrors, self.directory = client, mirrors, directory

    def deliver(self, image: TargetFile, published: Iterable[TargetFile], running: Running | None,
                stop: StopSignal | None = None) -> Delivery:
        """The verified image in ``downloads/``. Raises UpdateRefused (the full image does
        not verify), TransportError (retry later: it resumes), PersistError (the disk)."""
        stop = stop or threading.Event()
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / image.hashes["sha256"]
        if final.exists():
            fetch_target(self.client, self.mirrors, image, self.directory, stop)  # verifies it
            return Delivery(final, "kept", 0, image.length)
        targets = list(published)
        base_ok = running is not None and slot_matches(running)
        if running is not None and not base_ok:
            log.warning("active slot does not hash to the release it runs (or that release is not published): "
                        "not used as a base; downloading %s in full", image.path)
        if base_ok:
            assert running is not None
            for method in (self._by_delta, self._by_index):
                try:
                    delivery = method(image, targets, running, stop)
                except UpdateRefused as exc:  # DeltaRefused, or the delta or index file did not verify
                    log.warning("%s: %s (%s); trying the next way", image.path, exc.message, exc.code)
                    self._clean(image)
                    continue
                except PersistError:
                    self._clean(image)
                    raise
                if delivery is not None:
                    return delivery
        self._clean(image)
        path, _ = fetch_target(self.client, self.mirrors, image, self.directory, stop)
        return Delivery(path, "full", image.length, image.length)

    def _assembling(self, image: TargetFile) -> Path:
        return self.directory / f"{image.hashes['sha256']}.assembling"

    def _clean(self, image: TargetFile) -> None:
        self._assembling(image).unlink(missing_ok=True)

    def _finish(self, image: TargetFile, method: str, downloaded: int) -> Delivery:
        built = self._assembling(image)
        verify_target(built, image)  # removes it if it does not match
        final = self.directory / image.hashes["sha256"]
        os.replace(built, final)
        log.info("%s rebuilt by %s: %d of %d bytes downloaded", image.path, method, downloaded, image.length)
        return Delivery(final, method, downloaded, image.length)

    def _by_delta(self, image: TargetFile, targets: list[TargetFile], running: Running,
                  stop: StopSignal) -> Delivery | None:
        from edgefleet.delta.bsdelta import apply_delta

        assert running.target is not None
        base = running.target.hashes["sha256"]
        deltas = [t for t in targets if release_fields(t).get("kind") == "os-delta"
                  and release_fields(t).get("image") == image.path and release_fields(t).get("base_sha256") == base]
        if not deltas:
            return None
        delta, _ = fetch_target(self.client, self.mirrors, deltas[0], self.directory / "deltas", stop)
        with _dropped_unless_interrupted(delta):
            apply_delta(delta, running.slot, self._assembling(image), stop, base_verified=True)
            delivery = self._finish(image, "delta", deltas[0].length)
        delta.unlink(missing_ok=True)
        return delivery

    def _by_index(self, image: TargetFile, targets: list[TargetFile], running: Running,
                  stop: StopSignal) -> Delivery | None:
        from edgefleet.delta.assemble import assemble
        from edgefleet.delta.index import Index

        assert running.target is not None
        indexes = [t for t in targets
                   if release_fields(t).get("kind") == "os-index" and release_fields(t).get("image") == image.path]
        if not indexes:
            return None
        path, _ = fetch_target(self.client, self.mirrors, indexes[0], self.directory / "indexes", stop)
        with _dropped_unless_interrupted(path):
            index = Index.load(path)
            if index.image_sha256 != image.hashes["sha256"] or index.image_length != image.length:
                raise DeltaRefused("the content index describes another image", code="delta_malformed")
            fetcher = PieceFetcher(self.client, self.mirrors, index.namespace)
            dictionary, fetched = self._dictionary(index, fetcher)
            done = assemble(index, self._assembling(image), [(running.slot, running.target.length)], fetcher,
                            dictionary=dictionary, stop=stop)
            delivery = self._finish(image, "index", indexes[0].length + fetched + done.fetched_bytes)
        path.unlink(missing_ok=True)
        return delivery


    def _dictionary(self, index: Index, fetcher: PieceFetcher) -> tuple[Dictionary | None, int]:
        """The index's dictionary, kept from an earlier update or fetched (and kept); and
        the bytes fetched for it."""
        from edgefleet.delta.index import RAW, dictionary_path
        from edgefleet.delta.pieces import check_dictionary, load_dictionary

        if index.namespace == RAW:
            return None, 0
        kept = self.directory / "dictionaries"
        try:
            return load_dictionary(kept, index.namespace), 0
        except DeltaRefused:
            pass  # not kept yet, or damaged: fetch it
        data = fetcher.dictionary(index.dictionary_length)
        dictionary = check_dictionary(index.namespace, data)
        atomic_write_bytes(dictionary_path(kept, index.namespace), data)
        return dictionary, len(data)


@contextlib.contextmanager
def _dropped_unless_interrupted(path: Path) -> Iterator[None]:
    """Delete ``path`` if the block fails, unless the link was lost (the next attempt reuses it)."""
    try:
        yield
    except TransportError:
        raise
    except BaseException:
        path.unlink(missing_ok=True)
        raise
