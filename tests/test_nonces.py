"""Attestation nonces the server need not store until spent (HMAC over device, random
bytes and expiry; the fleet's key in a 0600 file that every process agrees on)."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edgefleet.errors import ConfigError
from edgefleet.server.nonces import SIZE, NonceMint, ensure_secret_key

EXPIRES = datetime(2026, 11, 27, 12, 10, tzinfo=UTC)


def test_a_nonce_names_its_expiry_only_for_the_device_it_was_issued_to(tmp_path: Path) -> None:
    mint = NonceMint(ensure_secret_key(tmp_path / "nonce.key"))
    nonce = mint.issue("dev-a", EXPIRES)
    assert len(nonce) == SIZE
    assert mint.expiry("dev-a", nonce) == EXPIRES
    assert mint.expiry("dev-b", nonce) is None
    assert mint.issue("dev-a", EXPIRES) != nonce  # random part


@pytest.mark.parametrize("position", [0, 12, 15, 16, 31])
def test_any_altered_byte_makes_a_nonce_unknown(tmp_path: Path, position: int) -> None:
    mint = NonceMint(ensure_secret_key(tmp_path / "nonce.key"))
    nonce = bytearray(mint.issue("dev-a", EXPIRES))
    nonce[position] ^= 0x01
    assert mint.expiry("dev-a", bytes(nonce)) is None


def test_nonces_of_another_fleet_key_or_of_the_wrong_size_are_unknown(tmp_path: Path) -> None:
    ours = NonceMint(ensure_secret_key(tmp_path / "ours.key"))
    theirs = NonceMint(ensure_secret_key(tmp_path / "theirs.key"))
    assert ours.expiry("dev-a", theirs.issue("dev-a", EXPIRES)) is None
    assert ours.expiry("dev-a", b"") is None
    assert ours.expiry("dev-a", ours.issue("dev-a", EXPIRES) + b"\x00") is None


def test_processes_starting_together_agree_on_one_private_key(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "nonce.key"
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: ensure_secret_key(path), range(16)))
    assert len(keys) == 1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in path.parent.iterdir()) == ["nonce.key"]  # no staged copies left
    expires = EXPIRES + timedelta(minutes=1)
    assert NonceMint(ensure_secret_key(path)).expiry("dev-a", NonceMint(keys.pop()).issue("dev-a", expires)) == expires


def test_a_truncated_key_file_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "nonce.key"
    path.write_bytes(os.urandom(16))
    with pytest.raises(ConfigError, match="16 bytes"):
        ensure_secret_key(path)
