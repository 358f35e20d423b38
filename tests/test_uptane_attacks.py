"""Uptane attacks against a device: a compromised director (signed with the real online
director key) or a malicious mirror can choose among signed releases at most; anything else
ends with the device refusing and still on its current release."""

from __future__ import annotations

import asyncio
import copy
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tuf.api.metadata import TargetFile

from edgefleet.agent.fetcher import https_client
from edgefleet.agent.updates import TrustAnchors, UpdateClient
from edgefleet.client import AdminClient
from edgefleet.credentials import Role
from edgefleet.errors import UpdateRefused
from edgefleet.releases.director import sign_assignment
from edgefleet.releases.image import ReleaseInfo
from edgefleet.releases.keys import Keystore
from edgefleet.releases.publish import publish_workspace
from edgefleet.releases.workspace import Workspace, load_online_keys
from edgefleet.store import Database
from edgefleet.store.director import director_state, save_assignment
from tests.conftest import Device, Fleet, start_fleet
from tests.releases_world import StaticMirror


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
                    current = await director_state(conn, self.device.id)
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


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
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


def refused(setup: Setup, *, installed_counter: int = 0, mirrors: list[str] | None = None,
            download: bool = False) -> str:
    client = setup.client(mirrors)

    def attempt() -> None:
        plan = client.check(installed_counter)
        if download and plan is not None:
            client.download(plan)

    try:
        with pytest.raises(UpdateRefused) as excinfo:
            attempt()
        return excinfo.value.code
    finally:
        client.close()


def test_genuine_assignment_verifies_and_downloads(setup: Setup) -> None:
    setup.assign("5.0")
    client = setup.client()
    try:
        plan = client.check(installed_counter=4)
        assert plan is not None
        assert (plan.version, plan.counter) == ("5.0", 5)
        path, fetched = client.download(plan)
        assert path.read_bytes() == b"image 5.0 " * 5000
        assert fetched == plan.target.length
    finally:
        client.close()


def test_nothing_assigned_means_nothing_to_do(setup: Setup) -> None:
    client = setup.client()
    try:
        assert client.check(installed_counter=0) is None
    finally:
        client.close()


def test_director_assigning_an_image_for_another_hardware_type_is_refused(setup: Setup) -> None:
    setup.compromised_director([setup.image_target("arm-1")])  # the server itself would refuse this
    assert refused(setup) == "hardware_mismatch"


def test_director_and_image_repository_disagreeing_is_refused(setup: Setup) -> None:
    forged = copy.deepcopy(setup.image_target("5.0"))
    forged.hashes = {"sha256": "0" * 64, "sha512": "0" * 128}
    setup.compromised_director([forged])
    assert refused(setup) == "director_image_mismatch"


def test_director_naming_an_image_the_owners_never_signed_is_refused(setup: Setup) -> None:
    unsigned = TargetFile(10, {"sha256": "1" * 64}, "os/9.9/9.9.img",
                          {"custom": {"edgefleet": {"kind": "os-image", "version": "9.9", "release_counter": 99,
                                                    "hardware_ids": ["hw-x86"], "measurements": {}}}})
    setup.compromised_director([unsigned])
    assert refused(setup) == "director_image_mismatch"


def test_director_metadata_for_another_device_is_refused(setup: Setup) -> None:
    setup.compromised_director([setup.image_target("5.0")], for_device="dev-someone-else")
    assert refused(setup) == "director_wrong_device"


def test_release_counter_going_down_is_refused(setup: Setup) -> None:
    setup.assign("3.0")  # counter 5 ...
    assert refused(setup, installed_counter=6) == "counter_rollback"  # ... below the installed 6


def test_malicious_mirror_serving_tampered_bytes_is_refused(setup: Setup) -> None:
    hub = setup.tmp / "evil-hub"
    for part in ("metadata", "targets"):
        shutil.copytree(setup.plane.settings.data_dir / "repository" / part, hub / part)
    target = setup.image_target("5.0")
    stored = hub / "targets" / "os" / "5.0" / f"{target.hashes['sha256']}.5.0.img"
    stored.write_bytes(stored.read_bytes().replace(b"image", b"evil!"))
    mirror = StaticMirror(hub)
    try:
        setup.assign("5.0")
        assert refused(setup, mirrors=[mirror.url], download=True) == "hash_mismatch"
    finally:
        mirror.close()
    assert not list((setup.device.directory / "downloads").glob("*"))  # nothing unverified is kept


@pytest.mark.parametrize("content", [b"", b'{"signed": {"_type": "root", "spec_v'], ids=["empty", "truncated"])
def test_truncated_or_empty_local_root_is_refused(setup: Setup, content: bytes) -> None:
    (setup.tmp / "image-root.json").write_bytes(content)
    (setup.tmp / "director-root.json").write_bytes(setup.workspace.director.root(1).to_bytes())
    with pytest.raises(UpdateRefused) as excinfo:
        TrustAnchors.load(setup.tmp / "image-root.json", setup.tmp / "director-root.json")
    assert excinfo.value.code == "bad_local_root"


def _counting(client: UpdateClient) -> list[str]:
    seen: list[str] = []
    for http in (client._director_tls, client._mirror_tls):
        http.event_hooks["request"].append(lambda request: seen.append(request.url.path))
    return seen


def test_idle_poll_fetches_one_timestamp_per_repository_and_nothing_else(setup: Setup) -> None:
    setup.assign("5.0")
    client = setup.client()
    try:
        first = client.check(installed_counter=4)
        requests = _counting(client)
        again = client.check(installed_counter=4)
    finally:
        client.close()
    assert again == first
    assert [path.rsplit("/", 1)[-1] for path in requests] == ["timestamp.json", "timestamp.json"]


def test_root_rotation_published_later_is_noticed_after_idle_polls(setup: Setup, tmp_path: Path) -> None:
    setup.assign("5.0")
    client = setup.client()
    try:
        client.check(installed_counter=4)
        client.check(installed_counter=4)  # idle
        keys = Keystore(tmp_path / "keys")
        new_key = keys.generate("targets-new")
        setup.workspace.rotate("targets", [new_key], 1, [keys.signer("root-1"), keys.signer("root-2")],
                               datetime.now(UTC))
        setup.workspace.sign_targets(keys.signer("targets-new"))
        with AdminClient(setup.plane.url, setup.plane.tokens[Role.ADMIN], setup.plane.settings.pki.ca_cert) as c:
            publish_workspace(setup.workspace, c)
        plan = client.check(installed_counter=4)
    finally:
        client.close()
    assert plan is not None
    local_root = json.loads((setup.device.directory / "tuf" / "image" / "root.json").read_bytes())
    assert local_root["signed"]["version"] == 2
