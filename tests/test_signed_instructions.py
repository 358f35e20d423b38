"""Whatever steers a device's update is signed by its director: how to take the release
(force a reboot, retry, revert) on the image target, when (maintenance windows) in the
signed configuration. A compromised server database or a forged director answer can
neither install a release outside its window nor send a device back; the device stays on
its release and says why."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Targets

from edgefleet.agent.hardware import vimage
from edgefleet.credentials import Role
from edgefleet.releases.director import sign_assignment
from edgefleet.releases.instructions import Instructions
from tests.ab_world import (
    RUNNING,
    SLOT_BYTES,
    AbWorld,
    OffsetClock,
    database,
    enrolled,
    run,
    sqlite_plane,
    tamper_desired,
    until,
)
from tests.conftest import Fleet

WINDOW = {"cron": "0 2 * * *", "timezone": "UTC", "duration_minutes": 60}  # 02:00-03:00 UTC


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    yield from sqlite_plane(tmp_path_factory, "signed-plane")


@pytest.fixture(scope="module")
def world(plane: Fleet, tmp_path_factory: pytest.TempPathFactory) -> AbWorld:
    world = AbWorld(plane, tmp_path_factory.mktemp("signed"))
    factory = world.tmp / "factory.img"
    factory.write_bytes(vimage.build(RUNNING, 1, size=SLOT_BYTES))
    world.publish(RUNNING, 1, image=factory)
    world.publish("2026.12.0", 12)
    return world


def forge_director(world: AbWorld, device_id: str, instructions: Instructions) -> None:
    """Re-sign the device's director metadata with a key its director root does not trust,
    now saying ``instructions``, as new versions (a forged answer from a compromised server
    or a proxy in the path)."""
    with database(world) as db:
        version, timestamp_version, targets = db.execute(
            "SELECT version, timestamp_version, targets FROM director_state WHERE device_id = ?",
            (device_id,)).fetchone()
        signed: Metadata[Targets] = Metadata.from_bytes(targets)
        files = sign_assignment(device_id, list(signed.signed.targets.values()), version + 1, timestamp_version + 1,
                                datetime.now(UTC), CryptoSigner.generate_ecdsa(), instructions)
        db.execute("UPDATE director_state SET version = ?, targets = ?, snapshot = ?, timestamp_version = ?, "
                   "timestamp = ? WHERE device_id = ?", (files.version, files.targets, files.snapshot,
                                                         files.timestamp_version, files.timestamp, device_id))


def findings(world: AbWorld, device: Any) -> dict[str, str]:
    return {f.name: f.detail for f in world.record(device).health_findings}


def test_unsigned_or_forged_instructions_neither_install_outside_the_window_nor_steer_the_device(
        world: AbWorld) -> None:
    clock = OffsetClock(datetime(2026, 12, 7, 12, 0, tzinfo=UTC))  # noon: the install window is shut
    device = world.device("tampered", update_check_seconds=0.3, status_interval_seconds=0.3,
                          health_interval_seconds=0.3, agent_options={"clock": clock})
    config = {"group": "tills", "maintenance": {"install": [WINDOW]}}

    async def steps() -> None:
        await enrolled(device)
        device_id = world.device_id(device)
        operator = world.plane.client(role=Role.OPERATOR)
        answer = await asyncio.to_thread(operator.put, f"/api/v1/admin/devices/{device_id}/desired",
                                         json={"document": {"config": config}})
        assert answer.status_code == 200, answer.text
        signed_version = answer.json()["version"]
        await until(lambda: world.record(device).desired_version_applied == signed_version, what="the windows")
        await asyncio.to_thread(world.assign, device, "2026.12.0")
        await until(lambda: world.record(device).update_state == "downloaded", what="the download")
        applied = world.record(device).desired_version_applied

        # 1. The database says: the windows are gone, reboot now, or go back.
        tamper_desired(world, device_id, {"release": "2026.12.0", "config": {**config, "maintenance": {}},
                                          "maintenance": {}, "update": {"force_reboot": True, "revert_to": RUNNING}})
        await until(lambda: "signed-instructions" in findings(world, device), what="the finding")
        detail = findings(world, device)["signed-instructions"]
        assert detail == "not signed by the director, ignored: config, maintenance, update"
        record = world.record(device)
        assert record.health == "degraded"
        assert record.desired_version == applied + 1
        assert record.desired_version_applied == applied  # the tampered version is not acted on
        await asyncio.sleep(1.5)  # several update checks: none installs outside the window
        assert world.record(device).update_state == "downloaded"

        # 2. The director's metadata itself, forged: reboot now.
        forge_director(world, device_id, Instructions(force_reboot=True))
        await until(lambda: str((world.record(device).update or {}).get("refused")).startswith("director_"),
                    what="the refusal")
        await asyncio.sleep(1.0)
        assert world.record(device).update_state == "downloaded"

    run(world, device, steps, timeout=90)
    assert device.boots == 1  # never rebooted
    assert device.device.booted() == "a"
    assert (vimage.read_header(device.device.slot_image("b")) or {}).get("version") != "2026.12.0"  # not written
    assert world.record(device).running_version == RUNNING


def test_a_signed_force_reboot_installs_outside_the_window(world: AbWorld) -> None:
    """The control for the test above: the same instruction, signed, is obeyed."""
    clock = OffsetClock(datetime(2026, 12, 7, 12, 0, tzinfo=UTC))
    device = world.device("forced", update_check_seconds=0.3, status_interval_seconds=0.3,
                          agent_options={"clock": clock})

    async def steps() -> None:
        await enrolled(device)
        device_id = world.device_id(device)
        answer = await asyncio.to_thread(
            world.plane.client(role=Role.OPERATOR).put, f"/api/v1/admin/devices/{device_id}/desired",
            json={"document": {"config": {"group": "tills", "maintenance": {"install": [WINDOW]}}}})
        version = answer.json()["version"]
        await until(lambda: world.record(device).desired_version_applied == version, what="the windows")
        await asyncio.to_thread(world.assign, device, "2026.12.0", force_reboot=True)
        await until(lambda: world.record(device).update_state == "committed", timeout=60, what="the commit")

    run(world, device, steps, timeout=90)
    assert world.record(device).running_version == "2026.12.0"
