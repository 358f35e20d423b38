"""Uptane full verification on the device: what the director (signed online, per device)
assigns must be exactly what the image repository (signed offline) published.

Steps, each a typed refusal (``UpdateRefused``) that leaves the device on what it runs:
1. refresh the director repository over mTLS from the root shipped in the OS image;
2. refresh the image repository through the mirrors from its shipped root (TUF client
   workflow: rollback, freeze, threshold, endless-data and mix-and-match protection);
3. the director's OS image target must exist in the image repository with the same
   length, hashes and release fields, be bound to this device, fit its hardware type,
   and not lower the release counter (Uptane 5.4.4.2 "full verification");
4. download it (by delta, content index or in full; bounded, resumable) and verify it
   against the signed hashes.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient import FetcherInterface, Updater, UpdaterConfig

from edgefleet.agent.delivery import Deliverer, Delivery, Running
from edgefleet.agent.download import fetch_target
from edgefleet.agent.fetcher import BundleFetcher, MirrorFetcher
from edgefleet.errors import TransportError, UpdateRefused
from edgefleet.releases.image import release_fields
from edgefleet.releases.instructions import PLAIN, Instructions, director_fields
from edgefleet.util.atomic import atomic_write_json, fsync_dir, fsync_file
from edgefleet.util.stop import StopSignal

log = logging.getLogger("edgefleet.agent")

# Bounds on what any repository may make a device download (TUF endless-data attack).
LIMITS = UpdaterConfig(max_root_rotations=32, root_max_length=512_000, timestamp_max_length=16_384,
                       snapshot_max_length=2_000_000, targets_max_length=64_000_000)


@dataclass(frozen=True)
class TrustAnchors:
    """The roots that ship read-only inside the device's OS image."""

    image_root: bytes
    director_root: bytes

    @classmethod
    def load(cls, image_root: Path, director_root: Path) -> TrustAnchors:
        """Raises UpdateRefused when a root file is missing, empty or truncated."""
        roots = []
        for path in (image_root, director_root):
            try:
                data = path.read_bytes()
                Metadata.from_bytes(data)
            except OSError as exc:
                raise UpdateRefused(f"trusted root {path} unreadable: {exc}", code="bad_local_root") from exc
            except tuf_errors.RepositoryError as exc:
                raise UpdateRefused(f"trusted root {path} is empty or corrupt", code="bad_local_root") from exc
            roots.append(data)
        return cls(roots[0], roots[1])


@dataclass(frozen=True)
class UpdatePlan:
    target: TargetFile
    version: str
    counter: int
    instructions: Instructions = PLAIN  # signed by the director with the assignment


def _refused(exc: tuf_errors.RepositoryError, where: str) -> UpdateRefused:
    return UpdateRefused(f"{where}: {exc.__class__.__name__}: {exc}", code=f"{where}_{exc.__class__.__name__}")


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


def _version(metadata: bytes | None) -> int:
    """The version a metadata file states, unverified (0 when it states none)."""
    try:
        return int(json.loads(metadata)["signed"]["version"]) if metadata else 0
    except (ValueError, KeyError, TypeError):
        return 0


