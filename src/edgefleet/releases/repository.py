"""The image repository on disk, laid out for consistent snapshots so that any static
HTTP server (the control plane, a hub, nginx, a CDN) can serve it:

    metadata/<v>.root.json      every root version (clients walk them one by one)
    metadata/<v>.targets.json   every targets version
    metadata/<v>.snapshot.json
    metadata/timestamp.json     the only file fetched without a version
    targets/<sha256>.<name>     content-addressed artifacts
    metadata/root.json, targets.json, snapshot.json   the newest of each, for tooling
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tuf.api.metadata import Metadata, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization import DeserializationError

from edgefleet.errors import ConfigError, InvalidRequest, PersistError
from edgefleet.releases.metadata import WIRE
from edgefleet.util.atomic import atomic_write_bytes, fsync_dir

T = TypeVar("T", Root, Targets, Snapshot, Timestamp)


@dataclass(frozen=True)
class RepositoryDir:
    path: Path

    @property
    def metadata_dir(self) -> Path:
        return self.path / "metadata"

    @property
    def targets_dir(self) -> Path:
        return self.path / "targets"

    def exists(self) -> bool:
        return (self.metadata_dir / "root.json").exists()

    def _load(self, name: str, cls: type[T]) -> Metadata[T]:
        try:
            data = (self.metadata_dir / name).read_bytes()
        except FileNotFoundError as exc:
            raise ConfigError(f"no {name} in {self.metadata_dir}") from exc
        try:
            metadata: Metadata[T] = Metadata.from_bytes(data)
        except DeserializationError as exc:
            raise InvalidRequest(f"{name} is not valid TUF metadata: {exc}", code="invalid_metadata") from exc
        if not isinstance(metadata.signed, cls):
            raise InvalidRequest(f"{name} holds {metadata.signed.type}, not {cls.type}", code="invalid_metadata")
        return metadata

    def root(self, version: int | None = None) -> Metadata[Root]:
        return self._load("root.json" if version is None else f"{version}.root.json", Root)

    def targets(self) -> Metadata[Targets]:
        return self._load("targets.json", Targets)

    def snapshot(self) -> Metadata[Snapshot] | None:
        return self._load("snapshot.json", Snapshot) if (self.metadata_dir / "snapshot.json").exists() else None

    def timestamp(self) -> Metadata[Timestamp] | None:
        return self._load("timestamp.json", Timestamp) if (self.metadata_dir / "timestamp.json").exists() else None

    def _write(self, names: list[str], metadata: Metadata[T]) -> bytes:
        data = metadata.to_bytes(WIRE)
        for name in names:
            atomic_write_bytes(self.metadata_dir / name, data)
        return data

    def write_root(self, metadata: Metadata[Root]) -> None:
        self._write([f"{metadata.signed.version}.root.json", "root.json"], metadata)

    def write_targets(self, metadata: Metadata[Targets]) -> None:
        self._write([f"{metadata.signed.version}.targets.json", "targets.json"], metadata)

    def write_snapshot(self, metadata: Metadata[Snapshot]) -> bytes:
        return self._write([f"{metadata.signed.version}.snapshot.json", "snapshot.json"], metadata)

    def write_timestamp(self, metadata: Metadata[Timestamp]) -> None:
        # Written last: once it is visible, everything it points to already is.
        self._write(["timestamp.json"], metadata)

    def add_target_file(self, source: Path, target: TargetFile) -> Path:
        """Copy ``source`` to its content address (streaming, atomic); returns that path."""
        name = f"{target.hashes['sha256']}.{Path(target.path).name}"
        destination = self.targets_dir / target.path.rpartition("/")[0] / name if "/" in target.path \
            else self.targets_dir / name
        if destination.exists():
            return destination
        destination.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=destination.parent, prefix=".incoming.")
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, destination)
            fsync_dir(destination.parent)
        except OSError as exc:
            Path(tmp).unlink(missing_ok=True)
            raise PersistError(f"cannot store target {target.path}: {exc}") from exc
        return destination
