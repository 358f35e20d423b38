"""Requests waiting for an operator's decision (a TPM to trust, an expired device to
re-enroll). Each function runs inside the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.store.schema import Approval


async def approval(conn: AsyncConnection, fingerprint: str) -> Approval | None:
    row = (await conn.execute(select(Approval.__table__).where(Approval.fingerprint == fingerprint))).first()
    return None if row is None else Approval(**row._mapping)


async def request_approval(conn: AsyncConnection, kind: str, fingerprint: str, device_id: str, *, reason: str,
                           facts: dict[str, Any], now: datetime) -> None:
    """A pending request for ``device_id``, replacing any decision about that fingerprint
    for another device (a TPM that comes back under a new enrollment is decided afresh)."""
    await conn.execute(delete(Approval).where(Approval.fingerprint == fingerprint))
    await conn.execute(insert(Approval).values(fingerprint=fingerprint, kind=kind, device_id=device_id,
                                               state="pending", reason=reason[:256], facts=facts, requested_at=now))


async def mark_used(conn: AsyncConnection, fingerprint: str) -> bool:
    """An approved one-time request was acted on (a re-enrollment's certificate issued)."""
    result = await conn.execute(update(Approval).where(Approval.fingerprint == fingerprint,
                                                       Approval.state == "approved").values(state="used"))
    return result.rowcount == 1


async def approvals(conn: AsyncConnection, state: str | None, limit: int) -> list[Approval]:
    query = select(Approval.__table__).order_by(Approval.requested_at.desc()).limit(limit)
    if state is not None:
        query = query.where(Approval.state == state)
    return [Approval(**row._mapping) for row in await conn.execute(query)]


async def decide(conn: AsyncConnection, device_id: str, fingerprint: str | None, *, approve: bool, by: str,
                 now: datetime) -> Approval | None:
    """Decide the device's pending request (the one for ``fingerprint`` when given); the
    decided row, or None when no such request is pending."""
    query = (select(Approval.fingerprint).where(Approval.device_id == device_id, Approval.state == "pending")
             .order_by(Approval.requested_at.desc()))
    if fingerprint is not None:
        query = query.where(Approval.fingerprint == fingerprint)
    found = (await conn.execute(query)).first()
    if found is None:
        return None
    await conn.execute(update(Approval).where(Approval.fingerprint == found.fingerprint, Approval.state ==
                                                "pending")
                       .values(state="approved" if approve else "rejected", decided_by=by[:128], decided_at=now))
    return await approval(conn, found.fingerprint)