@dataclass(frozen=True)
class _Repository:
    """One TUF repository as the device sees it, with the idle-poll shortcut.

    ngclient re-verifies all local metadata on every refresh (megabytes with thousands of
    releases). When the timestamp just fetched is byte-identical to the one of the last full
    verification and no verified metadata has expired since, nothing can have changed: skip
    it. This gives an attacker nothing new: one who can hide root N+1 (a 404) can already
    replay the old timestamp until it expires, and the server re-signs its timestamps
    whenever it accepts a new root, so a rotation always looks like a change.
    """

    directory: Path
    base: str
    prefix: str
    mirrors: list[str]
    client: httpx.Client
    root: bytes

    @property
    def _record(self) -> Path:
        return self.directory / "verified.json"

    def _where(self) -> str:
        return "director" if self.prefix == "/" else "image_repository"

    def refresh_if_changed(self) -> bool:
        """Full TUF refresh unless idle; returns whether one was done.

        Raises UpdateRefused (verification failed) or TransportError (unreachable).
        """
        mirrors = MirrorFetcher(self.base, self.mirrors, self.client)
        fetcher: FetcherInterface = mirrors
        try:
            if self.prefix == "/":  # the director: the whole refresh in one round trip
                fetcher = BundleFetcher.load(mirrors, *self._held_versions())
            timestamp = fetcher.download_bytes(f"{self.base}{self.prefix}timestamp.json",
                                               LIMITS.timestamp_max_length)
        except tuf_errors.DownloadError as exc:
            raise TransportError(f"{self._where()} unreachable: {exc}") from exc
        if self._unchanged(timestamp):
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        updater = Updater(str(self.directory), f"{self.base}{self.prefix}", None, None, fetcher=fetcher,
                          config=LIMITS, bootstrap=self.root)
        try:
            updater.refresh()
        except tuf_errors.RepositoryError as exc:
            self._record.unlink(missing_ok=True)
            raise _refused(exc, self._where()) from exc
        except tuf_errors.DownloadError as exc:
            raise TransportError(f"{self._where()} unreachable: {exc}") from exc
        self._remember()
        return True

    def _held_versions(self) -> tuple[int, int]:
        """The versions of the root this device trusts and of the snapshot it verified last
        (0: none), as ngclient persisted them (else the shipped root). Only a hint to the
        server of what to send: whatever comes is verified as usual."""
        return max(_version(_read(self.directory / "root.json") or self.root), 1), \
            max(_version(_read(self.directory / "snapshot.json")), 0)

    def _unchanged(self, timestamp: bytes) -> bool:
        try:
            record = json.loads(self._record.read_bytes())
        except (OSError, ValueError):
            return False
        fresh = datetime.now(UTC) < datetime.fromisoformat(record["expires"])
        return fresh and record["timestamp_sha256"] == hashlib.sha256(timestamp).hexdigest()

    def _remember(self) -> None:
        """Record the refresh, once the metadata it verified is on disk for good: python-tuf
        renames each file into place without an fsync, and a power cut after this record
        but before the data reached the disk left a targets.json of zero bytes that the
        record called current."""
        expiries = []
        for role in ("root", "timestamp", "snapshot", "targets"):
            path = self.directory / f"{role}.json"
            fsync_file(path)
            expiries.append(Metadata.from_file(str(path)).signed.expires)
        fsync_dir(self.directory)
        data = (self.directory / "timestamp.json").read_bytes()
        atomic_write_json(self._record, {"timestamp_sha256": hashlib.sha256(data).hexdigest(),
                                         "expires": min(expiries).isoformat()})

    def targets_metadata(self) -> Metadata[Targets]:
        """The targets metadata the last refresh verified. Missing or damaged on disk (a
        power cut), it is fetched and verified again first.

        Raises UpdateRefused or TransportError as ``refresh_if_changed`` does.
        """
        try:
            return self._stored_targets()
        except (OSError, tuf_errors.RepositoryError) as exc:  # DeserializationError is a RepositoryError
            log.warning("%s metadata on disk is unreadable (%s): fetching it again", self._where(), exc)
        self._record.unlink(missing_ok=True)
        self.refresh_if_changed()
        try:
            return self._stored_targets()
        except (OSError, tuf_errors.RepositoryError) as exc:
            raise TransportError(f"{self._where()} metadata on disk is unreadable after a refresh: {exc}") from exc

    def _stored_targets(self) -> Metadata[Targets]:
        targets: Metadata[Targets] = Metadata.from_file(str(self.directory / "targets.json"))
        return targets

    def target(self, path: str) -> TargetFile | None:
        """A target from the metadata the last refresh verified."""
        return self.targets_metadata().signed.targets.get(path)


