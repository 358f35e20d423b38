"""The real platform: a Linux host's machine id, os-release and hostname."""

from __future__ import annotations

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

    def os_version(self) -> str | None:
        try:
            lines = (self.root / "etc/os-release").read_text().splitlines()
        except OSError:
            return None
        fields = dict(line.split("=", 1) for line in lines if "=" in line)
        for key in ("IMAGE_VERSION", "VERSION_ID", "VERSION"):
            if key in fields:
                return fields[key].strip().strip('"')[:128]
        return None

    def hostname(self) -> str:
        return socket.gethostname()
