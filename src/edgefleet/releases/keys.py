"""Signing keys on disk: ``<name>.key`` (PKCS#8 PEM, passphrase-encrypted if one is given,
mode 0600) and ``<name>.pub`` (the TUF key as JSON). Offline keys (root, targets) live in a
directory the release owners keep away from the server; online keys (snapshot, timestamp,
director) live in the server's data directory."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, Key, SSlibKey

from edgefleet.errors import ConfigError
from edgefleet.util.atomic import atomic_write_bytes

_NAME = re.compile(r"^[a-z][a-z0-9-]{0,63}$")


def key_to_json(key: Key) -> dict[str, Any]:
    """A public key as edgefleet stores and exchanges it: TUF's key dict plus its keyid."""
    return {"keyid": key.keyid, **key.to_dict()}


def key_from_json(data: dict[str, Any]) -> Key:
    """Inverse of ``key_to_json``. Raises KeyError, TypeError or ValueError when malformed."""
    fields = dict(data)
    return Key.from_dict(fields.pop("keyid"), fields)


@dataclass(frozen=True)
class Keystore:
    directory: Path

    def _paths(self, name: str) -> tuple[Path, Path]:
        if not _NAME.match(name):
            raise ConfigError(f"invalid key name {name!r} (lower-case letters, digits, dashes)")
        return self.directory / f"{name}.key", self.directory / f"{name}.pub"

    def generate(self, name: str, passphrase: bytes | None = None) -> Key:
        """Create an Ed25519 key called ``name``; refuses to overwrite an existing one."""
        private_path, public_path = self._paths(name)
        if private_path.exists():
            raise ConfigError(f"key {name} already exists in {self.directory}")
        private = Ed25519PrivateKey.generate()
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
        )
        pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
        public = SSlibKey.from_crypto(private.public_key())
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        atomic_write_bytes(private_path, pem, mode=0o600)
        atomic_write_bytes(public_path, json.dumps(key_to_json(public), indent=2).encode())
        return public

    def public_key(self, name: str) -> Key:
        _, public_path = self._paths(name)
        try:
            return key_from_json(json.loads(public_path.read_bytes()))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"cannot read public key {name}: {exc}") from exc

    def signer(self, name: str, passphrase: bytes | None = None) -> CryptoSigner:
        """Raises ConfigError for a missing key or a wrong or missing passphrase."""
        private_path, _ = self._paths(name)
        try:
            pem = private_path.read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read private key {name}: {exc}") from exc
        try:
            private = serialization.load_pem_private_key(pem, password=passphrase)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"cannot unlock key {name}: wrong or missing passphrase") from exc
        public = self.public_key(name)
        if not isinstance(public, SSlibKey):
            raise ConfigError(f"key {name} is not a local key")
        return CryptoSigner(private, public)

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.pub"))
