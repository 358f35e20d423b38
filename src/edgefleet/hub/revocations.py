"""The hub's copy of the fleet's revocation list: the newest CRL the fleet CA signed that
the hub has seen, verified and kept on disk, so a revoked device stays refused across a
restart with the uplink down. A list older than the one kept (a replay) or not signed by
the fleet CA changes nothing."""

from __future__ import annotations

import logging
from pathlib import Path

from edgefleet.errors import InvalidRequest
from edgefleet.pki.crl import RevocationList, verify_crl
from edgefleet.util.atomic import atomic_write_bytes

log = logging.getLogger("edgefleet.hub")


class RevocationKeeper:
    def __init__(self, path: Path, ca_file: Path) -> None:
        self.path, self._ca_file = path, ca_file
        self.current: RevocationList | None = None
        if path.exists():
            try:
                self.current = verify_crl(ca_file.read_bytes(), path.read_bytes())
            except InvalidRequest as exc:  # kept by us, atomically: only tampering gets here
                log.error("the stored revocation list %s is unusable, waiting for the next sync: %s", path, exc)

    @property
    def number(self) -> int | None:
        return None if self.current is None else self.current.number

    def accept(self, der: bytes) -> bool:
        """Keep ``der`` if it is newer than the list held; True when it was.

        Raises:
            InvalidRequest: not a CRL the fleet CA signed (``bad_crl``), or older than the
                list held (``crl_rollback``).
        """
        fresh = verify_crl(self._ca_file.read_bytes(), der)
        held = self.current
        if held is not None and fresh.number < held.number:
            raise InvalidRequest(f"revocation list {fresh.number} is older than list {held.number} the hub holds",
                                 code="crl_rollback")
        if held is not None and fresh.number == held.number:
            return False
        atomic_write_bytes(self.path, der)
        self.current = fresh
        log.info("revocation list %d: %d certificates revoked", fresh.number, len(fresh.serials))
        return True

    def is_revoked(self, serial: str) -> bool:
        return self.current is not None and serial in self.current.serials
