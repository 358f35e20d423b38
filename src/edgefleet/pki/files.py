"""The fleet PKI on disk under ``<data-dir>/pki`` (keys 0600, written atomically)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from edgefleet.errors import ConfigError
from edgefleet.pki.certs import IssuedCertificate, create_ca, issue_server_certificate
from edgefleet.util.atomic import atomic_write_bytes


@dataclass(frozen=True)
class FleetPki:
    directory: Path

    @property
    def ca_cert(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    def exists(self) -> bool:
        return all(p.exists() for p in (self.ca_cert, self.ca_key, self.server_cert, self.server_key))

    def init(self, fleet_name: str, server_names: list[str], now: datetime) -> bool:
        """Create the CA (if missing) and a server certificate; returns False if all existed."""
        if self.exists():
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        if self.ca_cert.exists() and self.ca_key.exists():
            ca = self.load_ca()
        else:
            ca = create_ca(f"{fleet_name} fleet CA", now)
            atomic_write_bytes(self.ca_key, ca.key_pem, mode=0o600)
            atomic_write_bytes(self.ca_cert, ca.cert_pem)
        server = issue_server_certificate(ca, server_names, now)
        atomic_write_bytes(self.server_key, server.key_pem, mode=0o600)
        atomic_write_bytes(self.server_cert, server.cert_pem)
        return True

    def load_ca(self) -> IssuedCertificate:
        """Raises ConfigError when the CA files are missing (run ``edgefleet server init``)."""
        try:
            return IssuedCertificate(self.ca_key.read_bytes(), self.ca_cert.read_bytes())
        except FileNotFoundError as exc:
            raise ConfigError(
                f"no fleet CA in {self.directory}; run `edgefleet server init` first"
            ) from exc
