"""The emulated device ("vdevice"): a directory holding everything a real device keeps in
hardware, so the real agent code runs against it in tests, the demo and the simulator.

    <dir>/device.json     identity: hardware id and type, site, labels (what the factory burned in)
    <dir>/slots/a.img     A/B slot images, with a.json / b.json naming their OS version and counter
    <dir>/trust/          TUF roots shipped read-only in the OS image
    <dir>/eventlog.bin    the boot event log the emulated firmware wrote (firmware.py)
    <dir>/booted          the slot the emulated firmware booted last
    <dir>/grubenv         the bootloader environment, real GRUB format
    <dir>/reboots.log     one JSON line per reboot request
    <dir>/agent/          the agent's own state directory
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

from edgefleet.agent.hardware.grubenv import GrubEnvFile
from edgefleet.agent.hardware.interfaces import SlotName
from edgefleet.errors import ConfigError
from edgefleet.util.atomic import atomic_write_bytes, atomic_write_json


class VirtualDevice:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._identity: dict[str, Any] = json.loads((path / "device.json").read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path} is not a vdevice directory: {exc}") from exc
        self.bootenv = GrubEnvFile(path / "grubenv")

    @classmethod
    def create(
        cls, path: Path, *, hardware_id: str, site: str, labels: Mapping[str, str] | None = None,
        os_version: str = "1.0.0", slot_bytes: int = 1 << 20, hardware_type: str = "vdevice-x86",
        release_counter: int = 0,
    ) -> VirtualDevice:
        """Lay out a new vdevice whose slot A holds ``os_version`` and is booted."""
        (path / "slots").mkdir(parents=True, exist_ok=True)
        image = os_version.encode().ljust(slot_bytes, b"\0")
        atomic_write_bytes(path / "slots" / "a.img", image)
        atomic_write_json(path / "slots" / "a.json", {"version": os_version, "counter": release_counter})
        with open(path / "slots" / "b.img", "wb") as handle:
            handle.truncate(slot_bytes)
        atomic_write_bytes(path / "booted", b"a\n")
        GrubEnvFile(path / "grubenv").write(
            {"ORDER": "A B", "A_OK": "1", "B_OK": "0", "A_TRY": "0", "B_TRY": "0"}
        )
        identity = {"hardware_id": hardware_id, "hardware_type": hardware_type, "site": site,
                    "labels": dict(labels or {})}
        atomic_write_json(path / "device.json", identity)
        return cls(path)

    # Platform
    def hardware_id(self) -> str:
        return str(self._identity["hardware_id"])

    def hardware_type(self) -> str | None:
        value = self._identity.get("hardware_type")
        return str(value) if value is not None else None

    def _slot_meta(self) -> dict[str, Any]:
        try:
            meta = json.loads((self.path / "slots" / f"{self.booted()}.json").read_bytes())
        except (OSError, ValueError):
            return {}
        return meta if isinstance(meta, dict) else {}

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

    # Slots
    def booted(self) -> SlotName:
        value = (self.path / "booted").read_text().strip()
        if value not in ("a", "b"):
            raise ConfigError(f"{self.path}/booted names no slot: {value!r}")
        return cast(SlotName, value)

    def other(self) -> SlotName:
        return "b" if self.booted() == "a" else "a"

    def size(self, slot: SlotName) -> int:
        return os.path.getsize(self.path / "slots" / f"{slot}.img")

    # Reboot
    def reboot(self, reason: str) -> None:
        with open(self.path / "reboots.log", "a") as log:
            log.write(json.dumps({"at": time.time(), "reason": reason}) + "\n")
            log.flush()
            os.fsync(log.fileno())
