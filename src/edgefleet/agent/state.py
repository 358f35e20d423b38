"""What the agent remembers across restarts, written atomically after every change."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgefleet.errors import PersistError
from edgefleet.util.atomic import atomic_write_bytes, atomic_write_json, fsync_dir


@dataclass
class AgentState:
    device_id: str | None = None
    desired_version: int = -1  # -1: nothing received yet
    desired: dict[str, Any] = field(default_factory=dict)
    status_seq: int = 0
    update_state: str = "idle"  # "refused" when verification refused the assignment, else the job's phase
    update_error: str | None = None
    update_refused: str | None = None  # why the current assignment is not being installed
    update: dict[str, Any] = field(default_factory=dict)  # the A/B update job (update_flow.UpdateJob)
    failed_releases: dict[str, int] = field(default_factory=dict)  # release -> desired version it failed under


@dataclass(frozen=True)
class StateDir:
    path: Path

    @property
    def key(self) -> Path:
        return self.path / "device.key"

    @property
    def cert(self) -> Path:
        return self.path / "device.pem"

    @property
    def ca(self) -> Path:
        return self.path / "ca.pem"

    @property
    def next_key(self) -> Path:
        """The key of a certificate renewal under way."""
        return self.path / "device.key.next"

    @property
    def next_cert(self) -> Path:
        return self.path / "device.pem.next"

    @property
    def reenroll_key(self) -> Path:
        """The key a re-enrollment asks for: kept across restarts, it is what an operator
        approves."""
        return self.path / "device.key.reenroll"

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    def load(self) -> AgentState:
        """Raises PersistError when the state file exists but is unreadable or corrupt."""
        try:
            raw = json.loads(self.state_file.read_bytes())
            known = {f.name for f in fields(AgentState)}
            return AgentState(**{k: v for k, v in raw.items() if k in known})  # older agents kept other keys
        except FileNotFoundError:
            return AgentState()
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            raise PersistError(f"agent state {self.state_file} is unreadable: {exc}") from exc

    def save(self, state: AgentState) -> None:
        atomic_write_json(self.state_file, asdict(state), mode=0o600)

    def save_credentials(self, cert_pem: bytes, ca_pem: bytes) -> None:
        atomic_write_bytes(self.ca, ca_pem)
        atomic_write_bytes(self.cert, cert_pem)

    def save_key(self, key_pem: bytes) -> None:
        atomic_write_bytes(self.key, key_pem, mode=0o600)

    def save_next_key(self, key_pem: bytes) -> None:
        atomic_write_bytes(self.next_key, key_pem, mode=0o600)

    def commit_renewal(self, cert_pem: bytes) -> None:
        """Make the renewed certificate (and its key, saved before) the device's own."""
        atomic_write_bytes(self.next_cert, cert_pem)
        self.recover_renewal()

    def erase_credentials(self) -> None:
        """Forget this device's identity: its keys, certificates and state (the device was
        decommissioned; it can only enroll again, as a new device, with a new bootstrap
        token). Each file is overwritten before it is removed."""
        for path in (self.key, self.next_key, self.reenroll_key, self.cert, self.next_cert, self.state_file):
            try:
                size = path.stat().st_size
                with path.open("r+b") as handle:
                    handle.write(b"\0" * size)
                    handle.flush()
                    os.fsync(handle.fileno())
                path.unlink()
            except FileNotFoundError:
                continue
        fsync_dir(self.path)

    def recover_renewal(self) -> bool:
        """Finish a renewal a stop interrupted once its certificate was saved (True), or drop
        one that got none (the server keeps accepting the old certificate until the new one
        is presented, so nothing is lost). Each step is a rename: a stop between any two
        leaves a state this finishes."""
        if self.next_cert.exists():
            if self.next_key.exists():
                os.replace(self.next_key, self.key)
            os.replace(self.next_cert, self.cert)
            fsync_dir(self.path)
            return True
        self.next_key.unlink(missing_ok=True)
        return False
