"""The real platform: a Linux host's machine id, os-release and hostname."""

from __future__ import annotations

import re
import socket
from pathlib import Path

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
        fields = self._os_release()
        for key in ("IMAGE_VERSION", "VERSION_ID", "VERSION"):
            if key in fields:
                return fields[key][:128]
        return None

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

    def hostname(self) -> str:
        return socket.gethostname()