class UpdateClient:
    def __init__(self, *, device_id: str, hardware_type: str | None, state_dir: Path, anchors: TrustAnchors,
                 director_url: str, director_tls: httpx.Client, mirrors: list[str], mirror_tls: httpx.Client) -> None:
        self.device_id = device_id
        self.hardware_type = hardware_type
        self.dir = state_dir / "tuf"
        self.anchors = anchors
        self.director_url = director_url.rstrip("/")
        self.mirrors = [m.rstrip("/") for m in mirrors]
        self._director_tls = director_tls
        self._mirror_tls = mirror_tls
        self._last: tuple[tuple[int, str], UpdatePlan] | None = None

    def _repository(self, name: str) -> _Repository:
        if name == "director":
            return _Repository(self.dir / name, self.director_url, "/", [self.director_url], self._director_tls,
                               self.anchors.director_root)
        return _Repository(self.dir / name, self.mirrors[0], "/metadata/", self.mirrors, self._mirror_tls,
                           self.anchors.image_root)

    def check(self, installed_counter: int) -> UpdatePlan | None:
        """What the director assigns, fully verified; None when it assigns no OS image.

        Raises:
            UpdateRefused: any verification failed (see the module docstring).
            TransportError: the director or every mirror was unreachable.
        """
        director, image = self._repository("director"), self._repository("image")
        director_changed = director.refresh_if_changed()
        assigned = self._assigned_image(director)
        if assigned is None:
            self._last = None
            return None
        image_changed = image.refresh_if_changed()
        key = (installed_counter, assigned.path)
        if not (director_changed or image_changed) and self._last is not None and self._last[0] == key:
            return self._last[1]  # idle poll: both timestamps unchanged, same answer as last time
        plan = self._cross_check(assigned, image.target(assigned.path), installed_counter)
        self._last = (key, plan)
        return plan

    def _director_targets(self) -> Metadata[Targets]:
        """The director targets ngclient persisted after verifying them. Raises OSError
        (none yet: no check has run) or RepositoryError (unreadable)."""
        targets: Metadata[Targets] = Metadata.from_bytes((self.dir / "director" / "targets.json").read_bytes())
        return targets

    def assigned_config(self) -> TargetFile | None:
        """The configuration target of the director metadata the last check verified (None
        before the first check)."""
        try:
            targets = self._director_targets()
        except (OSError, tuf_errors.RepositoryError):
            return None
        found = [t for t in targets.signed.targets.values() if release_fields(t).get("kind") == "config"]
        return found[0] if len(found) == 1 else None

    @staticmethod
    def _assigned_image(director: _Repository) -> TargetFile | None:
        # ngclient persists the director targets it has just verified; read that copy.
        targets = director.targets_metadata()
        images = [t for t in targets.signed.targets.values() if release_fields(t).get("kind") == "os-image"]
        if len(images) > 1:
            raise UpdateRefused("director assigns more than one OS image", code="director_ambiguous")
        return images[0] if images else None

    def _cross_check(self, assigned: TargetFile, published: TargetFile | None, installed_counter: int) -> UpdatePlan:
        # Uptane full verification, step by step.
        bound = director_fields(assigned)
        if bound.get("device_id") != self.device_id:
            raise UpdateRefused(f"director target is for {bound.get('device_id')}, not this device",
                                code="director_wrong_device")
        if published is None:
            raise UpdateRefused(f"{assigned.path} is not in the image repository", code="director_image_mismatch")
        if assigned.length != published.length or assigned.hashes != published.hashes \
                or release_fields(assigned) != release_fields(published):
            raise UpdateRefused(f"director and image repository disagree about {assigned.path}",
                                code="director_image_mismatch")
        fields = release_fields(published)
        fits = fields.get("hardware_ids", [])
        if self.hardware_type is None or self.hardware_type not in (fits if isinstance(fits, list) else []):
            raise UpdateRefused(f"{assigned.path} fits {fits}, this device is {self.hardware_type}",
                                code="hardware_mismatch")
        counter = fields.get("release_counter")
        instructions = Instructions.of(assigned)
        # A signed revert names the release the other slot still holds (the runner checks
        # that): going back to it is the one move below the installed counter.
        if not isinstance(counter, int) or (counter < installed_counter and not instructions.revert):
            raise UpdateRefused(f"release counter {counter} is below the installed {installed_counter}",
                                code="counter_rollback")
        return UpdatePlan(published, str(fields.get("version")), counter, instructions)

    def download(self, plan: UpdatePlan, stop: StopSignal | None = None, *,
                 running: tuple[Path, str | None] | None = None) -> Delivery:
        """Fetch and verify the planned image, by delta or content index from ``running``
        (the active slot and the release it holds) where the repository offers one, in
        full otherwise (``agent.delivery``)."""
        published = self._published()
        seed = None
        if running is not None:
            slot, version = running
            images = [t for t in published if release_fields(t).get("kind") == "os-image"
                      and release_fields(t).get("version") == version]
            seed = Running(slot, images[0] if len(images) == 1 else None)
        deliverer = Deliverer(self._mirror_tls, self.mirrors, self.dir.parent / "downloads")
        return deliverer.deliver(plan.target, published, seed, stop)

    def _published(self) -> list[TargetFile]:
        """The image repository's targets as last verified (empty before the first check)."""
        try:
            return list(self._repository("image").targets_metadata().signed.targets.values())
        except (OSError, tuf_errors.RepositoryError):
            return []

    def artifacts(self, paths: Sequence[str]) -> tuple[list[tuple[bytes, TargetFile]], bool]:
        """Release artifacts the image repository lists (a workload's module, or kernel and
        initramfs), each with its signed target: the repository is refreshed once (TUF
        client workflow), the bytes fetched from the mirrors and verified. Also says
        whether a kept copy had changed on disk, or vanished, since it was fetched (it is
        fetched again). ``artifacts/kept.json`` lists what was fetched, across restarts.

        Raises:
            UpdateRefused: the repository does not verify, does not list a path, or the
                mirrors serve other bytes.
            TransportError: no mirror could be reached.
        """
        image = self._repository("image")
        image.refresh_if_changed()
        directory = self.dir.parent / "artifacts"
        index = directory / "kept.json"
        try:
            known = set(json.loads(index.read_bytes()))
        except (OSError, ValueError, TypeError):
            known = set()  # first fetch, or an unreadable index: a missing copy is simply fetched
        found, changed = [], False
        for path in paths:
            target = image.target(path)
            if target is None:
                raise UpdateRefused(f"{path} is not in the image repository", code="artifact_unknown")
            sha = target.hashes["sha256"]
            kept = (directory / sha).exists()
            if not kept and sha in known:
                log.warning("kept copy of %s was removed; fetching it again", path)
                changed = True
            try:
                file = fetch_target(self._mirror_tls, self.mirrors, target, directory)[0]
            except UpdateRefused:
                if not kept:
                    raise
                # The kept copy was changed behind our back (and is gone now): fetch it again.
                log.warning("kept copy of %s did not match its signed target; fetching it again", path)
                changed = True
                file = fetch_target(self._mirror_tls, self.mirrors, target, directory)[0]
            found.append((file.read_bytes(), target))
        fetched = {target.hashes["sha256"] for _, target in found}
        if not fetched <= known:
            atomic_write_json(index, sorted({sha for sha in known if (directory / sha).exists()} | fetched))
        return found, changed

    def close(self) -> None:
        self._director_tls.close()
        self._mirror_tls.close()
