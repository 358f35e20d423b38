"""The release owners' path through the CLI: keys init, release create, threshold signing
with passphrase-protected keys, publish to a running control plane, list, key rotation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.credentials import Role
from tests.cli_helpers import keys_init, release, server_args
from tests.conftest import Fleet, start_fleet


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Fleet]:
    fleet = start_fleet(tmp_path / "plane", None)
    yield fleet
    fleet.close()


def run(*args: str, env: dict[str, str] | None = None) -> str:
    result = CliRunner().invoke(app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result.output


def test_release_created_signed_by_two_owners_and_published_with_the_cli(plane: Fleet, tmp_path: Path) -> None:
    keys, ws = str(tmp_path / "keys"), str(tmp_path / "ws")
    secret = {"RELEASE_PASSPHRASE": "hunter2-but-longer"}
    run("keys", "init", "--keys-dir", keys, "--workspace", ws, "--online-keys",
        str(plane.settings.data_dir / "keys" / "online-keys.json"), "--targets-keys", "2", "--targets-threshold",
        "2", "--passphrase-env", "RELEASE_PASSPHRASE", env=secret)
    image = tmp_path / "golden.erofs"
    image.write_bytes(b"erofs image bytes" * 1000)
    run("release", "create", "-w", ws, "--version", "2026.11.3", "--image", str(image), "--counter", "4",
        "--hardware-id", "hw-x86", "--measurement", f"4={'a' * 64}")
    first = run("release", "sign", "-w", ws, "--keys-dir", keys, "--key", "targets-1", "--passphrase-env",
                "RELEASE_PASSPHRASE", env=secret)
    assert "1 of 2" in first
    assert "needs more signatures" in first
    second = run("release", "sign", "-w", ws, "--keys-dir", keys, "--key", "targets-2", "--passphrase-env",
                 "RELEASE_PASSPHRASE", env=secret)
    assert "2 of 2" in second
    server = ["--server", plane.url, "--token", plane.tokens[Role.ADMIN], "--ca-file",
              str(plane.settings.pki.ca_cert)]
    assert "2 artifacts uploaded" in run("release", "publish", "-w", ws, *server)  # the image and its index
    assert "2026.11.3" in run("release", "ls", "-w", ws)
    published = plane.client(role=Role.VIEWER).get("/api/v1/admin/repository/releases").json()
    assert published["releases"][0]["hardware_ids"] == ["hw-x86"]


def test_wrong_passphrase_is_a_clear_error(plane: Fleet, tmp_path: Path) -> None:
    keys, ws = str(tmp_path / "keys"), str(tmp_path / "ws")
    run("keys", "init", "--keys-dir", keys, "--workspace", ws, "--online-keys",
        str(plane.settings.data_dir / "keys" / "online-keys.json"), "--passphrase-env", "P", env={"P": "right"})
    result = CliRunner().invoke(app, ["release", "sign", "-w", ws, "--keys-dir", keys, "--key", "targets-1",
                                      "--passphrase-env", "P"], env={"P": "wrong"})
    assert result.exit_code == 2
    assert "passphrase" in result.output


def test_release_counter_may_not_go_down(plane: Fleet, tmp_path: Path) -> None:
    keys, ws = str(tmp_path / "keys"), str(tmp_path / "ws")
    run("keys", "init", "--keys-dir", keys, "--workspace", ws, "--online-keys",
        str(plane.settings.data_dir / "keys" / "online-keys.json"))
    image = tmp_path / "a.img"
    image.write_bytes(b"a")
    run("release", "create", "-w", ws, "--version", "2", "--image", str(image), "--counter", "5",
        "--hardware-id", "hw")
    result = CliRunner().invoke(app, ["release", "create", "-w", ws, "--version", "3", "--image", str(image),
                                      "--counter", "4", "--hardware-id", "hw"])
    assert result.exit_code == 1
    assert "below 5" in result.output


def test_targets_key_rotation_is_published_and_old_key_can_no_longer_sign(plane: Fleet, tmp_path: Path) -> None:
    server = server_args(plane)
    keys, ws = keys_init(plane, tmp_path)
    image = tmp_path / "a.img"
    image.write_bytes(b"image one")
    release(ws, keys, image, "1", 1, "hw", publish_to=plane)
    out = run("keys", "rotate", "--keys-dir", keys, "-w", ws, "--role", "targets", "--new-key", "targets-9",
              "--sign-with", "root-1", "--sign-with", "root-2")
    assert "root version 2" in out
    image.write_bytes(b"image two")
    run("release", "create", "-w", ws, "--version", "2", "--image", str(image), "--counter", "2", "--hardware-id", "hw")
    refused = CliRunner().invoke(app, ["release", "sign", "-w", ws, "--keys-dir", keys, "--key", "targets-1"])
    assert refused.exit_code == 1
    assert "not a targets key" in refused.output
    run("release", "sign", "-w", ws, "--keys-dir", keys, "--key", "targets-9")
    run("release", "publish", "-w", ws, *server)
    assert plane.server.state.repository.image.root().signed.version == 2


def test_root_rotation_needs_old_and_new_thresholds(plane: Fleet, tmp_path: Path) -> None:
    keys, ws = str(tmp_path / "keys"), str(tmp_path / "ws")
    run("keys", "init", "--keys-dir", keys, "--workspace", ws, "--online-keys",
        str(plane.settings.data_dir / "keys" / "online-keys.json"))
    only_new = CliRunner().invoke(app, ["keys", "rotate", "--keys-dir", keys, "-w", ws, "--role", "root",
                                        "--new-key", "root-a", "--new-key", "root-b", "--threshold", "2",
                                        "--sign-with", "root-a", "--sign-with", "root-b"])
    assert only_new.exit_code == 1
    assert "threshold" in only_new.output
    run("keys", "rotate", "--keys-dir", keys, "-w", ws, "--role", "root", "--new-key", "root-a", "--new-key",
        "root-b", "--threshold", "2", "--sign-with", "root-1", "--sign-with", "root-2", "--sign-with", "root-a",
        "--sign-with", "root-b")
    assert (tmp_path / "ws" / "image" / "metadata" / "2.root.json").exists()
    assert (tmp_path / "ws" / "director" / "metadata" / "2.root.json").exists()
