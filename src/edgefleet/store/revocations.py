"""Revoked device certificates. Each function runs inside the caller's transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.pki.crl import Revoked
from edgefleet.store.schema import Device, Revocation


async def revoke_current_certificate(conn: AsyncConnection, device_id: str, *, reason: str, by: str,
                                     now: datetime) -> str | None:
    """Revoke the certificate ``device_id`` holds now; its serial, or None when there is no
    such device. Revoking one already revoked changes nothing."""
    serial = (await conn.execute(select(Device.cert_serial).where(Device.id == device_id))).scalar()
    if serial is None:
        return None
    known = await conn.execute(select(Revocation.id).where(Revocation.serial == serial))
    if known.first() is None:
        await conn.execute(insert(Revocation).values(serial=serial, device_id=device_id, reason=reason[:256],
                                                     revoked_by=by[:128], revoked_at=now))
    return str(serial)


async def revocation_of(conn: AsyncConnection, serial: str) -> Revocation | None:
    """Why and when the certificate ``serial`` was revoked, if it was."""
    row = (await conn.execute(select(Revocation.__table__).where(Revocation.serial == serial))).first()
    return None if row is None else Revocation(**row._mapping)


async def revocation_number(conn: AsyncConnection) -> int:
    """The CRL number of the list as it stands: it grows with every revocation."""
    return int((await conn.execute(select(func.coalesce(func.max(Revocation.id), 0)))).scalar_one())


async def revocations(conn: AsyncConnection) -> tuple[int, list[Revoked]]:
    """Every revoked certificate, and the CRL number of that list."""
    rows = (await conn.execute(select(Revocation.id, Revocation.serial, Revocation.revoked_at)
                               .order_by(Revocation.id))).all()
    return (rows[-1].id if rows else 0), [Revoked(row.serial, row.revoked_at) for row in rows]
