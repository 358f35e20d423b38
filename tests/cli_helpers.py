"""Driving the release owners' CLI in tests."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from edgefleet.cli import app
from edgefleet.credentials import Role
from tests.conftest import Fleet


def cli(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def server_args(plane: Fleet) -> list[str]:
    return ["--server", plane.url, "--token", plane.tokens[Role.ADMIN], "--ca-file", str(plane.settings.pki.ca_cert)]


def keys_init(plane: Fleet, tmp: Path, *extra: str) -> tuple[str, str]:
    """``edgefleet keys init`` into ``tmp/keys`` and ``tmp/ws``; returns (keys dir, workspace)."""
    keys, ws = str(tmp / "keys"), str(tmp / "ws")
    cli("keys", "init", "--keys-dir", keys, "--workspace", ws, "--online-keys",
        str(plane.settings.data_dir / "keys" / "online-keys.json"), *extra)
    return keys, ws


def release(ws: str, keys: str, image: Path, version: str, counter: int, hardware_id: str, *extra: str,
            publish_to: Fleet | None = None) -> None:
    """create, sign with targets-1, and optionally publish a release."""
    cli("release", "create", "-w", ws, "--version", version, "--image", str(image), "--counter", str(counter),
        "--hardware-id", hardware_id, *extra)
    cli("release", "sign", "-w", ws, "--keys-dir", keys, "--key", "targets-1")
    if publish_to is not None:
        cli("release", "publish", "-w", ws, *server_args(publish_to))
