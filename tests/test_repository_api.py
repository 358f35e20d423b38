"""Publishing signed releases to the control plane: the server verifies before it serves,
and devices verify what it serves with the real TUF client over HTTPS."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tuf.api.metadata import TargetFile
from tuf.ngclient import Updater

from edgefleet.agent.fetcher import MirrorFetcher, https_client
from edgefleet.client import AdminClient
from edgefleet.credentials import Role
from edgefleet.errors import ServerRefused
from edgefleet.releases.image import ReleaseInfo
from edgefleet.releases.keys import Keystore
from edgefleet.releases.publish import publish_workspace
from edgefleet.releases.workspace import Workspace, load_online_keys
from tests.conftest import Fleet, start_fleet


@pytest.fixture
def hosted(tmp_path: Path) -> Iterator[tuple[Fleet, Workspace, Keystore]]:
    fleet = start_fleet(tmp_path / "plane", None)
    keys = Keystore(tmp_path / "offline-keys")
    workspace = Workspace(tmp_path / "workspace")
    workspace.init(keys, load_online_keys(fleet.settings.data_dir / "keys" / "online-keys.json"),
                   datetime.now(UTC), root_keys=3, root_threshold=2, targets_keys=2, targets_threshold=2)
    yield fleet, workspace, keys
    fleet.close()


def admin(fleet: Fleet, role: Role = Role.ADMIN) -> AdminClient:
    return AdminClient(fleet.url, fleet.tokens[role], fleet.settings.pki.ca_cert)


def release(workspace: Workspace, keys: Keystore, tmp: Path, version: str, counter: int, *,
            signers: tuple[str, ...] = ("targets-1", "targets-2")) -> bytes:
    image = tmp / f"{version}.img"
    image.write_bytes(version.encode() * 40_000)
    workspace.create_release(image, ReleaseInfo(version, counter, ("hw-x86",), {"4": "00" * 32}), datetime.now(UTC))
    for name in signers:
        workspace.sign_targets(keys.signer(name))
    return image.read_bytes()


@contextlib.contextmanager
def device_updater(fleet: Fleet, workspace: Workspace, tmp: Path) -> Iterator[Updater]:
    base = f"{fleet.url}/repository"
    client = https_client(fleet.settings.pki.ca_cert)
    (tmp / "device" / "downloads").mkdir(parents=True, exist_ok=True)
    try:
        yield Updater(str(tmp / "device"), f"{base}/metadata/", str(tmp / "device" / "downloads"),
                      f"{base}/targets/", fetcher=MirrorFetcher(base, [base], client),
                      bootstrap=workspace.image.root(1).to_bytes())
    finally:
        client.close()


def test_release_created_signed_and_published_is_served_and_verifies_on_a_device(hosted, tmp_path: Path) -> None:
    fleet, workspace, keys = hosted
    content = release(workspace, keys, tmp_path, "2026.11.2", 3)
    with admin(fleet) as client:
        result = publish_workspace(workspace, client)
        assert result.uploaded == 1
        assert client.releases()["releases"][0]["version"] == "2026.11.2"
    with device_updater(fleet, workspace, tmp_path) as updater:
        updater.refresh()
        info = updater.get_targetinfo("os/2026.11.2/2026.11.2.img")
        assert info is not None
        assert Path(updater.download_target(info)).read_bytes() == content


def test_publishing_again_uploads_only_new_artifacts(hosted, tmp_path: Path) -> None:
    fleet, workspace, keys = hosted
    release(workspace, keys, tmp_path, "1.0", 1)
    with admin(fleet) as client:
        publish_workspace(workspace, client)
        release(workspace, keys, tmp_path, "1.1", 2)
        again = publish_workspace(workspace, client)
    assert (again.uploaded, again.skipped) == (1, 1)


def test_targets_below_threshold_are_refused_by_the_server_and_nothing_changes(hosted, tmp_path: Path) -> None:
    fleet, workspace, keys = hosted
    release(workspace, keys, tmp_path, "1.0", 1, signers=("targets-1",))
    metadata = fleet.settings.data_dir / "repository" / "metadata"
    with admin(fleet) as client:
        client.put_root("image", workspace.image.root(1).to_bytes())
        before = sorted(p.name for p in metadata.iterdir())
        with pytest.raises(ServerRefused) as refused:
            publish_workspace(workspace, client)
    assert refused.value.code == "below_threshold"
    assert sorted(p.name for p in metadata.iterdir()) == before


def test_first_root_needs_an_admin_token(hosted) -> None:
    fleet, workspace, _ = hosted
    with admin(fleet, Role.OPERATOR) as client, pytest.raises(ServerRefused) as refused:
        client.put_root("image", workspace.image.root(1).to_bytes())
    assert refused.value.status == 403


def test_root_delegating_to_foreign_online_keys_is_refused(tmp_path: Path, hosted) -> None:
    fleet, _, _ = hosted
    other = start_fleet(tmp_path / "other-plane", None)  # its online keys are not ours
    try:
        foreign = Workspace(tmp_path / "foreign")
        foreign.init(Keystore(tmp_path / "foreign-keys"),
                     load_online_keys(other.settings.data_dir / "keys" / "online-keys.json"), datetime.now(UTC))
        with admin(fleet) as client, pytest.raises(ServerRefused) as refused:
            client.put_root("image", foreign.image.root(1).to_bytes())
        assert refused.value.code == "foreign_online_keys"
    finally:
        other.close()


def test_artifact_whose_bytes_do_not_match_their_name_is_refused(hosted) -> None:
    fleet, _, _ = hosted
    response = fleet.client(role=Role.OPERATOR).put(f"/api/v1/admin/repository/blobs/{'0' * 64}", content=b"x")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "hash_mismatch"
    assert not (fleet.settings.data_dir / "repository" / "blobs" / ("0" * 64)).exists()


def test_targets_rollback_upload_is_refused(hosted, tmp_path: Path) -> None:
    fleet, workspace, keys = hosted
    release(workspace, keys, tmp_path, "1.0", 1)
    old_targets = (workspace.image.metadata_dir / "targets.json").read_bytes()
    with admin(fleet) as client:
        publish_workspace(workspace, client)
        release(workspace, keys, tmp_path, "1.1", 2)
        publish_workspace(workspace, client)
        with pytest.raises(ServerRefused) as refused:
            client.put_targets(old_targets)
    assert refused.value.code == "targets_rollback"


def test_timestamp_is_resigned_by_the_server_before_it_expires(hosted, tmp_path: Path) -> None:
    fleet, workspace, keys = hosted
    release(workspace, keys, tmp_path, "1.0", 1)
    with admin(fleet) as client:
        publish_workspace(workspace, client)
    service = fleet.server.state.repository
    version = service.image.timestamp().signed.version
    assert not service.refresh_if_expiring()
    fleet.clock.advance(13 * 3600)  # past half of the one-day timestamp lifetime
    assert service.refresh_if_expiring()
    assert service.image.timestamp().signed.version == version + 1


def test_uploaded_but_unpublished_blobs_are_not_served(hosted) -> None:
    fleet, _, _ = hosted
    data = b"unreleased bytes"
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    assert fleet.client(role=Role.OPERATOR).put(f"/api/v1/admin/repository/blobs/{sha}", content=data).status_code \
        == 200
    assert fleet.client().get(f"/repository/blobs/{sha}").status_code == 404
    listing = fleet.client().get("/repository/targets/")
    assert listing.status_code == 404


def test_repository_serves_byte_ranges_for_resumable_downloads(hosted, tmp_path: Path) -> None:
    fleet, workspace, keys = hosted
    content = release(workspace, keys, tmp_path, "1.0", 1)
    with admin(fleet) as client:
        publish_workspace(workspace, client)
    target = workspace.image.targets().signed.targets["os/1.0/1.0.img"]
    url = f"/repository/targets/os/1.0/{target.hashes['sha256']}.1.0.img"
    response = fleet.client().get(url, headers={"range": "bytes=100-199"})
    assert response.status_code == 206
    assert response.content == content[100:200]
    assert json.loads(fleet.client().get("/repository/metadata/timestamp.json").content)["signed"]["_type"] \
        == "timestamp"


@pytest.mark.parametrize("name", ["os/../../../../{outside}/probe.txt", "os/.hidden", "os//probe.txt"])
def test_signed_targets_naming_a_path_outside_the_repository_are_refused_and_nothing_is_placed(
        hosted, tmp_path: Path, name: str) -> None:
    fleet, workspace, keys = hosted
    release(workspace, keys, tmp_path, "1.0", 1)
    with admin(fleet) as client:
        publish_workspace(workspace, client)
    outside = tmp_path / "outside"
    probe = tmp_path / "probe.txt"
    probe.write_bytes(b"written where it should never be")
    evil = name.format(outside=str(outside).lstrip("/"))
    targets = workspace.image.targets()
    targets.signed.targets[evil] = TargetFile.from_file(evil, str(probe))
    targets.signed.version += 1
    targets.signatures.clear()
    workspace.image.write_targets(targets)
    for signer in ("targets-1", "targets-2"):  # signed by the full targets threshold
        workspace.sign_targets(keys.signer(signer))
    repository = fleet.settings.data_dir / "repository"
    with admin(fleet) as client:
        client.put_blob(hashlib.sha256(probe.read_bytes()).hexdigest(), probe)
        before = sorted(p.relative_to(repository) for p in repository.rglob("*"))
        with pytest.raises(ServerRefused) as refused:
            client.put_targets((workspace.image.metadata_dir / "targets.json").read_bytes())
    assert (refused.value.status, refused.value.code) == (422, "unsafe_path")
    assert not outside.exists()
    assert sorted(p.relative_to(repository) for p in repository.rglob("*")) == before  # nothing placed or published
