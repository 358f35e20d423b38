"""The OS configuration the fleet repository renders for this device, put where the OS
consumes it, and read back for drift detection.

    <dir>/ignition.json        the Ignition config for the next first boot of a newly
                               installed slot (the initramfs's Ignition reads it from here)
    <dir>/nocloud/user-data    a cloud-init NoCloud seed (with meta-data), as
    <dir>/nocloud/meta-data    /var/lib/cloud/seed/nocloud/ on a real device

``<dir>`` is the platform's (``/var/lib/edgefleet/os-config`` on a host, ``config/`` in a
vdevice) unless the agent's ``os_config_dir`` says otherwise.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgefleet.protocol.hashing import config_hash, part_hashes
from edgefleet.util.atomic import atomic_write_bytes


def apply(directory: Path, os_config: Mapping[str, Any], instance: str) -> None:
    """Write (or remove) each part. Raises PersistError when the disk refuses."""
    ignition = directory / "ignition.json"
    if "ignition" in os_config:
        atomic_write_bytes(ignition, json.dumps(os_config["ignition"], indent=2, sort_keys=True).encode())
    else:
        ignition.unlink(missing_ok=True)
    seed = directory / "nocloud"
    if "cloud_init" in os_config:
        atomic_write_bytes(seed / "meta-data", f"instance-id: {instance}\n".encode())
        atomic_write_bytes(seed / "user-data", str(os_config["cloud_init"]).encode())
    else:
        (seed / "user-data").unlink(missing_ok=True)
        (seed / "meta-data").unlink(missing_ok=True)


def observe(directory: Path) -> dict[str, str]:
    """Hashes of what is on disk now, comparable with ``part_hashes`` of the desired parts.
    A file that no longer parses hashes its raw bytes: it differs, as it should."""
    parts: dict[str, str] = {}
    try:
        raw = (directory / "ignition.json").read_bytes()
    except FileNotFoundError:
        pass
    else:
        try:
            parts["ignition"] = config_hash({"ignition": json.loads(raw)})
        except ValueError:
            parts["ignition"] = config_hash({"ignition": raw.decode(errors="replace")})
    seed = directory / "nocloud" / "user-data"
    with contextlib.suppress(FileNotFoundError):
        parts["cloud_init"] = config_hash({"cloud_init": seed.read_text()})
    return parts


def in_sync(directory: Path, os_config: Mapping[str, Any]) -> bool:
    return observe(directory) == part_hashes(os_config)
