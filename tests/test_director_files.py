"""The director's in-memory copy of each device's newest snapshot and targets: served by
version only, never replaced by an older version, bounded."""

from __future__ import annotations

from edgefleet.server.director import SignedFiles


def test_a_devices_snapshot_and_targets_are_served_by_their_version_only() -> None:
    files = SignedFiles()
    files.keep("dev-a", 3, b"snapshot-3", b"targets-3")
    assert files.get("dev-a", "3.snapshot.json") == b"snapshot-3"
    assert files.get("dev-a", "3.targets.json") == b"targets-3"
    assert files.get("dev-a", "2.targets.json") is None  # the database answers (404 for a superseded one)
    assert files.get("dev-a", "timestamp.json") is None
    assert files.get("dev-b", "3.targets.json") is None


def test_a_read_that_raced_a_newer_assignment_does_not_replace_it() -> None:
    files = SignedFiles()
    files.keep("dev-a", 4, b"snapshot-4", b"targets-4")
    files.keep("dev-a", 3, b"snapshot-3", b"targets-3")
    assert files.get("dev-a", "4.targets.json") == b"targets-4"
    assert files.get("dev-a", "3.targets.json") is None
    files.keep("dev-a", 5, b"snapshot-5", b"targets-5")
    assert files.get("dev-a", "5.snapshot.json") == b"snapshot-5"


def test_the_devices_stored_longest_ago_go_first_when_full() -> None:
    files = SignedFiles(limit=2)
    for device in ("dev-a", "dev-b", "dev-c"):
        files.keep(device, 1, b"s", b"t")
    assert files.get("dev-a", "1.targets.json") is None
    assert files.get("dev-b", "1.targets.json") == b"t"
    assert files.get("dev-c", "1.targets.json") == b"t"
