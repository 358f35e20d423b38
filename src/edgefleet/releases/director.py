"""The director (Uptane): per-device targets metadata, signed online, naming exactly what
that one device should install. The device installs a target only if the image repository,
signed offline, lists the same bytes with the same release fields.

All three roles (targets, snapshot, timestamp) are signed by the server's director key;
the director root, signed offline by the release owners, delegates them to it.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from securesystemslib.signer import Signer
from tuf.api.metadata import Metadata, TargetFile, Targets

from edgefleet.protocol.hashing import canonical
from edgefleet.releases.image import release_fields
from edgefleet.releases.instructions import PLAIN, Instructions
from edgefleet.releases.metadata import EXPIRY, WIRE, new_snapshot, new_timestamp, sign


@dataclass(frozen=True)
class DirectorFiles:
    version: int  # of targets and snapshot
    targets: bytes
    snapshot: bytes
    timestamp_version: int
    timestamp: bytes
    timestamp_expires: datetime


def bind(target: TargetFile, device_id: str, instructions: Instructions = PLAIN) -> TargetFile:
    """A target as the director lists it for ``device_id``: same length, hashes and release
    fields, plus the device it is meant for and, on the OS image, how to take it."""
    bound = copy.deepcopy(target)
    custom = dict(bound.custom) if isinstance(bound.custom, dict) else {}
    custom["director"] = {"device_id": device_id}
    if release_fields(target).get("kind") == "os-image":
        custom["director"].update(instructions.fields())
    bound.unrecognized_fields["custom"] = custom
    return bound


def config_target(config: Mapping[str, Any]) -> TargetFile:
    """The rendered configuration a device's desired state carries, as a director target:
    the device applies it only if its canonical bytes have this length and hash."""
    data = canonical(config)
    return TargetFile(len(data), {"sha256": hashlib.sha256(data).hexdigest()},
                      f"config/{hashlib.sha256(data).hexdigest()}.json",
                      {"custom": {"edgefleet": {"kind": "config", "commits": dict(config.get("commits") or {})}}})


def sign_assignment(device_id: str, targets: list[TargetFile], version: int, timestamp_version: int,
                    now: datetime, signer: Signer, instructions: Instructions = PLAIN) -> DirectorFiles:
    """Sign targets and snapshot ``version`` and a timestamp for one device."""
    md = Metadata(Targets(version=version, expires=(now + EXPIRY["targets"]).replace(microsecond=0)))
    for target in targets:
        md.signed.targets[target.path] = bind(target, device_id, instructions)
    sign(md, signer)
    targets_bytes = md.to_bytes(WIRE)
    snapshot = new_snapshot(version, now, version)
    sign(snapshot, signer)
    snapshot_bytes = snapshot.to_bytes(WIRE)
    return DirectorFiles(version, targets_bytes, snapshot_bytes,
                         *resign_timestamp(version, snapshot_bytes, timestamp_version, now, signer))


def resign_timestamp(snapshot_version: int, snapshot_bytes: bytes, timestamp_version: int, now: datetime,
                     signer: Signer) -> tuple[int, bytes, datetime]:
    timestamp = new_timestamp(snapshot_version, snapshot_bytes, now, timestamp_version)
    sign(timestamp, signer)
    return timestamp_version, timestamp.to_bytes(WIRE), timestamp.signed.expires
