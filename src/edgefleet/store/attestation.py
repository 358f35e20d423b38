"""Attestation queries. Each function runs inside the caller's transaction."""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.store.schema import AttestationIdentity, AttestationNonce, AttestationStatus, Device

# Statements run per device (TPM enrollment, each quote, the verdict an admin reads) are
# built once: SQLAlchemy then computes each one's cache key once, not on every execution.
_IDENTITY = select(AttestationIdentity.__table__).where(AttestationIdentity.device_id == bindparam("b_id"))
_SPEND: dict[str, Any] = {"nonce": bindparam("b_nonce"), "device_id": bindparam("b_id"),
                          "expires_at": bindparam("b_expires"), "used_at": bindparam("b_now")}
_SPEND_SQLITE = (sqlite.insert(AttestationNonce).values(_SPEND).on_conflict_do_nothing(index_elements=["nonce"])
                 .returning(AttestationNonce.nonce))
_SPEND_POSTGRESQL = (postgresql.insert(AttestationNonce).values(_SPEND)
                     .on_conflict_do_nothing(index_elements=["nonce"]).returning(AttestationNonce.nonce))
_STATUS = select(AttestationStatus.__table__).where(AttestationStatus.device_id == bindparam("b_id"))


async def identity(conn: AsyncConnection, device_id: str) -> AttestationIdentity | None:
    row = (await conn.execute(_IDENTITY, {"b_id": device_id})).first()
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


def spend_nonce(conn: Connection, nonce: str, device_id: str, expires_at: datetime, now: datetime) -> bool:
    """Record a nonce as spent; False if it was spent before (kept until it expires)."""
    stmt = _SPEND_POSTGRESQL if conn.dialect.name == "postgresql" else _SPEND_SQLITE
    result = conn.execute(stmt, {"b_nonce": nonce, "b_id": device_id, "b_expires": expires_at, "b_now": now})
    return result.first() is not None


class QuoteContext(NamedTuple):
    """What judging a device's quote needs, read in one query: its TPM identity, its last
    verdict's TPM clock and quarantine (if any), and what it says it runs."""

    identity_state: str | None
    ak_public: bytes | None
    judged: bool  # a verdict exists
    clock: int | None
    reset_count: int | None
    restart_count: int | None
    quarantined: bool | None
    running_version: str | None
    inventory: dict[str, Any]


_QUOTE_CONTEXT = (
    select(AttestationIdentity.state, AttestationIdentity.ak_public, AttestationStatus.device_id.is_not(None),
           AttestationStatus.clock, AttestationStatus.reset_count, AttestationStatus.restart_count,
           AttestationStatus.quarantined, Device.running_version, Device.inventory)
    .select_from(Device)
    .outerjoin(AttestationIdentity, AttestationIdentity.device_id == Device.id)
    .outerjoin(AttestationStatus, AttestationStatus.device_id == Device.id)
    .where(Device.id == bindparam("b_id"))
)


def quote_context(conn: Connection, device_id: str) -> QuoteContext | None:
    """None when there is no such device."""
    row = conn.execute(_QUOTE_CONTEXT, {"b_id": device_id}).first()
    return None if row is None else QuoteContext(*row)


async def status(conn: AsyncConnection, device_id: str) -> AttestationStatus | None:
    row = (await conn.execute(_STATUS, {"b_id": device_id})).first()
    return None if row is None else AttestationStatus(**row._mapping)


async def statuses(conn: AsyncConnection, device_ids: list[str]) -> dict[str, AttestationStatus]:
    rows = await conn.execute(select(AttestationStatus.__table__).where(AttestationStatus.device_id.in_(device_ids)))
    return {row.device_id: AttestationStatus(**row._mapping) for row in rows}


_VERDICT = ("passed", "attested_at", "failures", "release", "reset_count", "restart_count", "clock", "quarantined")
_SAVE_STATUS = (
    update(AttestationStatus)
    .where(AttestationStatus.device_id == bindparam("b_id"))
    .values({name: bindparam(f"b_{name}", type_=AttestationStatus.__table__.c[name].type) for name in _VERDICT})
    .returning(AttestationStatus.device_id)
)


def save_status(conn: Connection, device_id: str, *, passed: bool, attested_at: datetime,
                failures: dict[str, Any], release: str | None, reset_count: int, restart_count: int,
                clock: int, quarantined: bool) -> None:
    """Store a device's latest verdict (every field of it)."""
    values = {"passed": passed, "attested_at": attested_at, "failures": failures, "release": release,
              "reset_count": reset_count, "restart_count": restart_count, "clock": clock, "quarantined": quarantined}
    updated = conn.execute(_SAVE_STATUS, {"b_id": device_id, **{f"b_{k}": v for k, v in values.items()}})
    if updated.first() is None:
        conn.execute(insert(AttestationStatus).values(device_id=device_id, **values))


def quarantine_reason(conn: Connection, device_id: str) -> list[str] | None:
    """The failures that quarantined ``device_id`` when it is quarantined (a later passing
    quote does not lift a quarantine, and must not erase why it was imposed)."""
    row = conn.execute(select(AttestationStatus.failures, AttestationStatus.quarantined)
                       .where(AttestationStatus.device_id == device_id)).first()
    if row is None or not row.quarantined:
        return None
    found = (row.failures or {}).get("quarantined_for")
    return [str(item) for item in found] if isinstance(found, list) else None


async def prune_nonces(conn: AsyncConnection, before: datetime) -> None:
    await conn.execute(delete(AttestationNonce).where(AttestationNonce.expires_at < before))


async def identity_by_ek(conn: AsyncConnection, ek_public: bytes) -> AttestationIdentity | None:
    row = (await conn.execute(select(AttestationIdentity.__table__)
                              .where(AttestationIdentity.ek_public == ek_public,
                                     AttestationIdentity.state == "active"))).first()
    return None if row is None else AttestationIdentity(**row._mapping)


async def release_quarantine(conn: AsyncConnection, device_id: str) -> None:
    """A quarantined device may attest again (it must: its failed verdict stays failed). A
    device that is not quarantined keeps its verdict: releasing it changes nothing."""
    await conn.execute(update(AttestationStatus)
                       .where(AttestationStatus.device_id == device_id, AttestationStatus.quarantined.is_(True))
                       .values(quarantined=False, passed=False))
