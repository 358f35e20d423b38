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


def declared_workloads(config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The workloads a rendered configuration declares the agent runs (WebAssembly
    modules, microVMs and native services)."""
    workloads = config.get("workloads")
    if not isinstance(workloads, Mapping):
        return []
    return [entry for key in ("wasm", "microvm", "native") for entry in workloads.get(key) or []
            if isinstance(entry, Mapping)]


def workload_part(entry: Mapping[str, Any]) -> tuple[str, str]:
    """A declared workload as a drift part: ``workload.<name>`` and the hash of its entry.
    A device reports that hash only while it runs exactly that version, verified."""
    return f"workload.{entry.get('name')}", config_hash({"workload": entry})


def desired_parts(config: Mapping[str, Any]) -> dict[str, str]:
    """Every part drift detection compares: the OS configuration's and the workloads'."""
    os_config = config.get("os")
    return {**part_hashes(os_config if isinstance(os_config, Mapping) else {}),
            **dict(workload_part(entry) for entry in declared_workloads(config))}
