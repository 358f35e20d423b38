"""Rotating the server's online keys (timestamp, snapshot, director): the server creates a
new key generation, the release owners sign a root delegating to it, and devices follow
without interruption."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.credentials import Role
from edgefleet.releases.keys import Keystore
from tests.cli_helpers import cli
from tests.uptane_world import Setup, make_setup


@pytest.fixture
def assigned(tmp_path: Path) -> Iterator[Setup]:
    for setup in make_setup(tmp_path):
        setup.assign("5.0")
        yield setup


def _rotate(setup: Setup, role: str) -> None:
    data_dir = setup.plane.settings.data_dir
    cli("server", "rotate-key", "--role", role, "--data-dir", str(data_dir))
    cli("keys", "rotate", "--keys-dir", str(setup.tmp / "keys"), "-w", str(setup.tmp / "ws"), "--role", role,
        "--online-keys", str(data_dir / "keys" / "online-keys.json"), "--sign-with", "root-1", "--sign-with",
        "root-2")
    cli("release", "publish", "-w", str(setup.tmp / "ws"), "--server", setup.plane.url, "--token",
        setup.plane.tokens[Role.ADMIN], "--ca-file", str(setup.plane.settings.pki.ca_cert))


def _signed_by(path: Path) -> set[str]:
    return set(Metadata.from_file(str(path)).signatures)


@pytest.mark.parametrize("role", ["timestamp", "snapshot"])
def test_image_repository_online_key_rotation_is_followed_by_devices(assigned: Setup, role: str) -> None:
    client = assigned.client()
    try:
        assert client.check(installed_counter=0) is not None
        old = Keystore(assigned.plane.settings.data_dir / "keys").public_key(role).keyid
        _rotate(assigned, role)
        assert client.check(installed_counter=0) is not None
    finally:
        client.close()
    metadata = assigned.plane.settings.data_dir / "repository" / "metadata"
    new = Keystore(assigned.plane.settings.data_dir / "keys").public_key(f"{role}-2").keyid
    assert _signed_by(metadata / f"{role}.json") == {new}
    assert old not in _signed_by(metadata / f"{role}.json")


def test_director_key_rotation_resigns_every_device_and_devices_follow(assigned: Setup) -> None:
    client = assigned.client()
    try:
        assert client.check(installed_counter=0) is not None
        _rotate(assigned, "director")
        plan = client.check(installed_counter=0)
    finally:
        client.close()
    assert plan is not None
    new = Keystore(assigned.plane.settings.data_dir / "keys").public_key("director-2").keyid
    assert _signed_by(assigned.device.directory / "tuf" / "director" / "targets.json") == {new}


def test_a_root_delegating_to_a_key_the_server_does_not_hold_is_refused(assigned: Setup) -> None:
    foreign = Keystore(assigned.tmp / "elsewhere").generate("timestamp")
    from datetime import UTC, datetime

    assigned.workspace.rotate("timestamp", [foreign], 1,
                              [Keystore(assigned.tmp / "keys").signer(n) for n in ("root-1", "root-2")],
                              datetime.now(UTC))
    result = CliRunner().invoke(app, ["release", "publish", "-w", str(assigned.tmp / "ws"), "--server",
                                      assigned.plane.url, "--token", assigned.plane.tokens[Role.ADMIN], "--ca-file",
                                      str(assigned.plane.settings.pki.ca_cert)])
    assert result.exit_code == 1
    assert "foreign_online_keys" in result.output
