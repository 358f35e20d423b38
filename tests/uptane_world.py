"""A control plane with published releases, an enrolled device and its UpdateClient, for
the Uptane attack and key rotation tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from tuf.api.metadata import TargetFile

from edgefleet.agent.fetcher import https_client
from edgefleet.agent.updates import TrustAnchors, UpdateClient
from edgefleet.client import AdminClient
from edgefleet.credentials import Role
from edgefleet.releases.director import sign_assignment
from edgefleet.releases.image import ReleaseInfo
from edgefleet.releases.keys import Keystore
from edgefleet.releases.publish import publish_workspace
from edgefleet.releases.workspace import Workspace, load_online_keys
from edgefleet.store import Database
from edgefleet.store.director import director_state, save_assignment
from tests.conftest import Device, Fleet, start_fleet


@dataclass
class Setup:
    plane: Fleet
    workspace: Workspace
    device: Device
    tmp: Path

    def image_target(self, version: str) -> TargetFile:
        return self.workspace.image.targets().signed.targets[f"os/{version}/{version}.img"]

    def client(self, mirrors: list[str] | None = None, hardware_type: str = "hw-x86") -> UpdateClient:
        ca = self.plane.settings.pki.ca_cert
        cert, key = self.device.directory / "cert.pem", self.device.directory / "key.pem"
        return UpdateClient(
            device_id=self.device.id, hardware_type=hardware_type, state_dir=self.device.directory,
            anchors=TrustAnchors(self.workspace.image.root(1).to_bytes(), self.workspace.director.root(1).to_bytes()),
            director_url=f"{self.plane.url}/api/v1/devices/{self.device.id}/director",
            director_tls=https_client(ca, cert, key), mirrors=mirrors or [f"{self.plane.url}/repository"],
            mirror_tls=https_client(ca),
        )

    def assign(self, version: str) -> None:
        with AdminClient(self.plane.url, self.plane.tokens[Role.OPERATOR], self.plane.settings.pki.ca_cert) as c:
            c.assign(self.device.id, version)

    def compromised_director(self, targets: list[TargetFile], for_device: str | None = None) -> None:
        """Sign whatever an attacker likes with the server's real director key."""
        signer = self.plane.server.state.repository.keys.signer("director")

        async def write() -> None:
            db = Database(self.plane.settings.effective_database_url)
            try:
                async with db.transaction() as conn:
                    current = await conn.run_sync(director_state, self.device.id)
                version = 1 if current is None else current.version + 1
                files = sign_assignment(for_device or self.device.id, targets, version,
                                        1 if current is None else current.timestamp_version + 1,
                                        datetime.now(UTC), signer)
                async with db.transaction() as conn:
                    await save_assignment(conn, self.device.id, "evil", files, datetime.now(UTC),
                                          previous_version=None if current is None else current.version)
            finally:
                await db.close()

        asyncio.run(write())


def make_setup(tmp_path: Path) -> Iterator[Setup]:
    plane = start_fleet(tmp_path / "plane", None)
    keys = Keystore(tmp_path / "keys")
    workspace = Workspace(tmp_path / "ws")
    workspace.init(keys, load_online_keys(plane.settings.data_dir / "keys" / "online-keys.json"), datetime.now(UTC))
    for version, counter, hardware in (("5.0", 5, "hw-x86"), ("3.0", 5, "hw-x86"), ("arm-1", 6, "hw-arm64")):
        image = tmp_path / f"{version}.img"
        image.write_bytes(f"image {version} ".encode() * 5000)
        workspace.create_release(image, ReleaseInfo(version, counter, (hardware,), {}), datetime.now(UTC))
    workspace.sign_targets(keys.signer("targets-1"))
    with AdminClient(plane.url, plane.tokens[Role.ADMIN], plane.settings.pki.ca_cert) as client:
        publish_workspace(workspace, client)
    device = plane.enroll(hardware_type="hw-x86")
    yield Setup(plane, workspace, device, tmp_path)
    plane.close()
