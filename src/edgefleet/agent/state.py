"""What the agent remembers across restarts, written atomically after every change."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgefleet.errors import PersistError
from edgefleet.util.atomic import atomic_write_bytes, atomic_write_json


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
