"""What the control plane signs with its online keys: a new snapshot over the current
targets, and a timestamp over that snapshot. It can only vouch for freshness; it cannot
change what the release owners signed."""

from __future__ import annotations

from datetime import datetime

from securesystemslib.signer import Signer

from edgefleet.releases.metadata import new_snapshot, new_timestamp, require_threshold, sign
from edgefleet.releases.repository import RepositoryDir


def publish_online(repo: RepositoryDir, snapshot_signer: Signer, timestamp_signer: Signer, now: datetime) -> int:
    """Sign and write snapshot N+1 and timestamp M+1 for the current targets; returns N+1.

    Raises:
        InvalidRequest: the current targets lack a threshold of targets signatures, so
            the server refuses to vouch for them.
    """
    root = repo.root().signed
    targets = repo.targets()
    require_threshold(root, "targets", targets)
    previous_snapshot = repo.snapshot()
    previous_timestamp = repo.timestamp()
    snapshot = new_snapshot(targets.signed.version, now,
                            version=1 if previous_snapshot is None else previous_snapshot.signed.version + 1)
    sign(snapshot, snapshot_signer)
    snapshot_bytes = repo.write_snapshot(snapshot)
    timestamp = new_timestamp(snapshot.signed.version, snapshot_bytes, now,
                              version=1 if previous_timestamp is None else previous_timestamp.signed.version + 1)
    sign(timestamp, timestamp_signer)
    repo.write_timestamp(timestamp)
    return snapshot.signed.version
