"""Uptane full verification on the device: what the director (signed online, per device)
assigns must be exactly what the image repository (signed offline) published.

Steps, each a typed refusal (``UpdateRefused``) that leaves the device on what it runs:
1. refresh the director repository over mTLS from the root shipped in the OS image;
2. refresh the image repository through the mirrors from its shipped root (TUF client
   workflow: rollback, freeze, threshold, endless-data and mix-and-match protection);
3. the director's OS image target must exist in the image repository with the same
   length, hashes and release fields, be bound to this device, fit its hardware type,
   and not lower the release counter (Uptane 5.4.4.2 "full verification");
4. download it (bounded, resumable) and verify it against the signed hashes.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import httpx
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import Metadata, TargetFile, Targets
from tuf.ngclient import Updater, UpdaterConfig

from edgefleet.agent.download import fetch_target
from edgefleet.agent.fetcher import MirrorFetcher
from edgefleet.errors import TransportError, UpdateRefused
from edgefleet.releases.workspace import release_fields

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


def _refused(exc: tuf_errors.RepositoryError, where: str) -> UpdateRefused:
    return UpdateRefused(f"{where}: {exc.__class__.__name__}: {exc}", code=f"{where}_{exc.__class__.__name__}")


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

    def _updater(self, name: str, base: str, mirrors: list[str], client: httpx.Client, root: bytes,
                 metadata_prefix: str) -> Updater:
        directory = self.dir / name
        directory.mkdir(parents=True, exist_ok=True)
        return Updater(str(directory), f"{base}{metadata_prefix}", None, None,
                       fetcher=MirrorFetcher(base, mirrors, client), config=LIMITS, bootstrap=root)

    def check(self, installed_counter: int) -> UpdatePlan | None:
        """What the director assigns, fully verified; None when it assigns no OS image.

        Raises:
            UpdateRefused: any verification failed (see the module docstring).
            TransportError: the director or every mirror was unreachable.
        """
        director = self._updater("director", self.director_url, [self.director_url], self._director_tls,
                                 self.anchors.director_root, "/")
        try:
            director.refresh()
        except tuf_errors.RepositoryError as exc:
            raise _refused(exc, "director") from exc
        except tuf_errors.DownloadError as exc:
            raise TransportError(f"director unreachable: {exc}") from exc
        assigned = self._assigned_image()
        if assigned is None:
            return None
        base = self.mirrors[0]
        image = self._updater("image", base, self.mirrors, self._mirror_tls, self.anchors.image_root, "/metadata/")
        try:
            image.refresh()
            published = image.get_targetinfo(assigned.path)
        except tuf_errors.RepositoryError as exc:
            raise _refused(exc, "image_repository") from exc
        except tuf_errors.DownloadError as exc:
            raise TransportError(f"image repository unreachable: {exc}") from exc
        return self._cross_check(assigned, published, installed_counter)

    def _assigned_image(self) -> TargetFile | None:
        # ngclient persists the director targets it has just verified; read that copy.
        targets: Metadata[Targets] = Metadata.from_file(str(self.dir / "director" / "targets.json"))
        images = [t for t in targets.signed.targets.values() if release_fields(t).get("kind") == "os-image"]
        if len(images) > 1:
            raise UpdateRefused("director assigns more than one OS image", code="director_ambiguous")
        return images[0] if images else None

    def _cross_check(self, assigned: TargetFile, published: TargetFile | None, installed_counter: int) -> UpdatePlan:
        # Uptane full verification, step by step.
        bound = assigned.custom.get("director", {}) if isinstance(assigned.custom, dict) else {}
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
        if not isinstance(counter, int) or counter < installed_counter:
            raise UpdateRefused(f"release counter {counter} is below the installed {installed_counter}",
                                code="counter_rollback")
        return UpdatePlan(published, str(fields.get("version")), counter)

    def download(self, plan: UpdatePlan, stop: threading.Event | None = None) -> tuple[Path, int]:
        """Fetch and verify the planned image; returns (file, bytes fetched now)."""
        return fetch_target(self._mirror_tls, self.mirrors, plan.target, self.dir.parent / "downloads", stop)

    def close(self) -> None:
        self._director_tls.close()
        self._mirror_tls.close()
