"""The emulated device ("vdevice"): a directory holding everything a real device keeps in
hardware, so the real agent code runs against it in tests, the demo and the simulator.

    <dir>/device.json     identity: hardware id and type, site, labels (what the factory burned in)
    <dir>/slots/a.img     A/B slot images (vimage.py: the header names version and counter)
    <dir>/trust/          TUF roots shipped read-only in the OS image
    <dir>/eventlog.bin    the boot event log the emulated firmware wrote (firmware.py)
    <dir>/booted          the slot the emulated firmware booted last
    <dir>/boot_id         changes at every emulated power-on
    <dir>/grubenv         the bootloader environment, real GRUB format, or
    <dir>/uboot.env       a redundant U-Boot environment (device.json "bootloader")
    <dir>/reboots.log     one JSON line per reboot request
    <dir>/config/         the rendered OS configuration (Ignition, cloud-init NoCloud seed)
    <dir>/agent/          the agent's own state directory
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast

from edgefleet.agent.hardware import vimage
from edgefleet.agent.hardware.grubenv import GrubEnvFile
from edgefleet.agent.hardware.interfaces import BootEnv, SlotName
from edgefleet.agent.hardware.ubootenv import UBootEnvFile
from edgefleet.agent.slotenv import SlotEnv
from edgefleet.errors import ConfigError
from edgefleet.util.atomic import atomic_write_bytes, atomic_write_json

Bootloader = Literal["grub", "uboot"]


class VirtualDevice:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._identity: dict[str, Any] = json.loads((path / "device.json").read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} is not a vdevice directory: {exc}") from exc
        self._bootenv: BootEnv = (UBootEnvFile(path / "uboot.env") if self._identity.get("bootloader") == "uboot"
                                  else GrubEnvFile(path / "grubenv"))
        self.reboot_requested = False

    @classmethod
    def create(
        cls, path: Path, *, hardware_id: str, site: str, labels: Mapping[str, str] | None = None,
        os_version: str = "1.0.0", slot_bytes: int = 1 << 20, hardware_type: str = "vdevice-x86",
        release_counter: int = 0, bootloader: Bootloader = "grub", slot_a: Path | None = None,
    ) -> VirtualDevice:
        """Lay out a new vdevice as the factory flashed it: slot A holds ``os_version`` (or,
        shared by hard link, the image file ``slot_a``), is good and booted; slot B is empty."""
        (path / "slots").mkdir(parents=True, exist_ok=True)
        if slot_a is not None:
            os.link(slot_a, path / "slots" / "a.img")
        else:
            atomic_write_bytes(path / "slots" / "a.img", vimage.build(os_version, release_counter, size=slot_bytes))
        with open(path / "slots" / "b.img", "wb") as handle:
            handle.truncate(slot_bytes)
        atomic_write_bytes(path / "booted", b"a\n")
        atomic_write_bytes(path / "boot_id", uuid.uuid4().hex.encode())
        identity = {"hardware_id": hardware_id, "hardware_type": hardware_type, "site": site,
                    "labels": dict(labels or {}), "bootloader": bootloader}
        atomic_write_json(path / "device.json", identity)
        device = cls(path)
        device.bootenv.write(SlotEnv.factory("a").render())
        return device

    @property
    def bootenv(self) -> BootEnv:
        return self._bootenv

    # Platform
    def hardware_id(self) -> str:
        return str(self._identity["hardware_id"])

    def hardware_type(self) -> str | None:
        value = self._identity.get("hardware_type")
        return str(value) if value is not None else None

    def _slot_meta(self, slot: SlotName | None = None) -> dict[str, Any]:
        return vimage.read_header(self.slot_image(slot or self.booted())) or {}

    def os_version(self) -> str | None:
        version = self._slot_meta().get("version")
        return str(version) if version is not None else None

    def release_counter(self) -> int:
        counter = self._slot_meta().get("counter", 0)
        return counter if isinstance(counter, int) else 0

    def trust_dir(self) -> Path:
        return self.path / "trust"

    def event_log(self) -> Path:
        return self.path / "eventlog.bin"

    def os_config_dir(self) -> Path:
        return self.path / "config"

    def slot_image(self, slot: SlotName) -> Path:
        return self.path / "slots" / f"{slot}.img"

    def install_trust(self, image_root: bytes, director_root: bytes) -> None:
        """Put the TUF roots where the OS image ships them, read-only as on a real device."""
        for name, data in (("image-root.json", image_root), ("director-root.json", director_root)):
            atomic_write_bytes(self.trust_dir() / name, data, mode=0o444)

    def hostname(self) -> str:
        return self.hardware_id()

    @property
    def site(self) -> str:
        return str(self._identity["site"])

    @property
    def labels(self) -> dict[str, str]:
        return dict(self._identity.get("labels", {}))

    @property
    def agent_dir(self) -> Path:
        return self.path / "agent"

    # ABSystem
    def booted(self) -> SlotName:
        value = (self.path / "booted").read_text().strip()
        if value not in ("a", "b"):
            raise ConfigError(f"{self.path}/booted names no slot: {value!r}")
        return cast(SlotName, value)

    def other(self) -> SlotName:
        return "b" if self.booted() == "a" else "a"

    def slot_device(self, slot: SlotName) -> Path:
        """The slot to write into: a slot still shared with other devices (a hard link) is
        copied first, so that writing it changes this device only."""
        image = self.slot_image(slot)
        if image.stat().st_nlink > 1:
            own = image.with_suffix(".own")
            shutil.copyfile(image, own)
            os.replace(own, image)
        return image

    def slot_source(self, slot: SlotName) -> Path:
        return self.slot_image(slot)  # reading never needs a copy of a shared slot

    def slot_size(self, slot: SlotName) -> int:
        return os.path.getsize(self.slot_image(slot))

    def stage_boot(self, slot: SlotName, length: int) -> None:
        """The emulated firmware boots the slot file itself: nothing to stage."""

    def boot_id(self) -> str:
        return (self.path / "boot_id").read_text().strip()

    def image_health_checks(self) -> list[dict[str, object]]:
        checks = self._slot_meta().get("health_checks", [])
        return [c for c in checks if isinstance(c, dict)] if isinstance(checks, list) else []

    def reaches_agent(self) -> bool:
        """Whether the booted image's OS comes up far enough to start the agent."""
        return self._slot_meta().get("boots", True) is not False

    def reboot(self, reason: str) -> None:
        """Record the request; whoever runs the emulated device power-cycles it
        (``firmware.power_on``) once the agent has stopped."""
        with open(self.path / "reboots.log", "a") as log:
            log.write(json.dumps({"at": time.time(), "reason": reason}) + "\n")
            log.flush()
            os.fsync(log.fileno())
        self.reboot_requested = True

    def mark_booted(self, slot: SlotName) -> None:
        """The emulated firmware's record of what it booted, with a fresh boot id."""
        atomic_write_bytes(self.path / "booted", f"{slot}\n".encode())
        atomic_write_bytes(self.path / "boot_id", uuid.uuid4().hex.encode())
        self.reboot_requested = False
