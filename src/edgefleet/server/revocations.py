"""The fleet's revocation list as the CA signs it: re-signed only when a revocation was
added or half its validity has passed, so serving it to every hub on every sync costs one
small read."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime

from edgefleet.clock import Clock
from edgefleet.pki import IssuedCertificate
from edgefleet.pki.crl import CRL_VALID_FOR, sign_crl
from edgefleet.store import Database
from edgefleet.store.revocations import revocation_number, revocations


@dataclass
class RevocationPublisher:
    db: Database
    ca: IssuedCertificate
    clock: Clock
    _signed: tuple[int, datetime, bytes] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def der(self) -> bytes:
        """The newest CRL, DER-encoded."""
        async with self.db.transaction() as conn:
            number = await revocation_number(conn)
        now = self.clock.now()
        signed = self._signed
        if signed is not None and signed[0] == number and now - signed[1] < CRL_VALID_FOR / 2:
            return signed[2]
        async with self._lock:
            async with self.db.transaction() as conn:
                number, entries = await revocations(conn, now)
            der = await asyncio.to_thread(sign_crl, self.ca, number, entries, now)
            self._signed = (number, now, der)
            return der
