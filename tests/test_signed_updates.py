"""Signed updates end to end: a release made with the CLI reaches an emulated device
through a hub-like mirror and verifies (Uptane: director + image repository)."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgefleet.agent import Agent, AgentSettings
from edgefleet.agent.hardware import VirtualDevice
from edgefleet.agent.state import StateDir
from edgefleet.cli import app
from edgefleet.credentials import Role
from tests.cli_helpers import cli, keys_init, release, server_args
from tests.conftest import Fleet, own_findings, start_fleet
from tests.releases_world import StaticMirror
from tests.test_telemetry_exports import start_hub


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Fleet]:
    fleet = start_fleet(tmp_path / "plane", None)
    yield fleet
    fleet.close()


def sync_hub(plane: Fleet, hub: Path) -> None:
    """What a regional hub does: copy the published repository (no trust needed)."""
    for part in ("metadata", "targets"):
        shutil.copytree(plane.settings.data_dir / "repository" / part, hub / part, dirs_exist_ok=True)


@pytest.fixture
def published(plane: Fleet, tmp_path: Path) -> tuple[Path, list[str]]:
    """Release 2026.12.0 (counter 12, hw-x86) made and published with the CLI."""
    keys, ws = keys_init(plane, tmp_path)
    image = tmp_path / "golden-2026.12.0.erofs"
    image.write_bytes(bytes(range(256)) * 8192)  # 2 MiB
    release(ws, keys, image, "2026.12.0", 12, "hw-x86", "--measurement", f"4={'b' * 64}", publish_to=plane)
    return image, server_args(plane)


def run_agent_until_assigned(plane: Fleet, tmp_path: Path, server: list[str], *, release_counter: int,
                             mirrors: list[str], until: str) -> tuple[Agent, VirtualDevice]:
    device = VirtualDevice.create(tmp_path / "vdev", hardware_id="hw-store-1-001", site="store-1",
                                  hardware_type="hw-x86", os_version="2026.11.0", release_counter=release_counter,
                                  slot_bytes=4 << 20)
    device.install_trust((tmp_path / "ws" / "image" / "metadata" / "1.root.json").read_bytes(),
                         (tmp_path / "ws" / "director" / "metadata" / "1.root.json").read_bytes())
    settings = AgentSettings(
        server_url=plane.url, ca_file=plane.settings.pki.ca_cert, state_dir=device.agent_dir,
        bootstrap_token=plane.bootstrap_token("store-1"), long_poll_seconds=30, mirrors=mirrors,
        backoff_initial_seconds=0.05, backoff_max_seconds=0.2, update_check_seconds=3600,
    )
    agent = Agent(settings, device, site="store-1", system=device)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            for _ in range(400):
                if agent.reports >= 1:
                    break
                await asyncio.sleep(0.05)
            assert agent.device_id is not None
            await asyncio.to_thread(cli, "assign", agent.device_id, "--release", "2026.12.0", *server)
            deadline = time.monotonic() + 20  # the long poll wakes the device at once
            while StateDir(device.agent_dir).load().update_state != until:
                assert not task.done() or agent.rebooting, task
                assert time.monotonic() < deadline, StateDir(device.agent_dir).load()
                await asyncio.sleep(0.05)
            viewer = plane.client(role=Role.VIEWER)
            url = f"/api/v1/admin/devices/{agent.device_id}"
            while (await asyncio.to_thread(viewer.get, url)).json()["update_state"] != until:
                assert time.monotonic() < deadline  # the change is reported at once
                await asyncio.sleep(0.05)
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)

    asyncio.run(scenario())
    return agent, device


def test_release_made_with_the_cli_reaches_a_device_through_a_hub_mirror_verifies_and_installs(
    plane: Fleet, published: tuple[Path, list[str]], tmp_path: Path
) -> None:
    image, server = published
    hub_dir = tmp_path / "hub"
    sync_hub(plane, hub_dir)
    hub = StaticMirror(hub_dir)
    try:
        agent, device = run_agent_until_assigned(plane, tmp_path, server, release_counter=11, mirrors=[hub.url],
                                                 until="rebooting")
    finally:
        hub.close()
    state = StateDir(device.agent_dir).load()
    assert state.update["version"] == "2026.12.0"
    assert device.slot_image("b").read_bytes()[:image.stat().st_size] == image.read_bytes()  # installed
    assert device.os_version() == "2026.11.0"  # the reboot into it is the emulated device's to do
    assert device.reboot_requested
    assert device.bootenv.read()["BOOT_ORDER"] == "B A"  # one trial boot armed
    record = plane.client(role=Role.VIEWER).get(f"/api/v1/admin/devices/{agent.device_id}").json()
    assert record["update_state"] == "rebooting"
    assert record["desired_version"] >= 1


def test_a_release_reaches_a_device_through_a_real_hubs_pull_through_cache(
    plane: Fleet, published: tuple[Path, list[str]], tmp_path: Path
) -> None:
    image, server = published
    hub = start_hub(plane, tmp_path / "hub")
    try:
        _, device = run_agent_until_assigned(plane, tmp_path, server, release_counter=11,
                                             mirrors=[f"https://127.0.0.1:{hub.port}/repository"], until="rebooting")
        mirror = hub.hub.mirror
        assert mirror is not None
        assert mirror.misses >= 4  # root, timestamp, snapshot, targets metadata and the image, each fetched upstream
        cached = [p for p in (tmp_path / "hub" / "data" / "mirror" / "targets").rglob("*") if p.is_file()]
    finally:
        hub.stop()
    assert device.slot_image("b").read_bytes()[:image.stat().st_size] == image.read_bytes()  # installed
    assert [path.read_bytes() for path in cached] == [image.read_bytes()]  # kept for the site's next device


def test_device_refuses_a_lower_release_counter_reports_why_and_keeps_its_release(
    plane: Fleet, published: tuple[Path, list[str]], tmp_path: Path
) -> None:
    _, server = published
    agent, device = run_agent_until_assigned(plane, tmp_path, server, release_counter=20,
                                             mirrors=[f"{plane.url}/repository"], until="refused")
    assert StateDir(device.agent_dir).load().update_error == "counter_rollback"
    assert not (device.agent_dir / "downloads").exists()
    assert device.os_version() == "2026.11.0"
    record = plane.client(role=Role.VIEWER).get(f"/api/v1/admin/devices/{agent.device_id}").json()
    assert record["update_state"] == "refused"
    assert record["health"] != "unhealthy"  # a refused release is not a fault of the device
    assert own_findings(record["health_findings"]) == []


def test_assigning_a_release_that_does_not_fit_the_device_is_refused(plane: Fleet, tmp_path: Path) -> None:
    keys, ws = keys_init(plane, tmp_path)
    image = tmp_path / "arm.img"
    image.write_bytes(b"arm image")
    release(ws, keys, image, "1", 1, "hw-arm64", publish_to=plane)
    device = plane.enroll()  # enrolled without a hardware type
    result = CliRunner().invoke(app, ["assign", device.id, "--release", "1", *server_args(plane)])
    assert result.exit_code == 1
    assert "hardware_mismatch" in result.output
