"""Workload tokens: JWT-SVIDs (ES256) for the workloads of attested devices.

One token per workload and audience: the subject is the workload's SPIFFE ID
``spiffe://<trust-domain>/site/<site>/device/<id>/workload/<name>``, ``aud`` is the one
service the workload asked to talk to, and the token carries the release the device
attested to. Services verify them with the keys at ``/.well-known/jwks.json`` (PyJWT's
``PyJWKClient`` or any JOSE library, with ``audience=`` set).

Key rotation with overlap: the keys live in ``<data>/keys`` as ``workload.key`` (the first,
active since ever) and ``workload-<unix>.key`` (active from that time). ``rotate`` writes a
key that starts signing one token lifetime from now, so verifiers that refresh the JWKS
within that time know it before they meet it; the key it replaces stays published for one
lifetime after that, while tokens it signed can still be valid. Every server process
sharing the data directory reads the directory again when it changes.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
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

FIRST_KEY = "workload.key"
_ROTATED = re.compile(r"^workload-(\d{1,12})\.key$")


def ensure_workload_key(path: Path) -> None:
    if not path.exists():
        _write_key(path)


def _write_key(path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    atomic_write_bytes(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()), mode=0o600)


def rotate_workload_key(key_dir: Path, now: datetime, ttl: timedelta) -> datetime:
    """Write the next workload key, active one token lifetime from ``now``; its start."""
    start = int((now + ttl).timestamp())
    _write_key(key_dir / f"workload-{start}.key")
    return datetime.fromtimestamp(start, now.tzinfo)


@dataclass(frozen=True)
class _Key:
    active_from: float  # unix seconds
    kid: str
    private: ec.EllipticCurvePrivateKey
    jwk: dict[str, Any]


def _load(path: Path, active_from: float) -> _Key:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"workload token key {path} unusable: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"workload token key {path} must be an EC P-256 key")
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    kid = str(jwk["x"])[:16]  # stable per key
    return _Key(active_from, kid, key, {**jwk, "kid": kid, "use": "sig", "alg": "ES256"})


class WorkloadIssuer:
    def __init__(self, key_dir: Path, trust_domain: str, ttl: timedelta) -> None:
        self.key_dir = key_dir
        self.trust_domain = trust_domain
        self.ttl = ttl
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None  # the directory's (mtime, size) when last read
        self._keys: list[_Key] = []
        self._reload()

    def _reload(self) -> None:
        """Read the keys again if the directory changed (a rotation by another process)."""
        try:
            info = self.key_dir.stat()
        except OSError as exc:
            raise ConfigError(f"workload token keys {self.key_dir} unreadable: {exc}") from exc
        seen = (info.st_mtime_ns, info.st_size)
        with self._lock:
            if seen == self._seen:
                return
            keys = [_load(self.key_dir / FIRST_KEY, 0.0)]
            for path in self.key_dir.iterdir():
                match = _ROTATED.match(path.name)
                if match:
                    keys.append(_load(path, float(match.group(1))))
            self._keys, self._seen = sorted(keys, key=lambda k: k.active_from), seen

    def _signing(self, at: float) -> _Key:
        return [k for k in self._keys if k.active_from <= at][-1]  # the first key is active from 0


    def issue(self, *, site: str, device_id: str, workload: str, audience: str, release: str | None,
              now: datetime) -> tuple[str, str, datetime]:
        """(the JWT-SVID, its SPIFFE ID, when it expires)."""
        self._reload()
        key = self._signing(now.timestamp())
        expires = now + self.ttl
        spiffe_id = f"spiffe://{self.trust_domain}/site/{site}/device/{device_id}/workload/{workload}"
        claims: dict[str, Any] = {
            "iss": f"spiffe://{self.trust_domain}", "sub": spiffe_id,
            "aud": [audience], "iat": int(now.timestamp()), "nbf": int(now.timestamp()),
            "exp": int(expires.timestamp()), "jti": secrets.token_hex(12), "release": release,
        }
        token = jwt.encode(claims, key.private, algorithm="ES256", headers={"kid": key.kid, "typ": "JWT"})
        return token, spiffe_id, expires

    def jwks(self, now: datetime) -> dict[str, list[dict[str, Any]]]:
        """The keys published at ``now``: the signing key, the next ones, and the one
        before while tokens it signed may still be valid."""
        self._reload()
        at, ttl = now.timestamp(), self.ttl.total_seconds()
        keys = self._keys
        successors = [k.active_from for k in keys[1:]] + [None]
        return {"keys": [key.jwk for key, successor in zip(keys, successors, strict=True)
                         if successor is None or successor + ttl > at]}
