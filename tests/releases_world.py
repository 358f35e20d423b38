"""A release owner's world for tests: keys, an image repository on disk, a plain static
HTTP server on loopback in front of it (a "dumb mirror"), and TUF clients."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root, TargetFile
from tuf.ngclient import Updater, UpdaterConfig

from edgefleet.releases.image import ReleaseInfo, describe
from edgefleet.releases.keys import Keystore
from edgefleet.releases.metadata import RolePolicy, new_root, new_targets, sign, with_target
from edgefleet.releases.online import publish_online
from edgefleet.releases.repository import RepositoryDir


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # clients that abort an oversized download are expected in these tests


@dataclass
class StaticMirror:
    """``python -m http.server`` in a thread: knows nothing about TUF."""

    root: Path
    httpd: http.server.ThreadingHTTPServer = field(init=False)

    def __post_init__(self) -> None:
        handler = functools.partial(_QuietHandler, directory=str(self.root))
        self.httpd = _QuietServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@dataclass
class World:
    tmp: Path
    keys: Keystore
    repo: RepositoryDir
    mirror: StaticMirror
    signers: dict[str, list[CryptoSigner]]
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    clients: int = 0

    def image(self, name: str, content: bytes) -> Path:
        path = self.tmp / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    def release(self, version: str, content: bytes, *, counter: int, hardware_ids: tuple[str, ...] = ("hw-x86",),
                signers: list[CryptoSigner] | None = None, publish: bool = True) -> TargetFile:
        info = ReleaseInfo(version, counter, hardware_ids, {"4": "ab" * 32})
        source = self.image(f"os-{version}.img", content)
        target = describe(source, f"os/os-{version}.img", info.custom())
        self.repo.add_target_file(source, target)
        targets = with_target(self.repo.targets().signed, target, self.now)
        for signer in signers if signers is not None else self.signers["targets"]:
            sign(targets, signer)
        self.repo.write_targets(targets)
        if publish:
            self.publish()
        return target

    def publish(self) -> None:
        publish_online(self.repo, self.signers["snapshot"][0], self.signers["timestamp"][0], self.now)

    def client(self, config: UpdaterConfig | None = None, base_url: str | None = None,
               device: str | None = None) -> Updater:
        """A TUF client; ``device`` names a metadata dir kept across polls (one Updater per poll)."""
        self.clients += 1
        directory = self.tmp / (f"device-{device}" if device else f"client-{self.clients}")
        (directory / "downloads").mkdir(parents=True, exist_ok=True)
        return Updater(
            metadata_dir=str(directory), metadata_base_url=f"{base_url or self.mirror.url}/metadata/",
            target_dir=str(directory / "downloads"), target_base_url=f"{base_url or self.mirror.url}/targets/",
            config=config, bootstrap=self.repo.root(1).to_bytes(),
        )

    def rotate_root(self, changes: dict[str, RolePolicy], old: list[CryptoSigner], new: list[CryptoSigner]) -> None:
        from edgefleet.releases.metadata import next_root

        root = next_root(self.repo.root().signed, changes, self.now)
        for signer in [*old, *new]:
            sign(root, signer)
        self.repo.write_root(root)


def make_world(tmp: Path, *, root_threshold: int = 2, targets_threshold: int = 1) -> Iterator[World]:
    keys = Keystore(tmp / "keys")
    counts = {"root": 3, "targets": max(2, targets_threshold), "snapshot": 1, "timestamp": 1}
    names = {role: [f"{role}-{i}" for i in range(1, n + 1)] for role, n in counts.items()}
    for role_names in names.values():
        for name in role_names:
            keys.generate(name)
    signers = {role: [keys.signer(n) for n in role_names] for role, role_names in names.items()}
    thresholds = {"root": root_threshold, "targets": targets_threshold, "snapshot": 1, "timestamp": 1}
    now = datetime.now(UTC)
    root: Metadata[Root] = new_root(
        {role: RolePolicy(tuple(s.public_key for s in signers[role]), thresholds[role]) for role in counts}, now
    )
    for signer in signers["root"][:root_threshold]:
        sign(root, signer)
    repo = RepositoryDir(tmp / "repo")
    repo.write_root(root)
    targets = new_targets(now)
    for signer in signers["targets"][:targets_threshold]:
        sign(targets, signer)
    repo.write_targets(targets)
    mirror = StaticMirror(repo.path)
    world = World(tmp, keys, repo, mirror, signers, now)
    world.publish()
    try:
        yield world
    finally:
        mirror.close()


def days(n: float) -> timedelta:
    return timedelta(days=n)
