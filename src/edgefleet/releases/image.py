"""An OS image or artifact as a TUF target: streamed once for its length and hashes, plus
the custom fields edgefleet's devices check (Uptane-style)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf.api.metadata import TargetFile

from edgefleet.errors import InvalidRequest

CHUNK = 1 << 20
HASHES = ("sha256", "sha512")


@dataclass(frozen=True)
class ReleaseInfo:
    """The custom fields of an OS image target."""

    version: str
    counter: int  # never decreases across releases; devices refuse a lower one
    hardware_ids: tuple[str, ...]
    measurements: dict[str, str]  # PCR index -> expected sha256 value after booting it
    # The image's predicted reference values (edgefleet-reference-values/1), event by event.
    reference_values: dict[str, Any] | None = None

    def custom(self) -> dict[str, Any]:
        if self.counter < 0:
            raise InvalidRequest("release counter must not be negative", code="invalid_release")
        if not self.hardware_ids:
            raise InvalidRequest("a release must name the hardware ids it fits", code="invalid_release")
        fields: dict[str, Any] = {
            "kind": "os-image",
            "version": self.version,
            "release_counter": self.counter,
            "hardware_ids": list(self.hardware_ids),
            "measurements": dict(sorted(self.measurements.items())),
        }
        if self.reference_values is not None:
            fields["reference_values"] = self.reference_values
        return {"edgefleet": fields}


def release_fields(target: TargetFile) -> dict[str, Any]:
    """edgefleet's custom fields of a target (empty when it has none)."""
    custom = target.custom if isinstance(target.custom, dict) else {}
    fields = custom.get("edgefleet", {})
    return fields if isinstance(fields, dict) else {}


def describe(path: Path, target_path: str, custom: dict[str, Any] | None = None) -> TargetFile:
    """Stream ``path`` once (constant memory) into a TargetFile named ``target_path``."""
    digests = [hashlib.new(name) for name in HASHES]
    length = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            length += len(chunk)
            for digest in digests:
                digest.update(chunk)
    fields = {"custom": custom} if custom else None
    return TargetFile(length, {n: d.hexdigest() for n, d in zip(HASHES, digests, strict=True)}, target_path, fields)
