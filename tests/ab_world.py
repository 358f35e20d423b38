"""A/B updates end to end: a real control plane, releases made with the CLI, and emulated
devices that really reboot (``EmulatedDevice``) between the agent's runs."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent import Agent, AgentSettings
from edgefleet.agent.emulated import EmulatedDevice
from edgefleet.agent.hardware import VirtualDevice, vimage
from edgefleet.agent.hardware.softtpm import InsecureSoftwareTpm
from edgefleet.agent.hardware.vdevice import Bootloader
from edgefleet.agent.state import StateDir
from edgefleet.credentials import Role
from edgefleet.protocol.v1 import DeviceView
from tests.cli_helpers import keys_init, release, server_args
from tests.conftest import Fleet, start_fleet

SLOT_BYTES = 256 * 1024
HARDWARE = "hw-x86"
RUNNING = "2026.11.0"


@dataclass
class AbWorld:
    plane: Fleet
    tmp: Path
    keys: str = ""
    ws: str = ""
    devices: list[EmulatedDevice] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.keys, self.ws = keys_init(self.plane, self.tmp)

    @property
    def server(self) -> list[str]:
        return server_args(self.plane)

    def publish(self, version: str, counter: int, *, boots: bool = True,
                health_checks: Sequence[Mapping[str, Any]] = (), measurements: Mapping[int, str] | None = None,
                image: Path | None = None, artifacts: Sequence[Path] = (), extra: Sequence[str] = ()) -> Path:
        """Sign and publish a release; ``image`` defaults to a fresh emulated image."""
        if image is None:
            image = self.tmp / f"{version}.img"
            image.write_bytes(vimage.build(version, counter, size=SLOT_BYTES, boots=boots,
                                           health_checks=health_checks, filler=version.encode()))
        args = [arg for pcr, value in (measurements or {}).items() for arg in ("--measurement", f"{pcr}={value}")]
        args += [arg for artifact in artifacts for arg in ("--artifact", str(artifact))]
        release(self.ws, self.keys, image, version, counter, HARDWARE, *args, *extra, publish_to=self.plane)
        return image

    def device(self, name: str, *, bootloader: Bootloader = "grub", tpm: InsecureSoftwareTpm | None = None,
               labels: dict[str, str] | None = None, slot_a: Path | None = None, slot_bytes: int = SLOT_BYTES,
               agent_options: dict[str, Any] | None = None, **settings: Any) -> EmulatedDevice:
        """A device as the factory flashed it: slot A holds RUNNING, or the image ``slot_a``.
        ``settings`` are the agent's settings; ``agent_options`` more arguments of Agent
        (a clock, a transport factory)."""
        device = VirtualDevice.create(self.tmp / name, hardware_id=f"hw-{name}", site="store-1",
                                      hardware_type=HARDWARE, os_version=RUNNING, release_counter=1,
                                      slot_bytes=slot_bytes, bootloader=bootloader, slot_a=slot_a)
        device.install_trust((Path(self.ws) / "image" / "metadata" / "1.root.json").read_bytes(),
                             (Path(self.ws) / "director" / "metadata" / "1.root.json").read_bytes())
        agent_settings = AgentSettings(**{
            "server_url": self.plane.url, "ca_file": self.plane.settings.pki.ca_cert, "state_dir": device.agent_dir,
            "bootstrap_token": self.plane.bootstrap_token("store-1", labels), "long_poll_seconds": 2,
            "backoff_initial_seconds": 0.05, "backoff_max_seconds": 0.2, "update_check_seconds": 3600, **settings,
        })
        emulated = EmulatedDevice(device, lambda: Agent(agent_settings, device, site="store-1", system=device,
                                                        tpm=tpm, labels=labels, **(agent_options or {})),
                                  tpm=tpm, hang_seconds=0.2)
        self.devices.append(emulated)
        return emulated

    @staticmethod
    def device_id(device: EmulatedDevice) -> str:
        """From the agent's state directory: a device that reboots gets a new Agent object,
        which knows its id only once it has read that directory."""
        found = StateDir(device.device.agent_dir).load().device_id
        assert found is not None, "the device has not enrolled"
        return found

    def record(self, device: EmulatedDevice) -> DeviceView:
        response = self.plane.client(role=Role.VIEWER).get(f"/api/v1/admin/devices/{self.device_id(device)}")
        return DeviceView.model_validate(response.json())

    def history(self, device: EmulatedDevice) -> list[dict[str, Any]]:
        response = self.plane.client(role=Role.VIEWER).get(f"/api/v1/admin/devices/{self.device_id(device)}/updates")
        events: list[dict[str, Any]] = response.json()["events"]
        return list(reversed(events))

    def assign(self, device: EmulatedDevice, version: str, **options: bool) -> None:
        response = self.plane.client(role=Role.OPERATOR).put(
            f"/api/v1/admin/devices/{self.device_id(device)}/assignment", json={"release": version, **options})
        assert response.status_code == 200, response.text


def sqlite_plane(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[Fleet]:
    """A control plane on SQLite for one test module (a module-scoped fixture's body)."""
    fleet = start_fleet(tmp_path_factory.mktemp(name), None)
    yield fleet
    fleet.close()


def run(world: AbWorld, device: EmulatedDevice, steps: Callable[[], Any], timeout: float = 60) -> None:
    """Run ``device`` (boot, agent, reboots) while ``steps`` (a coroutine function) runs."""

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(device.run(stop))
        try:
            await asyncio.wait_for(steps(), timeout)
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)

    asyncio.run(scenario())


def eventually(check: Callable[[], Any], what: str, timeout: float = 30) -> Any:
    """Wait (blocking) until ``check`` returns something true, and return it."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return result


async def until(check: Callable[[], bool], timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, f"timed out waiting for {what or check}"
        await asyncio.sleep(0.05)


async def enrolled(device: EmulatedDevice) -> None:
    await until(lambda: device.agent is not None and device.agent.reports >= 1, what="enrollment")


async def assign_until(world: AbWorld, device: EmulatedDevice, version: str, state: str, timeout: float = 30,
                       **options: bool) -> None:
    """Enrolled, assign ``version``, wait until the server shows ``state``."""
    await enrolled(device)
    await asyncio.to_thread(world.assign, device, version, **options)
    await until(lambda: world.record(device).update_state == state, timeout=timeout, what=state)


class OffsetClock:
    """The device's clock, set by the test: wall and monotonic time move with the offset."""

    def __init__(self, now: datetime) -> None:
        self.offset = (now - datetime.now(UTC)).total_seconds()

    def now(self) -> datetime:
        return datetime.now(UTC) + timedelta(seconds=self.offset)

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def set(self, now: datetime) -> None:
        self.offset = (now - datetime.now(UTC)).total_seconds()


def database(world: AbWorld) -> sqlite3.Connection:
    """The control plane's own database, opened as an attacker who holds the server's disk
    (but not the director's online key, which signs nothing for them)."""
    path = world.plane.settings.effective_database_url.removeprefix("sqlite:///")
    return sqlite3.connect(path, timeout=30)


def tamper_desired(world: AbWorld, device_id: str, document: dict[str, Any]) -> None:
    """Write a desired document straight into the store, past the one writer (so unsigned),
    and note the change so that the server wakes the device's long poll."""
    now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    with database(world) as db:
        db.execute("UPDATE devices SET desired = ?, desired_version = desired_version + 1 WHERE id = ?",
                   (json.dumps(document), device_id))
        db.execute("INSERT INTO device_changes (device_id, changed_at) VALUES (?, ?)", (device_id, now))
