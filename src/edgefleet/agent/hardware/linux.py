"""The real platform: a Linux host's machine id, os-release and hostname, and its A/B root
partitions."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from pathlib import Path
from typing import cast

from edgefleet.agent.hardware.interfaces import BootEnv, SlotName
from edgefleet.agent.hardware.sdboot import SdBootEntries
from edgefleet.errors import ConfigError


class LinuxHost:
    def __init__(self, root: Path = Path("/")) -> None:
        self.root = root

    def hardware_id(self) -> str:
        """/etc/machine-id (systemd's stable per-installation id).

        Raises:
            ConfigError: the host has no machine id.
        """
        try:
            value = (self.root / "etc/machine-id").read_text().strip()
        except OSError as exc:
            raise ConfigError(f"no machine id: {exc}") from exc
        if not value:
            raise ConfigError("empty /etc/machine-id")
        return value

    def _os_release(self) -> dict[str, str]:
        try:
            lines = (self.root / "etc/os-release").read_text().splitlines()
        except OSError:
            return {}
        return {k: v.strip().strip('"') for k, _, v in (line.partition("=") for line in lines if "=" in line)}

    def os_version(self) -> str | None:
        """The release the image names (``IMAGE_VERSION``, which edgefleet images set); None
        on a host no image of ours booted: its distribution's version (Debian's "12") is not
        a release, and reporting it made the technician's page say "Release running 12"."""
        version = self._os_release().get("IMAGE_VERSION")
        return version[:128] if version else None

    def release_counter(self) -> int:
        value = self._os_release().get("EDGEFLEET_RELEASE_COUNTER", "0")
        return int(value) if value.isdigit() else 0

    def hardware_type(self) -> str | None:
        """The DMI product name, made safe for an identifier (None if the host has none)."""
        try:
            name = (self.root / "sys/class/dmi/id/product_name").read_text().strip()
        except OSError:
            return None
        safe = re.sub(r"[^A-Za-z0-9._:-]+", "-", name).strip("-")[:128]
        return safe or None

    def trust_dir(self) -> Path:
        return self.root / "usr/share/edgefleet/trust"

    def event_log(self) -> Path:
        return self.root / "sys/kernel/security/tpm0/binary_bios_measurements"

    def os_config_dir(self) -> Path:
        return self.root / "var/lib/edgefleet/os-config"

    def hostname(self) -> str:
        return socket.gethostname()


class LinuxABSystem:
    """A/B root partitions on a Linux host. Which slot booted: ``edgefleet.slot=a|b`` on the
    kernel command line (the U-Boot script in ``agent/boot/`` passes it), else the
    partition under the dm-verity device ``root`` (an edgefleet image, whose initramfs
    opens whichever slot verifies). Greenboot-style checks shipped in the image live in
    ``/etc/edgefleet/health.d/*.json`` (one object or a list each)."""

    def __init__(self, slots: dict[SlotName, Path], bootenv: BootEnv, root: Path = Path("/")) -> None:
        self.slots = slots
        self._bootenv = bootenv
        self.root = root

    @property
    def bootenv(self) -> BootEnv:
        return self._bootenv

    def booted(self) -> SlotName:
        """Raises ConfigError when the kernel command line names no slot."""
        try:
            cmdline = (self.root / "proc/cmdline").read_text().split()
        except OSError as exc:
            raise ConfigError(f"cannot read the kernel command line: {exc}") from exc
        for arg in cmdline:
            if arg in ("edgefleet.slot=a", "edgefleet.slot=b"):
                return cast(SlotName, arg[-1])
        under = self._verity_root_partition()
        if under in ("root-a", "root-b"):
            return cast(SlotName, under[-1])
        raise ConfigError("neither the kernel command line (edgefleet.slot=a|b) nor the dm-verity root device "
                          "names the booted slot: is the A/B boot chain installed?")

    def _verity_root_partition(self) -> str | None:
        """The GPT label of the partition under the device-mapper device named ``root``."""
        for dm in sorted((self.root / "sys/block").glob("dm-*")):
            try:
                if (dm / "dm/name").read_text().strip() != "root":
                    continue
                for below in sorted((dm / "slaves").iterdir()):
                    for line in (below / "uevent").read_text().splitlines():
                        if line.startswith("PARTNAME="):
                            return line.partition("=")[2]
            except OSError:
                continue
        return None

    def slot_device(self, slot: SlotName) -> Path:
        return self.slots[slot]

    def slot_source(self, slot: SlotName) -> Path:
        return self.slots[slot]

    def slot_size(self, slot: SlotName) -> int:
        with open(self.slots[slot], "rb") as handle:
            return handle.seek(0, os.SEEK_END)

    def stage_boot(self, slot: SlotName, length: int) -> None:
        if isinstance(self._bootenv, SdBootEntries):
            self._bootenv.stage(slot, self.slots[slot], length)

    def boot_id(self) -> str:
        return (self.root / "proc/sys/kernel/random/boot_id").read_text().strip()

    def image_health_checks(self) -> list[dict[str, object]]:
        checks: list[dict[str, object]] = []
        for path in sorted((self.root / "etc/edgefleet/health.d").glob("*.json")):
            try:
                value = json.loads(path.read_bytes())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"health check file {path} is unreadable: {exc}") from exc
            checks.extend(value if isinstance(value, list) else [value])
        return checks

    def reboot(self, reason: str) -> None:
        """Raises ConfigError when systemd refuses the reboot."""
        try:
            subprocess.run(["systemctl", "reboot", f"--message=edgefleet: {reason}"],  # noqa: S603, S607
                           check=True, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            raise ConfigError(f"reboot failed: {exc}") from exc
