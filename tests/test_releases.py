"""Releases signed offline reach a device through a dumb mirror and verify with the real
TUF client (python-tuf ngclient); each attack ends with the client refusing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from tuf.api import exceptions as tuf_errors
from tuf.ngclient import UpdaterConfig

from edgefleet.errors import ConfigError, InvalidRequest
from edgefleet.releases.keys import Keystore
from edgefleet.releases.metadata import (
    RolePolicy,
    new_snapshot,
    new_timestamp,
    next_root,
    require_root_rotation,
    require_threshold,
    sign,
)
from edgefleet.releases.online import publish_online
from tests.releases_world import World, days, make_world


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    yield from make_world(tmp_path)


def test_release_signed_offline_reaches_the_device_through_a_static_mirror_and_verifies(world: World) -> None:
    content = b"\x7fELF golden image " * 5000
    world.release("2026.11.1", content, counter=7)
    updater = world.client()
    updater.refresh()
    info = updater.get_targetinfo("os/os-2026.11.1.img")
    assert info is not None
    assert info.custom["edgefleet"]["release_counter"] == 7
    assert info.custom["edgefleet"]["hardware_ids"] == ["hw-x86"]
    assert Path(updater.download_target(info)).read_bytes() == content


def test_arbitrary_software_bytes_not_matching_the_signed_hash_are_refused(world: World) -> None:
    target = world.release("1", b"genuine image", counter=1)
    stored = world.repo.targets_dir / "os" / f"{target.hashes['sha256']}.os-1.img"
    stored.write_bytes(b"evil!! image!")  # same length, other bytes: a malicious mirror
    updater = world.client()
    updater.refresh()
    info = updater.get_targetinfo("os/os-1.img")
    assert info is not None
    with pytest.raises(tuf_errors.RepositoryError):
        updater.download_target(info)


def test_endless_data_target_longer_than_signed_is_refused(world: World) -> None:
    target = world.release("1", b"short", counter=1)
    stored = world.repo.targets_dir / "os" / f"{target.hashes['sha256']}.os-1.img"
    stored.write_bytes(b"short" + b"A" * 10_000_000)
    updater = world.client()
    updater.refresh()
    info = updater.get_targetinfo("os/os-1.img")
    assert info is not None
    with pytest.raises(tuf_errors.DownloadError):
        updater.download_target(info)


def test_endless_data_timestamp_larger_than_allowed_is_refused(world: World) -> None:
    (world.repo.metadata_dir / "timestamp.json").write_bytes(b"{" + b" " * 20_000 + b"}")
    with pytest.raises(tuf_errors.DownloadError):
        world.client(UpdaterConfig(timestamp_max_length=16_384)).refresh()


def test_timestamp_rollback_is_refused(world: World) -> None:
    old = (world.repo.metadata_dir / "timestamp.json").read_bytes()
    world.release("1", b"v1", counter=1)
    world.client(device="d1").refresh()  # the device has now seen the newer timestamp
    (world.repo.metadata_dir / "timestamp.json").write_bytes(old)
    with pytest.raises(tuf_errors.BadVersionNumberError):
        world.client(device="d1").refresh()


def test_freeze_with_an_expired_timestamp_is_refused(world: World) -> None:
    snapshot = world.repo.snapshot()
    assert snapshot is not None
    stale = new_timestamp(snapshot.signed.version, (world.repo.metadata_dir / "snapshot.json").read_bytes(),
                          world.now - days(3), version=99)
    sign(stale, world.signers["timestamp"][0])
    world.repo.write_timestamp(stale)
    with pytest.raises(tuf_errors.ExpiredMetadataError):
        world.client().refresh()


def test_targets_signed_below_threshold_are_refused_by_the_device(tmp_path: Path) -> None:
    for world in make_world(tmp_path, targets_threshold=2):
        # A compromised server publishes targets that only one release owner signed.
        world.release("1", b"v1", counter=1, signers=world.signers["targets"][:1], publish=False)
        snapshot_signer, timestamp_signer = world.signers["snapshot"][0], world.signers["timestamp"][0]
        snapshot = new_snapshot(world.repo.targets().signed.version, world.now, version=2)
        sign(snapshot, snapshot_signer)
        data = world.repo.write_snapshot(snapshot)
        timestamp = new_timestamp(2, data, world.now, version=2)
        sign(timestamp, timestamp_signer)
        world.repo.write_timestamp(timestamp)
        with pytest.raises(tuf_errors.UnsignedMetadataError):
            world.client().refresh()


def test_server_refuses_to_vouch_for_targets_below_threshold(tmp_path: Path) -> None:
    for world in make_world(tmp_path, targets_threshold=2):
        world.release("1", b"v1", counter=1, signers=world.signers["targets"][:1], publish=False)
        with pytest.raises(InvalidRequest, match="1 of 2"):
            publish_online(world.repo, world.signers["snapshot"][0], world.signers["timestamp"][0], world.now)


def test_root_rotation_signed_by_old_and_new_thresholds_is_followed_by_the_device(world: World) -> None:
    new_ts = world.keys.generate("timestamp-new")
    world.rotate_root({"timestamp": RolePolicy((new_ts,), 1)}, old=world.signers["root"][:2], new=[])
    world.signers["timestamp"] = [world.keys.signer("timestamp-new")]
    world.release("1", b"v1", counter=1)
    updater = world.client()
    updater.refresh()
    assert updater.get_targetinfo("os/os-1.img") is not None


def test_root_n_plus_2_skipping_n_plus_1_is_refused(world: World) -> None:
    new_ts = world.keys.generate("timestamp-new")
    old_root_signers = world.signers["root"][:2]
    world.rotate_root({"timestamp": RolePolicy((new_ts,), 1)}, old=old_root_signers, new=[])
    world.rotate_root({}, old=old_root_signers, new=[])
    (world.repo.metadata_dir / "2.root.json").unlink()  # the mirror withholds N+1
    world.signers["timestamp"] = [world.keys.signer("timestamp-new")]
    world.release("1", b"v1", counter=1)
    # The client cannot reach root 3 without root 2, so it keeps trusting root 1's
    # timestamp key and refuses a timestamp signed by the new one.
    with pytest.raises(tuf_errors.UnsignedMetadataError):
        world.client().refresh()


def test_new_root_signed_only_by_new_keys_is_refused_by_the_release_tooling(world: World) -> None:
    fresh = [world.keys.generate(f"root-new-{i}") for i in range(3)]
    root = next_root(world.repo.root().signed, {"root": RolePolicy(tuple(fresh), 2)}, world.now)
    for i in range(3):
        sign(root, world.keys.signer(f"root-new-{i}"))
    with pytest.raises(InvalidRequest, match="threshold"):
        require_root_rotation(world.repo.root().signed, root)


def test_threshold_counts_only_distinct_authorized_keys(world: World) -> None:
    targets = world.repo.targets()
    root = world.repo.root().signed
    sign(targets, world.signers["snapshot"][0])  # a key that is not a targets key
    require_threshold(root, "targets", targets)  # still the one valid targets signature
    targets.signatures.clear()
    with pytest.raises(InvalidRequest, match="0 of 1"):
        require_threshold(root, "targets", targets)


def test_keystore_encrypts_keys_with_a_passphrase(tmp_path: Path) -> None:
    keys = Keystore(tmp_path / "k")
    public = keys.generate("root-1", passphrase=b"correct horse")
    assert b"ENCRYPTED" in (tmp_path / "k" / "root-1.key").read_bytes()
    assert (tmp_path / "k" / "root-1.key").stat().st_mode & 0o777 == 0o600
    assert keys.signer("root-1", b"correct horse").public_key.keyid == public.keyid
    with pytest.raises(ConfigError, match="passphrase"):
        keys.signer("root-1", b"wrong")
    with pytest.raises(ConfigError, match="passphrase"):
        keys.signer("root-1")
    with pytest.raises(ConfigError, match="already exists"):
        keys.generate("root-1")
    assert json.loads((tmp_path / "k" / "root-1.pub").read_text())["keyid"] == public.keyid


def _online_publish(world: World, *, snapshot_version: int, targets_version: int, timestamp_version: int,
                    snapshot_now: datetime | None = None) -> None:
    """What an attacker holding the online keys (snapshot, timestamp) can publish."""
    snapshot = new_snapshot(targets_version, snapshot_now or world.now, version=snapshot_version)
    sign(snapshot, world.signers["snapshot"][0])
    data = world.repo.write_snapshot(snapshot)
    timestamp = new_timestamp(snapshot_version, data, world.now, version=timestamp_version)
    sign(timestamp, world.signers["timestamp"][0])
    world.repo.write_timestamp(timestamp)


def test_snapshot_rollback_is_refused(world: World) -> None:
    world.release("1", b"v1", counter=1)  # snapshot 2, timestamp 2
    world.client(device="d1").refresh()
    _online_publish(world, snapshot_version=1, targets_version=2, timestamp_version=3)
    with pytest.raises(tuf_errors.BadVersionNumberError):
        world.client(device="d1").refresh()


def test_targets_rollback_is_refused(world: World) -> None:
    world.release("1", b"v1", counter=1)  # targets 2
    world.release("2", b"v2", counter=2)  # targets 3, snapshot 3
    world.client(device="d1").refresh()
    _online_publish(world, snapshot_version=4, targets_version=2, timestamp_version=4)
    with pytest.raises(tuf_errors.BadVersionNumberError):
        world.client(device="d1").refresh()


def test_freeze_with_an_expired_snapshot_is_refused(world: World) -> None:
    world.release("1", b"v1", counter=1)
    _online_publish(world, snapshot_version=3, targets_version=2, timestamp_version=3,
                    snapshot_now=world.now - days(30))
    with pytest.raises(tuf_errors.ExpiredMetadataError):
        world.client().refresh()


def test_freeze_with_expired_targets_is_refused(world: World) -> None:
    world.now -= days(200)  # the release owners' clock: targets signed long ago
    world.release("1", b"v1", counter=1, publish=False)
    world.now += days(200)
    world.publish()
    with pytest.raises(tuf_errors.ExpiredMetadataError):
        world.client().refresh()


def test_freeze_with_an_expired_root_is_refused(world: World) -> None:
    root = next_root(world.repo.root().signed, {}, world.now - days(400))
    for signer in world.signers["root"][:2]:
        sign(root, signer)
    world.repo.write_root(root)
    with pytest.raises(tuf_errors.ExpiredMetadataError):
        world.client().refresh()


def test_mix_and_match_of_metadata_from_different_releases_is_refused(world: World) -> None:
    world.release("1", b"v1", counter=1)  # targets 2
    world.release("2", b"v2", counter=2)  # targets 3
    metadata = world.repo.metadata_dir
    (metadata / "3.targets.json").write_bytes((metadata / "2.targets.json").read_bytes())
    with pytest.raises(tuf_errors.BadVersionNumberError):
        world.client().refresh()


def test_fast_forward_attack_is_recovered_by_rotating_the_timestamp_key(world: World) -> None:
    snapshot = world.repo.snapshot()
    assert snapshot is not None
    data = (world.repo.metadata_dir / "snapshot.json").read_bytes()
    genuine = (world.repo.metadata_dir / "timestamp.json").read_bytes()
    attack = new_timestamp(snapshot.signed.version, data, world.now, version=2**31)
    sign(attack, world.signers["timestamp"][0])  # a stolen online timestamp key, served by a bad mirror
    world.repo.write_timestamp(attack)
    world.client(device="d1").refresh()  # the device now trusts a fast-forwarded version
    (world.repo.metadata_dir / "timestamp.json").write_bytes(genuine)  # the real repository carries on
    world.release("1", b"v1", counter=1)  # the genuine timestamp (low version) is now refused
    with pytest.raises(tuf_errors.BadVersionNumberError):
        world.client(device="d1").refresh()
    # Recovery (TUF 5.3.11): the owners rotate the timestamp key; the fast-forwarded
    # timestamp no longer verifies under the new root, so the device accepts fresh ones.
    new_ts = world.keys.generate("timestamp-2")
    world.rotate_root({"timestamp": RolePolicy((new_ts,), 1)}, old=world.signers["root"][:2], new=[])
    world.signers["timestamp"] = [world.keys.signer("timestamp-2")]
    world.publish()
    updater = world.client(device="d1")
    updater.refresh()
    assert updater.get_targetinfo("os/os-1.img") is not None
