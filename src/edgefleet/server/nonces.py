"""Attestation nonces that the server need not store until they are spent.

A nonce is 12 random bytes, its expiry (seconds since the epoch, 4 bytes) and the first 16
bytes of an HMAC-SHA256 over the device id, the random bytes and the expiry, under a key
every server process of the fleet reads from ``<data-dir>/keys/nonce.key``. Issuing one is
arithmetic; only spending one writes (``attestation_nonces`` then holds it until it
expires, so that it is accepted once). A nonce the server never issued, issued to another
device, expired or altered fails the HMAC or the expiry; a replayed one finds its record.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.errors import ConfigError
from edgefleet.util.atomic import fsync_dir

SIZE = 32
_RANDOM, _EXPIRY, _MAC = 12, 4, 16
_DOMAIN = b"edgefleet attestation nonce\x00"


def ensure_secret_key(path: Path) -> bytes:
    """A 32-byte fleet key (the nonce key, the audit key), made (0600) if there is none yet. Several processes starting
    together agree: the first to link its key in place wins, the others read it."""
    try:
        return _read(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}")
    descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(descriptor, os.urandom(32))
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    try:
        os.link(staged, path)
        fsync_dir(path.parent)
    except FileExistsError:
        pass
    finally:
        staged.unlink()
    return _read(path)


def _read(path: Path) -> bytes:
    key = path.read_bytes()
    if len(key) != 32:
        raise ConfigError(f"nonce key {path} is {len(key)} bytes, not 32")
    return key


class NonceMint:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _mac(self, device_id: str, random: bytes, expiry: bytes) -> bytes:
        message = _DOMAIN + device_id.encode() + b"\x00" + random + expiry
        return hmac.new(self._key, message, hashlib.sha256).digest()[:_MAC]

    def issue(self, device_id: str, expires: datetime) -> bytes:
        random, expiry = os.urandom(_RANDOM), struct.pack(">I", int(expires.timestamp()))
        return random + expiry + self._mac(device_id, random, expiry)

    def expiry(self, device_id: str, nonce: bytes) -> datetime | None:
        """When ``nonce``, issued to ``device_id``, expires; None if this fleet did not issue
        it to that device (or it was altered)."""
        if len(nonce) != SIZE:
            return None
        random, expiry, mac = nonce[:_RANDOM], nonce[_RANDOM:_RANDOM + _EXPIRY], nonce[_RANDOM + _EXPIRY:]
        if not hmac.compare_digest(mac, self._mac(device_id, random, expiry)):
            return None
        return datetime.fromtimestamp(struct.unpack(">I", expiry)[0], UTC)
