"""Endorsement keys waiting for an operator's decision. Each function runs inside the
caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.store.schema import EkApproval


async def approval(conn: AsyncConnection, fingerprint: str) -> EkApproval | None:
    row = (await conn.execute(select(EkApproval.__table__).where(EkApproval.fingerprint == fingerprint))).first()
    return None if row is None else EkApproval(**row._mapping)


async def request_approval(conn: AsyncConnection, fingerprint: str, device_id: str, *, reason: str,
                           facts: dict[str, Any], now: datetime) -> None:
    """A pending request for ``device_id``'s EK, replacing any decision about that EK for
    another device (a TPM that comes back under a new enrollment is decided afresh)."""
    await conn.execute(delete(EkApproval).where(EkApproval.fingerprint == fingerprint))
    await conn.execute(insert(EkApproval).values(fingerprint=fingerprint, device_id=device_id, state="pending",
                                                 reason=reason[:256], facts=facts, requested_at=now))


async def approvals(conn: AsyncConnection, state: str | None, limit: int) -> list[EkApproval]:
    query = select(EkApproval.__table__).order_by(EkApproval.requested_at.desc()).limit(limit)
    if state is not None:
        query = query.where(EkApproval.state == state)
    return [EkApproval(**row._mapping) for row in await conn.execute(query)]


async def decide(conn: AsyncConnection, device_id: str, fingerprint: str | None, *, approve: bool, by: str,
                 now: datetime) -> EkApproval | None:
    """Decide the device's pending request (the one for ``fingerprint`` when given); the
    decided row, or None when no such request is pending."""
    query = (select(EkApproval.fingerprint).where(EkApproval.device_id == device_id, EkApproval.state == "pending")
             .order_by(EkApproval.requested_at.desc()))
    if fingerprint is not None:
        query = query.where(EkApproval.fingerprint == fingerprint)
    found = (await conn.execute(query)).first()
    if found is None:
        return None
    await conn.execute(update(EkApproval).where(EkApproval.fingerprint == found.fingerprint, EkApproval.state ==
                                                "pending")
                       .values(state="approved" if approve else "rejected", decided_by=by[:128], decided_at=now))
    return await approval(conn, found.fingerprint)
