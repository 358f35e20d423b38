"""The parsers that take bytes from outside, as fuzz targets: what a device or a mirror
sends the server or the hub, and what the disk or the network hands the agent.

Each target takes bytes and may refuse them only with a typed error (``allowed``); any
other exception is a crash. ``bench/fuzz.py`` runs them under atheris; the crashes it
found are kept in ``tests/fuzz_corpus/<target>/`` and replayed by
``tests/test_fuzz_regressions.py`` with the same functions.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tuf.api.metadata import Metadata, Targets
from tuf.api.serialization import DeserializationError

from edgefleet.agent.hardware import grubenv, ubootenv
from edgefleet.attestation import eventlog, structures
from edgefleet.delta import bsdelta
from edgefleet.errors import EdgefleetError
from edgefleet.protocol.telemetry import parse_batch
from edgefleet.util.paths import check_target

CORPUS = Path(__file__).parent / "fuzz_corpus"


@dataclass(frozen=True)
class Target:
    run: Callable[[bytes], object]
    allowed: tuple[type[BaseException], ...]  # typed refusals: anything else is a crash
    seeds: Callable[[], list[bytes]]


def _tpm_structures(data: bytes) -> None:
    """The first byte picks the structure: TPMS_ATTEST, TPMT_SIGNATURE or TPMT_PUBLIC."""
    if not data:
        return
    parse = (structures.parse_attest, structures.parse_signature, structures.parse_public)[data[0] % 3]
    parse(data[1:])


def _tpm_seeds() -> list[bytes]:
    from edgefleet.agent.hardware.softtpm import InsecureSoftwareTpm

    with tempfile.TemporaryDirectory() as directory:
        tpm = InsecureSoftwareTpm(Path(directory))
        attest, signature, _ = tpm.quote(b"n" * 32, "sha256", [0, 4, 7])
        public = tpm.attestation_key()
    return [b"\0" + attest, b"\1" + signature, b"\2" + public]


def _event_log(data: bytes) -> None:
    eventlog.replay(eventlog.parse(data), "sha256")


def _event_log_seeds() -> list[bytes]:
    from tests.tpm_world import boot_events

    return [eventlog.encode(boot_events(b"vmlinuz 6.1 golden"))]


def _boot_env(data: bytes) -> None:
    """GRUB's environment block, or a U-Boot environment copy (plain or redundant)."""
    if not data:
        return
    if data[0] % 2 == 0:
        grubenv.decode(data[1:])
    else:
        ubootenv.decode(data[1:], redundant=data[0] % 4 == 3)


def _boot_env_seeds() -> list[bytes]:
    values = {"boot_order": "a b", "a_tries": "3", "upgrade_available": "1"}
    return [b"\0" + grubenv.encode(values), b"\1" + ubootenv.encode(values, 256),
            b"\3" + ubootenv.encode(values, 256, flags=1)]


_BASE = b"edgefleet base image " * 40


def _delta(data: bytes) -> None:
    """A delta container applied to a known base image."""
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        (root / "base").write_bytes(_BASE)
        (root / "delta").write_bytes(data)
        bsdelta.apply_delta(root / "delta", root / "base", root / "out")


def _delta_seeds() -> list[bytes]:
    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        (root / "base").write_bytes(_BASE)
        (root / "target").write_bytes(_BASE.replace(b"base", b"next") + b"and more")
        bsdelta.build_delta(root / "base", root / "target", root / "delta")
        return [(root / "delta").read_bytes()]


def _tuf_metadata(data: bytes) -> None:
    """TUF or director metadata as the agent and the server's mirror read it: parsed,
    then every target name checked as a path."""
    metadata = Metadata.from_bytes(data)
    if isinstance(metadata.signed, Targets):
        for path, target in metadata.signed.targets.items():
            check_target(path, str(target.hashes.get("sha256", "")))


def _tuf_seeds() -> list[bytes]:
    from datetime import UTC, datetime

    from tuf.api.metadata import TargetFile

    targets = Targets(expires=datetime(2030, 1, 1, tzinfo=UTC))
    targets.targets["os/2026.12.0.img"] = TargetFile(4096, {"sha256": "ab" * 32}, "os/2026.12.0.img",
                                                     {"director": {"counter": 3}})
    return [Metadata(targets).to_bytes()]


def _telemetry(data: bytes) -> None:
    """A telemetry batch as the control plane and the hub receive it, gzip or plain."""
    if not data:
        return
    parse_batch(data[1:], "gzip" if data[0] % 2 == 0 else "")


def _telemetry_seeds() -> list[bytes]:
    batch = {"batch_id": "dev-1:1-2", "dropped": 0, "site": "store-1", "first_seq": 1, "at_ms": 1_700_000_000_000,
             "records": [{"kind": "log", "dt_ms": 0, "body": {"level": "info", "message": "hello"}},
                         {"kind": "metric", "dt_ms": 5, "body": {"name": "m", "value": 1}}]}
    raw = json.dumps(batch).encode()
    return [b"\0" + gzip.compress(raw), b"\1" + raw]


TARGETS: dict[str, Target] = {
    "tpm_structures": Target(_tpm_structures, (EdgefleetError,), _tpm_seeds),
    "event_log": Target(_event_log, (EdgefleetError,), _event_log_seeds),
    "boot_env": Target(_boot_env, (EdgefleetError,), _boot_env_seeds),
    "delta": Target(_delta, (EdgefleetError,), _delta_seeds),
    "tuf_metadata": Target(_tuf_metadata, (EdgefleetError, DeserializationError), _tuf_seeds),
    "telemetry": Target(_telemetry, (EdgefleetError,), _telemetry_seeds),
}


def check(name: str, data: bytes) -> None:
    """Run one input; a refusal is fine, anything else propagates (a crash)."""
    target = TARGETS[name]
    with contextlib.suppress(*target.allowed):
        target.run(data)
