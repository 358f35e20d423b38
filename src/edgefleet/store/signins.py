"""Sign-in records. Each function runs inside the caller's transaction."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.store.schema import SpentIdToken


async def spend_id_token(conn: AsyncConnection, digest: str, subject: str, expires_at: datetime,
                         now: datetime) -> bool:
    """Record an ID token as exchanged; False if it was before (by any server process).
    Tokens past their expiry are forgotten on the way: none of them verifies any more."""
    await conn.execute(delete(SpentIdToken).where(SpentIdToken.expires_at < now))
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    result = await conn.execute(dialect.insert(SpentIdToken).values(
        digest=digest, subject=subject[:256], expires_at=expires_at).on_conflict_do_nothing(
        index_elements=["digest"]).returning(SpentIdToken.digest))
    return result.first() is not None
