"""The control plane's side of signed releases: it *hosts* the image repository and the
director's roots, and signs only the online roles.

Uploads are verified before anything becomes visible: a root must be the first one (taken
from an admin, and it must delegate the online roles to this server's keys) or a valid
rotation of the current one; targets must carry a threshold of release-owner signatures
under the current root, must not roll back, and every target they list must have been
uploaded with exactly the signed length and hashes. Only then is the new targets version
written and a new snapshot and timestamp signed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root, Targets
from tuf.api.serialization import DeserializationError

from edgefleet.clock import Clock
from edgefleet.delta.index import dictionary_path, piece_path
from edgefleet.delta.pieces import (
    Unpacker,
    check_dictionary,
    decompressor,
    keep_piece,
    load_dictionary,
)
from edgefleet.errors import (
    ConfigError,
    Conflict,
    DeltaRefused,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    PersistError,
)
from edgefleet.releases.deltas import sizes
from edgefleet.releases.image import release_fields
from edgefleet.releases.keys import Keystore, key_to_json
from edgefleet.releases.metadata import EXPIRY, require_root_rotation, require_threshold, signing_status
from edgefleet.releases.online import publish_online
from edgefleet.releases.repository import RepositoryDir
from edgefleet.util.atomic import atomic_write_bytes, fsync_dir
from edgefleet.util.paths import check_target, contained

log = logging.getLogger("edgefleet.server")

ONLINE_KEYS = ("snapshot", "timestamp", "director")
RepoName = Literal["image", "director"]


def _counter(row: dict[str, object]) -> int:
    counter = row.get("release_counter")
    return counter if isinstance(counter, int) else -1


def generations(keys: Keystore, role: str) -> list[str]:
    """Key names of an online role, oldest first: ``timestamp``, ``timestamp-2``, ..."""
    names = [n for n in keys.names() if n == role or re.fullmatch(rf"{role}-\d+", n)]
    return sorted(names, key=lambda n: int(n.rpartition("-")[2]) if n != role else 1)


def ensure_online_keys(keys: Keystore) -> dict[str, dict[str, object]]:
    """Create missing online keys; write the newest generation of each to ``online-keys.json``
    (what the release owners put into the next root)."""
    exported: dict[str, dict[str, object]] = {}
    for role in ONLINE_KEYS:
        names = generations(keys, role)
        key = keys.public_key(names[-1]) if names else keys.generate(role)
        exported[role] = key_to_json(key)
    atomic_write_bytes(keys.directory / "online-keys.json", json.dumps(exported, indent=2).encode())
    return exported


def rotate_online_key(keys: Keystore, role: str) -> str:
    """Add a new generation of an online key; the server signs with it once a root that
    delegates to it (signed offline) is published. Returns its name."""
    if role not in ONLINE_KEYS:
        raise InvalidRequest(f"online roles are {', '.join(ONLINE_KEYS)}", code="invalid_role")
    names = generations(keys, role)
    name = f"{role}-{len(names) + 1}"
    keys.generate(name)
    ensure_online_keys(keys)
    return name


def _parse(data: bytes, cls: type[Root] | type[Targets]) -> Metadata[Root] | Metadata[Targets]:
    try:
        metadata: Metadata[Root] | Metadata[Targets] = Metadata.from_bytes(data)
    except DeserializationError as exc:
        raise InvalidRequest(f"not valid TUF metadata: {exc}", code="invalid_metadata") from exc
    if not isinstance(metadata.signed, cls):
        raise InvalidRequest(f"expected {cls.type} metadata, got {metadata.signed.type}", code="invalid_metadata")
    return metadata


@dataclass
class RepositoryService:
    data_dir: Path
    clock: Clock
    max_artifact_bytes: int
    _published: tuple[tuple[int, int, int], Metadata[Targets]] | None = field(default=None, init=False, repr=False)

    def releases(self) -> tuple[int | None, list[dict[str, object]]]:
        """The published targets' version and its releases (path, length, sha256 and our
        custom fields; an image's delta and index sizes), newest release counter first."""
        published = self.published()
        if published is None:
            return None, []
        rows: list[dict[str, object]] = []
        extra = sizes(published.signed.targets.values())
        for target in published.signed.targets.values():
            fields = release_fields(target)
            row = {"path": target.path, "length": target.length, "sha256": target.hashes.get("sha256"), **fields}
            if fields.get("kind") == "os-image" and target.path in extra:
                row["delivery"] = extra[target.path]  # index, pieces and delta sizes
            rows.append(row)
        rows.sort(key=_counter, reverse=True)
        return published.signed.version, rows

    def published(self) -> Metadata[Targets] | None:
        """The published targets metadata (None before the first publish), parsed once per
        version: every quote and assignment consults it, and with thousands of releases it
        is megabytes. targets.json is replaced by atomic rename, so (inode, mtime, size)
        names a version exactly. Callers must not modify it."""
        path = self.image.metadata_dir / "targets.json"
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        cached = self._published
        if cached is None or cached[0] != key:
            cached = (key, self.image.targets())
            self._published = cached
        return cached[1]

    @property
    def keys(self) -> Keystore:
        return Keystore(self.data_dir / "keys")

    @property
    def image(self) -> RepositoryDir:
        return RepositoryDir(self.data_dir / "repository")

    @property
    def director(self) -> RepositoryDir:
        return RepositoryDir(self.data_dir / "director")

    @property
    def blobs(self) -> Path:
        return self.data_dir / "repository" / "blobs"

    def prepare(self) -> None:
        for repo in (self.image, self.director):
            repo.metadata_dir.mkdir(parents=True, exist_ok=True)
            repo.targets_dir.mkdir(parents=True, exist_ok=True)
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.pieces.mkdir(parents=True, exist_ok=True)

    def _held(self, key_role: str) -> dict[str, str]:
        """keyid -> key name, for every generation of an online key this server holds."""
        return {self.keys.public_key(n).keyid: n for n in generations(self.keys, key_role)}

    @staticmethod
    def _key_role(which: RepoName, role: str) -> str:
        return role if which == "image" else "director"

    def _online_roles(self, which: RepoName) -> tuple[str, ...]:
        return ("snapshot", "timestamp") if which == "image" else ("targets", "snapshot", "timestamp")

    def online_signer(self, which: RepoName, role: str) -> CryptoSigner:
        """The generation of the online key that the current root delegates ``role`` to."""
        repo = self.image if which == "image" else self.director
        held = self._held(self._key_role(which, role))
        for keyid in repo.root().signed.roles[role].keyids:
            if keyid in held:
                return self.keys.signer(held[keyid])
        raise ConfigError(f"this server holds no key the {which} root trusts for {role}")

    def accept_root(self, which: RepoName, data: bytes) -> int:
        """Raises InvalidRequest (unsigned, bad rotation, foreign online keys) or Conflict."""
        new = _parse(data, Root)
        assert isinstance(new.signed, Root)
        repo = self.image if which == "image" else self.director
        if repo.exists():
            current = repo.root().signed
            if new.signed.version <= current.version:
                if repo.root(new.signed.version).to_bytes() == new.to_bytes():
                    return new.signed.version  # an identical re-upload is fine
                raise Conflict(f"{which} root {new.signed.version} exists with other content", code="root_exists")
            require_root_rotation(current, new)
        else:
            if new.signed.version != 1:
                raise InvalidRequest("the first root must be version 1", code="invalid_root")
            require_threshold(new.signed, "root", new)
        for role in self._online_roles(which):
            held = self._held(self._key_role(which, role))
            if not set(new.signed.roles[role].keyids) <= set(held) or new.signed.roles[role].threshold != 1:
                raise InvalidRequest(f"{which} root does not delegate {role} to this server's online key",
                                     code="foreign_online_keys")
        targets = self.published() if which == "image" else None
        repo.write_root(new)
        log.info("accepted %s root version %d", which, new.signed.version)
        if targets is not None:
            signed, threshold = signing_status(new.signed, "targets", targets)
            if signed >= threshold:
                self.publish()  # a new timestamp tells every device to look for the new root
            else:
                # New targets keys: devices stay on the verified state until targets signed
                # by them arrive (their upload publishes a new timestamp).
                log.info("image root %d awaits targets signed by its new targets keys", new.signed.version)
        return new.signed.version

    def has_blob(self, sha256: str) -> bool:
        return (self.blobs / sha256).exists()

    async def store_blob(self, sha256: str, chunks: AsyncIterator[bytes]) -> int:
        """Stream an upload to ``blobs/<sha256>``; refuse it if its hash differs or it is too big."""
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise InvalidRequest("blob name must be a lower-case sha256", code="invalid_blob")
        self.blobs.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.blobs, prefix=".upload.")
        digest = hashlib.sha256()
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_artifact_bytes:
                        raise PayloadTooLarge(f"artifact exceeds {self.max_artifact_bytes} bytes")
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != sha256:
                raise InvalidRequest("uploaded bytes do not match their sha256", code="hash_mismatch")
            os.replace(tmp, self.blobs / sha256)
            fsync_dir(self.blobs)
        except OSError as exc:
            raise PersistError(f"cannot store blob: {exc}") from exc
        finally:
            if os.path.exists(tmp):  # noqa: ASYNC240 - one stat of a local temp file
                os.unlink(tmp)
        return size

    @property
    def pieces(self) -> Path:
        return self.data_dir / "repository" / "pieces"

    def missing_pieces(self, namespace: str, idents: list[str]) -> list[str]:
        """Which of these pieces (hex ids) of ``namespace`` the repository lacks."""
        return [i for i in idents if not piece_path(self.pieces, namespace, i).exists()]

    def has_dictionary(self, namespace: str) -> bool:
        return dictionary_path(self.pieces, namespace).exists()

    def store_dictionary(self, namespace: str, data: bytes) -> None:
        """Keep the dictionary of ``namespace``. Raises InvalidRequest when it is not it."""
        try:
            check_dictionary(namespace, data)
        except DeltaRefused as exc:
            raise InvalidRequest(exc.message, code=exc.code) from exc
        atomic_write_bytes(dictionary_path(self.pieces, namespace), data)

    async def store_pieces(self, namespace: str, chunks: AsyncIterator[bytes]) -> int:
        """Keep each piece of an uploaded pack that holds the chunk its id names; returns
        how many were new. Raises InvalidRequest at the first one that does not (those
        before it are kept: each was checked, and a piece is only ever its own content),
        or when the namespace's dictionary was not uploaded first."""
        unpacker, stored = Unpacker(), 0
        try:
            unpack = decompressor(load_dictionary(self.pieces, namespace))
            async for chunk in chunks:
                for ident, piece in unpacker.feed(chunk):
                    stored += await asyncio.to_thread(keep_piece, self.pieces, namespace, ident, piece, unpack)
        except DeltaRefused as exc:
            raise InvalidRequest(exc.message, code=exc.code) from exc
        except OSError as exc:
            raise PersistError(f"cannot store pieces: {exc}") from exc
        if not unpacker.finished():
            raise InvalidRequest("the piece pack ends inside a record", code="piece_truncated")
        return stored

    def accept_targets(self, data: bytes) -> int:
        """Verify and publish new image-repository targets; returns the new snapshot version."""
        new = _parse(data, Targets)
        assert isinstance(new.signed, Targets)
        if not self.image.exists():
            raise Conflict("upload the image repository root first", code="no_root")
        require_threshold(self.image.root().signed, "targets", new)
        published = self.published()
        if published is not None and new.signed.version <= published.signed.version:
            if published.to_bytes() == new.to_bytes():
                snapshot = self.image.snapshot()
                return 0 if snapshot is None else snapshot.signed.version  # an identical re-upload is fine
            raise Conflict(f"targets version {new.signed.version} is not newer than {published.signed.version}",
                           code="targets_rollback")
        if new.signed.expires <= self.clock.now():
            raise InvalidRequest("targets metadata has already expired", code="expired_metadata")
        for target in new.signed.targets.values():  # every name first: nothing is placed if one is unsafe
            check_target(target.path, target.hashes.get("sha256", ""))
        for target in new.signed.targets.values():
            self._place_target(target.path, target.hashes["sha256"], target.length)
        self.image.write_targets(new)
        version = self.publish()
        log.info("published targets version %d (%d targets)", new.signed.version, len(new.signed.targets))
        return version

    def _place_target(self, path: str, sha256: str, length: int) -> None:
        directory, _, name = path.rpartition("/")
        destination = contained(self.image.targets_dir, directory, f"{sha256}.{name}")
        if destination.exists():
            return
        blob = self.blobs / sha256
        if not blob.exists():
            raise NotFound(f"target {path} was listed but its bytes ({sha256[:12]}...) were not uploaded",
                           code="missing_blob")
        if blob.stat().st_size != length:
            raise InvalidRequest(f"uploaded {path} has another length than signed", code="length_mismatch")
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.link(blob, destination)

    def publish(self) -> int:
        """Sign a new snapshot and timestamp with the online keys."""
        return publish_online(self.image, self.online_signer("image", "snapshot"),
                              self.online_signer("image", "timestamp"), self.clock.now())

    def refresh_if_expiring(self) -> bool:
        """Re-sign snapshot and timestamp once half of the timestamp's lifetime has passed."""
        timestamp = self.image.timestamp()
        if timestamp is None or self.published() is None:
            return False
        if timestamp.signed.expires - self.clock.now() > EXPIRY["timestamp"] / 2:
            return False
        self.publish()
        return True
