"""The one hash of configuration that server and device both compute (canonical JSON)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any


def canonical(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def config_hash(document: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(document)).hexdigest()


def part_hashes(os_config: Mapping[str, Any]) -> dict[str, str]:
    """Per part (``ignition``, ``cloud_init``): what drift detection compares."""
    return {part: config_hash({part: value}) for part, value in os_config.items()}
