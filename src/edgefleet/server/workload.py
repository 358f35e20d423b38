"""Workload tokens: short-lived JWTs (ES256) for attested devices, with a SPIFFE-style
subject ``spiffe://<trust-domain>/device/<id>`` and the release the device attested to.
Services verify them with the keys at ``/.well-known/jwks.json``."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from edgefleet.errors import ConfigError
from edgefleet.util.atomic import atomic_write_bytes


def ensure_workload_key(path: Path) -> None:
    if path.exists():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    atomic_write_bytes(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()), mode=0o600)


@dataclass
class WorkloadIssuer:
    key_path: Path
    trust_domain: str
    ttl: timedelta

    def __post_init__(self) -> None:
        try:
            key = serialization.load_pem_private_key(self.key_path.read_bytes(), password=None)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"workload token key {self.key_path} unusable: {exc}") from exc
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError("the workload token key must be an EC P-256 key")
        self._key = key
        jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
        self.kid = str(jwk["x"])[:16]  # stable per key
        self._jwk = {**jwk, "kid": self.kid, "use": "sig", "alg": "ES256"}

    def issue(self, device_id: str, release: str | None, now: datetime) -> tuple[str, datetime]:
        expires = now + self.ttl
        claims: dict[str, Any] = {
            "iss": f"spiffe://{self.trust_domain}", "sub": f"spiffe://{self.trust_domain}/device/{device_id}",
            "iat": int(now.timestamp()), "nbf": int(now.timestamp()), "exp": int(expires.timestamp()),
            "jti": secrets.token_hex(12), "release": release,
        }
        return jwt.encode(claims, self._key, algorithm="ES256", headers={"kid": self.kid}), expires

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        return {"keys": [self._jwk]}
