"""Revoked device certificates. Each function runs inside the caller's transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.pki.crl import Revoked
from edgefleet.store.schema import Device, Revocation


async def revoke_current_certificate(conn: AsyncConnection, device_id: str, *, reason: str, by: str,
                                     now: datetime) -> str | None:
    """Revoke the certificates ``device_id`` holds now (a renewed one it has not presented
    yet too); the current serial, or None when there is no such device. Revoking one
    already revoked changes nothing."""
    row = (await conn.execute(select(Device.cert_serial, Device.cert_not_after, Device.next_cert_serial,
                                     Device.next_cert_not_after).where(Device.id == device_id))).first()
    if row is None:
        return None
    await revoke_serial(conn, row.cert_serial, row.cert_not_after, device_id, reason=reason, by=by, now=now)
    if row.next_cert_serial is not None and row.next_cert_not_after is not None:
        await revoke_serial(conn, row.next_cert_serial, row.next_cert_not_after, device_id, reason=reason, by=by,
                            now=now)
    return str(row.cert_serial)


async def revoke_serial(conn: AsyncConnection, serial: str, not_after: datetime, device_id: str, *, reason: str,
                        by: str, now: datetime) -> None:
    known = await conn.execute(select(Revocation.id).where(Revocation.serial == serial))
    if known.first() is None:
        await conn.execute(insert(Revocation).values(serial=serial, device_id=device_id, reason=reason[:256],
                                                     revoked_by=by[:128], revoked_at=now, not_after=not_after))


async def revocation_of(conn: AsyncConnection, serial: str) -> Revocation | None:
    """Why and when the certificate ``serial`` was revoked, if it was."""
    row = (await conn.execute(select(Revocation.__table__).where(Revocation.serial == serial))).first()
    return None if row is None else Revocation(**row._mapping)


async def revocation_number(conn: AsyncConnection) -> int:
    """The CRL number of the list as it stands: it grows with every revocation."""
    return int((await conn.execute(select(func.coalesce(func.max(Revocation.id), 0)))).scalar_one())


async def revocations(conn: AsyncConnection, now: datetime) -> tuple[int, list[Revoked]]:
    """Every revoked certificate not yet expired (an expired one no TLS peer accepts
    anyway), and the CRL number of the list."""
    number = await revocation_number(conn)
    rows = (await conn.execute(select(Revocation.serial, Revocation.revoked_at).where(Revocation.not_after > now)
                               .order_by(Revocation.id))).all()
    return number, [Revoked(row.serial, row.revoked_at) for row in rows]
