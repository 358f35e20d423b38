"""Attestation queries. Each function runs inside the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.store.schema import AttestationIdentity, AttestationNonce, AttestationStatus


async def identity(conn: AsyncConnection, device_id: str) -> AttestationIdentity | None:
    row = (await conn.execute(select(AttestationIdentity.__table__)
                              .where(AttestationIdentity.device_id == device_id))).first()
    return None if row is None else AttestationIdentity(**row._mapping)


async def save_pending_identity(conn: AsyncConnection, device_id: str, ek: bytes, ak: bytes, digest: str,
                                now: datetime) -> None:
    await conn.execute(delete(AttestationIdentity).where(AttestationIdentity.device_id == device_id,
                                                         AttestationIdentity.state == "pending"))
    await conn.execute(insert(AttestationIdentity).values(
        device_id=device_id, ek_public=ek, ak_public=ak, credential_digest=digest, state="pending", created_at=now))


async def activate_identity(conn: AsyncConnection, device_id: str, digest: str, now: datetime) -> bool:
    result = await conn.execute(
        update(AttestationIdentity)
        .where(AttestationIdentity.device_id == device_id, AttestationIdentity.state == "pending",
               AttestationIdentity.credential_digest == digest)
        .values(state="active", activated_at=now)
        .returning(AttestationIdentity.device_id)
    )
    return result.first() is not None


async def insert_nonce(conn: AsyncConnection, nonce: str, device_id: str, expires_at: datetime) -> None:
    await conn.execute(insert(AttestationNonce).values(nonce=nonce, device_id=device_id, expires_at=expires_at))


async def claim_nonce(conn: AsyncConnection, nonce: str, device_id: str, now: datetime) -> bool:
    """Spend a nonce: only the device it was issued to, once, before it expires."""
    result = await conn.execute(
        update(AttestationNonce)
        .where(AttestationNonce.nonce == nonce, AttestationNonce.device_id == device_id,
               AttestationNonce.used_at.is_(None), AttestationNonce.expires_at > now)
        .values(used_at=now)
        .returning(AttestationNonce.nonce)
    )
    return result.first() is not None


async def status(conn: AsyncConnection, device_id: str) -> AttestationStatus | None:
    row = (await conn.execute(select(AttestationStatus.__table__)
                              .where(AttestationStatus.device_id == device_id))).first()
    return None if row is None else AttestationStatus(**row._mapping)


async def statuses(conn: AsyncConnection, device_ids: list[str]) -> dict[str, AttestationStatus]:
    rows = await conn.execute(select(AttestationStatus.__table__).where(AttestationStatus.device_id.in_(device_ids)))
    return {row.device_id: AttestationStatus(**row._mapping) for row in rows}


async def save_status(conn: AsyncConnection, device_id: str, **values: Any) -> None:
    updated = await conn.execute(update(AttestationStatus).where(AttestationStatus.device_id == device_id)
                                 .values(**values).returning(AttestationStatus.device_id))
    if updated.first() is None:
        await conn.execute(insert(AttestationStatus).values(device_id=device_id, **values))


async def prune_nonces(conn: AsyncConnection, before: datetime) -> None:
    await conn.execute(delete(AttestationNonce).where(AttestationNonce.expires_at < before))


async def identity_by_ek(conn: AsyncConnection, ek_public: bytes) -> AttestationIdentity | None:
    row = (await conn.execute(select(AttestationIdentity.__table__)
                              .where(AttestationIdentity.ek_public == ek_public,
                                     AttestationIdentity.state == "active"))).first()
    return None if row is None else AttestationIdentity(**row._mapping)


async def release_quarantine(conn: AsyncConnection, device_id: str) -> None:
    await conn.execute(update(AttestationStatus).where(AttestationStatus.device_id == device_id)
                       .values(quarantined=False, passed=False))
