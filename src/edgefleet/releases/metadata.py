"""TUF metadata for the image repository, built and checked without I/O.

Roles and who signs them (TUF spec section 2.1, Uptane's image repository):
root and targets offline, by the release owners, with thresholds; snapshot and timestamp
online, by the control plane, which can therefore re-sign them before they expire but can
never add or change a release.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from securesystemslib.signer import Key, Signer
from tuf.api.metadata import Metadata, MetaFile, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

from edgefleet.errors import InvalidRequest

ROLES = ("root", "targets", "snapshot", "timestamp")
OFFLINE_ROLES = ("root", "targets")
ONLINE_ROLES = ("snapshot", "timestamp")

EXPIRY = {
    "root": timedelta(days=365),
    "targets": timedelta(days=90),
    "snapshot": timedelta(days=7),
    "timestamp": timedelta(days=1),
}

# Compact JSON on the wire: an idle poll fetches only timestamp.json.
WIRE = JSONSerializer(compact=True)


@dataclass(frozen=True)
class RolePolicy:
    keys: tuple[Key, ...]
    threshold: int

    def __post_init__(self) -> None:
        if not 1 <= self.threshold <= len(self.keys):
            raise InvalidRequest(
                f"threshold {self.threshold} needs between 1 and {len(self.keys)} keys", code="invalid_threshold"
            )


def _expires(role: str, now: datetime) -> datetime:
    return (now + EXPIRY[role]).replace(microsecond=0)


def new_root(policies: Mapping[str, RolePolicy], now: datetime, version: int = 1) -> Metadata[Root]:
    """Root with consistent snapshots, one policy (keys, threshold) per top-level role."""
    if set(policies) != set(ROLES):
        raise InvalidRequest(f"root needs a policy for each of {', '.join(ROLES)}", code="invalid_root")
    root = Root(version=version, expires=_expires("root", now), consistent_snapshot=True)
    for role, policy in policies.items():
        for key in policy.keys:
            root.add_key(key, role)
        root.roles[role].threshold = policy.threshold
    return Metadata(root)


def next_root(current: Root, changes: Mapping[str, RolePolicy], now: datetime) -> Metadata[Root]:
    """Root version N+1: the same policies except ``changes``. It must then be signed by a
    threshold of the *old* root keys and of the *new* ones (TUF client workflow 5.3.4)."""
    root = copy.deepcopy(current)
    root.version += 1
    root.expires = _expires("root", now)
    for role, policy in changes.items():
        for keyid in list(root.roles[role].keyids):
            root.revoke_key(keyid, role)
        for key in policy.keys:
            root.add_key(key, role)
        root.roles[role].threshold = policy.threshold
    return Metadata(root)


def sign(metadata: Metadata[Root] | Metadata[Targets] | Metadata[Snapshot] | Metadata[Timestamp],
         signer: Signer) -> None:
    """Add (or replace) ``signer``'s signature; the other signatures stay."""
    metadata.sign(signer, append=True)


def signing_status(root: Root, role: str, metadata: Metadata[Root] | Metadata[Targets]) -> tuple[int, int]:
    """(valid signatures from ``role``'s keys, threshold)."""
    result = root.get_verification_result(role, metadata.signed_bytes, metadata.signatures)
    return len(result.signed), root.roles[role].threshold


def require_threshold(root: Root, role: str, metadata: Metadata[Root] | Metadata[Targets]) -> None:
    """Raises InvalidRequest when ``metadata`` lacks a threshold of ``role``'s signatures."""
    signed, threshold = signing_status(root, role, metadata)
    if signed < threshold:
        raise InvalidRequest(f"{role} has {signed} of {threshold} required signatures", code="below_threshold")


def require_root_rotation(previous: Root, new: Metadata[Root]) -> None:
    """Raises InvalidRequest unless ``new`` is signed by thresholds of old and new keys."""
    if new.signed.version != previous.version + 1:
        raise InvalidRequest(
            f"root version {new.signed.version} does not follow {previous.version}", code="invalid_root"
        )
    result = new.signed.get_root_verification_result(previous, new.signed_bytes, new.signatures)
    if not result.verified:
        raise InvalidRequest("new root lacks a threshold of old or new root signatures", code="below_threshold")


def new_targets(now: datetime, version: int = 1) -> Metadata[Targets]:
    return Metadata(Targets(version=version, expires=_expires("targets", now)))


def with_target(current: Targets, target: TargetFile, now: datetime) -> Metadata[Targets]:
    """Targets version N+1 that adds (or replaces) ``target``; signatures start empty."""
    targets = copy.deepcopy(current)
    targets.version += 1
    targets.expires = _expires("targets", now)
    targets.targets[target.path] = target
    return Metadata(targets)


def _metafile(version: int, data: bytes) -> MetaFile:
    return MetaFile(version=version, length=len(data), hashes={"sha256": hashlib.sha256(data).hexdigest()})


def new_snapshot(targets_version: int, now: datetime, version: int) -> Metadata[Snapshot]:
    return Metadata(Snapshot(version=version, expires=_expires("snapshot", now),
                             meta={"targets.json": MetaFile(version=targets_version)}))


def new_timestamp(snapshot_version: int, snapshot_bytes: bytes, now: datetime, version: int) -> Metadata[Timestamp]:
    # Length and hash of snapshot bound what a client downloads next (endless data attack).
    return Metadata(Timestamp(version=version, expires=_expires("timestamp", now),
                              snapshot_meta=_metafile(snapshot_version, snapshot_bytes)))
