"""The release owners' offline workspace: two repositories side by side,

    <workspace>/image/      the image repository (root and targets signed here, offline)
    <workspace>/director/   the director's roots (signed here; the server signs the rest)

and the operations behind ``edgefleet keys init`` and ``edgefleet release create|sign|ls``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from securesystemslib.signer import Key, Signer
from tuf.api.metadata import Metadata, TargetFile, Targets

from edgefleet.delta.index import dictionary_path, store_dictionary, train_dictionary
from edgefleet.errors import ConfigError, InvalidRequest
from edgefleet.releases.deltas import Base, build_delta_targets
from edgefleet.releases.image import ReleaseInfo, describe, release_fields
from edgefleet.releases.keys import Keystore, key_from_json
from edgefleet.releases.metadata import (
    RolePolicy,
    new_root,
    new_targets,
    next_root,
    require_root_rotation,
    sign,
    signing_status,
    with_target,
)
from edgefleet.releases.repository import RepositoryDir
from edgefleet.util.atomic import atomic_write_bytes


def load_online_keys(path: Path) -> dict[str, Key]:
    """The server's ``keys/online-keys.json`` (written by ``edgefleet server init``)."""
    try:
        data = json.loads(path.read_text())
        return {role: key_from_json(data[role]) for role in ("snapshot", "timestamp", "director")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read the server's online keys from {path}: {exc}") from exc


@dataclass(frozen=True)
class Workspace:
    path: Path

    @property
    def image(self) -> RepositoryDir:
        return RepositoryDir(self.path / "image")

    @property
    def director(self) -> RepositoryDir:
        return RepositoryDir(self.path / "director")

    def init(
        self, keys: Keystore, online: dict[str, Key], now: datetime, *, root_keys: int = 3, root_threshold: int = 2,
        targets_keys: int = 1, targets_threshold: int = 1, passphrase: bytes | None = None,
    ) -> None:
        """Generate the offline keys and sign root version 1 of both repositories, and an
        empty targets version 1. Raises ConfigError if the workspace exists already."""
        if self.image.exists():
            raise ConfigError(f"{self.path} already holds a release workspace")
        root_names = [f"root-{i}" for i in range(1, root_keys + 1)]
        targets_names = [f"targets-{i}" for i in range(1, targets_keys + 1)]
        public = {name: keys.generate(name, passphrase) for name in [*root_names, *targets_names]}
        root_policy = RolePolicy(tuple(public[n] for n in root_names), root_threshold)
        image_root = new_root({
            "root": root_policy,
            "targets": RolePolicy(tuple(public[n] for n in targets_names), targets_threshold),
            "snapshot": RolePolicy((online["snapshot"],), 1),
            "timestamp": RolePolicy((online["timestamp"],), 1),
        }, now)
        director = RolePolicy((online["director"],), 1)
        director_root = new_root({"root": root_policy, "targets": director, "snapshot": director,
                                  "timestamp": director}, now)
        root_signers = [keys.signer(n, passphrase) for n in root_names]
        for signer in root_signers:
            sign(image_root, signer)
            sign(director_root, signer)
        self.image.write_root(image_root)
        self.director.write_root(director_root)
        targets = new_targets(now)
        for name in targets_names[:targets_threshold]:
            sign(targets, keys.signer(name, passphrase))
        self.image.write_targets(targets)

    def releases(self) -> list[TargetFile]:
        targets = self.image.targets().signed.targets.values()
        return sorted(targets, key=lambda t: int(str(release_fields(t).get("release_counter", -1))), reverse=True)

    def create_release(self, image: Path, info: ReleaseInfo, now: datetime,
                       artifacts: list[Path] | None = None, *, deltas: int = 0,
                       index: bool = False, chunking: str | None = None,
                       dictionary: bool = True, sbom: Path | None = None) -> Metadata[Targets]:
        """Add an OS image (and artifacts) as a new, unsigned targets version, with a
        content index (``chunking``: blocks, cdc, or None to choose by the image; pieces
        compressed with the workspace's dictionary, trained on this image if there is none
        yet) and known-base deltas from the last ``deltas`` releases that fit the same
        hardware (``releases.deltas``), and the image's ``sbom`` (CycloneDX JSON, checked
        against the schema) signed beside it.

        Raises InvalidRequest if the counter is lower than an existing release's (devices
        would refuse it), the version exists already, or the SBOM is not a valid CycloneDX
        document.
        """
        if sbom is not None:
            check_sbom(sbom)
        for existing in self.releases():
            fields = release_fields(existing)
            if fields.get("version") == info.version:
                raise InvalidRequest(f"release {info.version} exists already", code="release_exists")
            if int(str(fields.get("release_counter", -1))) > info.counter:
                raise InvalidRequest(
                    f"release counter {info.counter} is below {fields['release_counter']} of {fields['version']}",
                    code="counter_decreases",
                )
        target = describe(image, f"os/{info.version}/{image.name}", info.custom())
        bases = self._delta_bases(info, deltas)
        self.image.add_target_file(image, target)
        targets = with_target(self.image.targets().signed, target, now)
        trained = self._dictionary(image, chunking) if index and dictionary else None
        with tempfile.TemporaryDirectory(prefix="edgefleet-deltas-") as work:
            for path, extra in build_delta_targets(image, target, info.version, bases, self.pieces_dir, Path(work),
                                                   index=index, chunking=chunking, dictionary=trained):
                self.image.add_target_file(path, extra)
                targets.signed.targets[extra.path] = extra
        extras = [(artifact, "artifacts", "artifact") for artifact in artifacts or []]
        extras += [(sbom, "sbom", "sbom")] if sbom is not None else []
        for path, folder, kind in extras:
            extra = describe(path, f"{folder}/{info.version}/{path.name}",
                             {"edgefleet": {"kind": kind, "release": info.version}})
            self.image.add_target_file(path, extra)
            targets.signed.targets[extra.path] = extra
        self.image.write_targets(targets)
        return targets

    @property
    def pieces_dir(self) -> Path:
        return self.image.path / "pieces"

    def _dictionary(self, image: Path, chunking: str | None) -> bytes | None:
        """The workspace's piece dictionary (``pieces/current-dictionary``), trained on
        ``image`` the first time: later releases reuse it, so their pieces stay shared."""
        current = self.pieces_dir / "current-dictionary"
        try:
            return dictionary_path(self.pieces_dir, current.read_text().strip()).read_bytes()
        except OSError:
            pass
        data = train_dictionary(image, chunking)
        if data is not None:
            current.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(current, store_dictionary(self.pieces_dir, data).encode())
        return data

    def _delta_bases(self, info: ReleaseInfo, count: int) -> list[Base]:
        """The newest ``count`` earlier OS images for the same hardware whose files are here."""
        bases: list[Base] = []
        for existing in self.releases():
            fields = release_fields(existing)
            hardware = fields.get("hardware_ids")
            if len(bases) >= count:
                break
            if fields.get("kind") != "os-image" or not isinstance(hardware, list) \
                    or not set(hardware) & set(info.hardware_ids):
                continue
            path = self.target_file(existing)
            if path.exists():
                bases.append(Base(str(fields.get("version")), path))
        return bases

    def sign_targets(self, signer: Signer) -> tuple[int, int]:
        """Add a signature to the pending targets; returns (valid signatures, threshold)."""
        targets = self.image.targets()
        root = self.image.root().signed
        if signer.public_key.keyid not in root.roles["targets"].keyids:
            raise InvalidRequest("this key is not a targets key of the current root", code="not_a_targets_key")
        sign(targets, signer)
        self.image.write_targets(targets)
        return signing_status(root, "targets", targets)

    def rotate(self, role: str, keys: Sequence[Key], threshold: int, signers: Sequence[Signer],
               now: datetime) -> int:
        """New root version(s) where ``role`` has ``keys``: root (both repositories),
        targets, snapshot or timestamp (image repository), or director (all online roles of
        the director repository). Signed by ``signers``, which must include a threshold of
        the old root keys and, for a root rotation, of the new ones. Returns the new version
        of the first root changed.

        Raises InvalidRequest when the signatures do not satisfy the rotation rule.
        """
        policy = RolePolicy(tuple(keys), threshold)
        changes: list[tuple[RepositoryDir, dict[str, RolePolicy]]]
        if role == "root":
            changes = [(self.image, {"root": policy}), (self.director, {"root": policy})]
        elif role in ("targets", "snapshot", "timestamp"):
            changes = [(self.image, {role: policy})]
        elif role == "director":  # the server's online director key signs all director roles
            changes = [(self.director, dict.fromkeys(("targets", "snapshot", "timestamp"), policy))]
        else:
            raise InvalidRequest(f"unknown role {role}", code="invalid_role")
        rotated = []
        for repo, change in changes:
            current = repo.root().signed
            new = next_root(current, change, now)
            for signer in signers:
                sign(new, signer)
            require_root_rotation(current, new)
            rotated.append((repo, new))
        for repo, new in rotated:  # only once every new root is valid: never half-applied
            repo.write_root(new)
        if role == "targets":
            # The same releases as a new targets version, to be signed by the new keys
            # (versions only ever increase, so the server and devices accept it).
            pending = self.image.targets().signed
            targets = new_targets(now, version=pending.version + 1)
            targets.signed.targets = dict(pending.targets)
            self.image.write_targets(targets)
        return rotated[0][1].signed.version

    def target_file(self, target: TargetFile) -> Path:
        directory, _, name = target.path.rpartition("/")
        return self.image.targets_dir / directory / f"{target.hashes['sha256']}.{name}"


def check_sbom(path: Path) -> None:
    """Raises InvalidRequest unless ``path`` is a CycloneDX JSON document the schema accepts."""
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator

    try:
        text = path.read_text(encoding="utf-8")
        version = json.loads(text).get("specVersion")
    except (OSError, ValueError, AttributeError) as exc:
        raise InvalidRequest(f"SBOM {path}: not a JSON document ({exc})", code="invalid_sbom") from exc
    schema = {"1.6": SchemaVersion.V1_6, "1.5": SchemaVersion.V1_5, "1.4": SchemaVersion.V1_4}.get(str(version))
    if schema is None:
        raise InvalidRequest(f"SBOM {path}: CycloneDX specVersion {version!r} (1.4 to 1.6 are read)",
                             code="invalid_sbom")
    error = JsonStrictValidator(schema).validate_str(text)
    if error is not None:
        raise InvalidRequest(f"SBOM {path}: {str(error)[:300]}", code="invalid_sbom")
