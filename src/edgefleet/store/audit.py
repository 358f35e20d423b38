"""The audit log's rows: append one after the last (the chain), read them back."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, text
from sqlalchemy.engine import Connection, Row
from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.store.schema import AuditRow

GENESIS = "0" * 64  # the ``prev`` of the first row
CHAIN_LOCK = 7235916  # PostgreSQL advisory lock (7235914: migrations, 7235915: the rollout leader)


def last_link(conn: Connection) -> tuple[int, str]:
    """(seq, digest) of the newest row; (0, GENESIS) when there is none. On PostgreSQL it
    first takes the chain's transaction lock, so that the append that follows in the same
    transaction cannot race another process's (every append of a busy fleet would otherwise
    collide on the next seq and retry). SQLite has one writer at a time already."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": CHAIN_LOCK})
    row = conn.execute(select(AuditRow.seq, AuditRow.digest).order_by(AuditRow.seq.desc()).limit(1)).first()
    return (0, GENESIS) if row is None else (int(row.seq), str(row.digest))


def insert_row(conn: Connection, values: dict[str, Any]) -> None:
    conn.execute(insert(AuditRow).values(**values))


async def audit_rows(conn: AsyncConnection, *, since: datetime | None = None, actor: str | None = None,
                     subject: str | None = None, before_seq: int | None = None,
                     limit: int = 100) -> Sequence[Row[Any]]:
    """Newest first, filtered; ``before_seq`` pages back."""
    stmt = select(AuditRow.__table__).order_by(AuditRow.seq.desc()).limit(limit)
    if since is not None:
        stmt = stmt.where(AuditRow.at >= since)
    if actor is not None:
        stmt = stmt.where(AuditRow.actor == actor)
    if subject is not None:
        stmt = stmt.where(AuditRow.subject == subject)
    if before_seq is not None:
        stmt = stmt.where(AuditRow.seq < before_seq)
    return (await conn.execute(stmt)).all()


async def chain_page(conn: AsyncConnection, after_seq: int, limit: int) -> Sequence[Row[Any]]:
    """Rows after ``after_seq``, oldest first (a verification walks the whole chain in pages)."""
    return (await conn.execute(select(AuditRow.__table__).where(AuditRow.seq > after_seq)
                               .order_by(AuditRow.seq).limit(limit))).all()
