"""Images for the emulated device. A real image carries its version in /etc/os-release and
its health checks in /etc/greenboot; an emulated one carries them in a one-line header:

    EDGEFLEET-VIMAGE {"version": "2026.12.0", "counter": 2, "boots": true, "health_checks": [...]}\\n

followed by filler up to ``size`` bytes (a slot may be larger: the firmware measures
``size`` bytes, as real firmware measures a kernel, not a partition). ``boots: false`` makes an image whose kernel
never reaches user space (the emulated firmware boots it; the agent never starts).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

MAGIC = b"EDGEFLEET-VIMAGE "
HEADER_MAX = 4096


def build(version: str, counter: int = 0, *, size: int = 1 << 20, boots: bool = True,
          health_checks: Sequence[Mapping[str, Any]] = (), filler: bytes = b"\0") -> bytes:
    header = MAGIC + json.dumps({"version": version, "counter": counter, "boots": boots, "size": size,
                                 "health_checks": list(health_checks)}, sort_keys=True).encode() + b"\n"
    if len(header) > HEADER_MAX or len(header) > size:
        raise ValueError("image header too large")
    body = (filler * (size // max(len(filler), 1) + 1))[: size - len(header)]
    return header + body


def parse_header(head: bytes) -> dict[str, Any] | None:
    if not head.startswith(MAGIC):
        return None
    line = head[len(MAGIC):].split(b"\n", 1)[0]
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def read_header(path: Path) -> dict[str, Any] | None:
    """The header of the image in ``path``, None when it is not an emulated image."""
    try:
        with open(path, "rb") as handle:
            return parse_header(handle.read(HEADER_MAX))
    except OSError:
        return None
