"""What every kind of workload shares: its artifacts verified against their signed
targets, the result of a run, and the interface the supervisor drives."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import TargetFile

from edgefleet.errors import PeerError
from edgefleet.protocol.workloads import Reason, failed_run
from edgefleet.util.atomic import atomic_write_bytes

Artifact = tuple[bytes, TargetFile]  # the bytes, and the signed target they must match


class WorkloadRefused(PeerError):
    """A workload's artifact does not verify, or cannot run here."""

    code = "workload_refused"


@dataclass(frozen=True)
class RunResult:
    reason: Reason
    exit_code: int | None = None
    detail: str | None = None
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return failed_run(self.reason, self.exit_code)


class Runnable(Protocol):
    """One verified version of a workload, ready to run."""

    sha256: str

    def run(self, data_dir: Path, log_dir: Path) -> RunResult:
        """One run, to its end (blocking). Output goes to ``<log_dir>/<name>.stdout|.stderr``."""
        ...

    def stop(self) -> None:
        """End the current run (from any thread); later runs end at once."""
        ...


def verify(data: bytes, target: TargetFile) -> str:
    """Raises WorkloadRefused unless ``data`` has the target's length and every one of its
    hashes; returns its sha256."""
    try:
        target.verify_length_and_hashes(data)
    except tuf_errors.LengthOrHashMismatchError as exc:
        raise WorkloadRefused(f"artifact {target.path} does not match its signed target: {exc}",
                              code="artifact_mismatch") from exc
    return hashlib.sha256(data).hexdigest()


def version_of(sha256s: Sequence[str]) -> str:
    """A workload version's digest: its one artifact's sha256, or the sha256 of its
    artifacts' sha256s in order."""
    return sha256s[0] if len(sha256s) == 1 else hashlib.sha256("\n".join(sha256s).encode()).hexdigest()


def keep(cache_dir: Path, sha256: str, data: bytes, mode: int = 0o444) -> Path:
    """Verified bytes, kept read-only and content-addressed for a program to use by path."""
    path = cache_dir / sha256
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        path.chmod(mode)
    return path
