"""Uptane attacks against a device: a compromised director (signed with the real online
director key) or a malicious mirror can choose among signed releases at most; anything else
ends with the device refusing and still on its current release."""

from __future__ import annotations

import copy
import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tuf.api.metadata import TargetFile

from edgefleet.agent.updates import TrustAnchors, UpdateClient
from edgefleet.client import AdminClient
from edgefleet.credentials import Role
from edgefleet.errors import UpdateRefused
from edgefleet.releases.keys import Keystore
from edgefleet.releases.publish import publish_workspace
from tests.releases_world import StaticMirror
from tests.uptane_world import Setup, make_setup


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    yield from make_setup(tmp_path)


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
        delivery = client.download(plan)
        assert delivery.path.read_bytes() == b"image 5.0 " * 5000
        assert (delivery.method, delivery.downloaded_bytes) == ("full", plan.target.length)
    finally:
        client.close()


def test_nothing_assigned_means_nothing_to_do(setup: Setup) -> None:
    client = setup.client()
    try:
        assert client.check(installed_counter=0) is None
    finally:
        client.close()


def test_before_the_first_check_no_configuration_is_director_signed_and_nothing_fails(setup: Setup) -> None:
    client = setup.client()
    try:
        assert client.assigned_config() is None  # a desired state that arrives first waits for the check
        client.check(0)
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
        http.event_hooks["request"].append(lambda request: seen.append(request.url.raw_path.decode()))
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
    # The director's: its bundle, which holds only the timestamp (the device has the rest).
    held = json.loads((setup.device.directory / "tuf" / "director" / "snapshot.json").read_bytes())
    assert [path.rsplit("/", 1)[-1] for path in requests] == [
        f"director?root=1&snapshot={held['signed']['version']}", "timestamp.json"]


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


def test_metadata_a_power_cut_left_empty_on_disk_is_fetched_again(setup: Setup) -> None:
    """python-tuf renames its metadata into place without an fsync; a power cut can leave
    targets.json empty while the record of the last refresh calls it current (same
    timestamps on the server). The check fetches and verifies it again, where the agent
    used to crash on it at every start."""
    setup.assign("5.0")
    client = setup.client()
    try:
        assert client.check(installed_counter=4) is not None
        for repository in ("director", "image"):
            (client.dir / repository / "targets.json").write_bytes(b"")  # what the cut left
        plan = client.check(installed_counter=4)
        assert plan is not None
        assert plan.version == "5.0"
    finally:
        client.close()
