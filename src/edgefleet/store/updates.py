"""The A/B update history the devices report (``update_events``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.store.schema import UpdateEventRow


def record_update_events(conn: Connection, device_id: str, events: Sequence[dict[str, Any]],
                               now: datetime) -> int:
    """Store the events newer than the newest stored one; returns how many were new.

    Reports repeat the recent history, so each event arrives many times: the sequence
    number makes storing it idempotent.
    """
    newest = conn.execute(select(func.max(UpdateEventRow.seq))
                          .where(UpdateEventRow.device_id == device_id)).scalar_one()
    fresh = [e for e in events if newest is None or e["seq"] > newest]
    if fresh:
        conn.execute(insert(UpdateEventRow), [
            {"device_id": device_id, "seq": e["seq"], "phase": e["phase"], "release": e.get("release"),
             "reason": e.get("reason"), "at": e["at"], "received_at": now} for e in fresh
        ])
    return len(fresh)


async def update_history(conn: AsyncConnection, device_id: str, limit: int) -> list[UpdateEventRow]:
    """Newest first."""
    rows = await conn.execute(select(UpdateEventRow.__table__).where(UpdateEventRow.device_id == device_id)
                              .order_by(UpdateEventRow.seq.desc()).limit(limit))
    return [UpdateEventRow(**row._mapping) for row in rows]


async def forget_update_history(conn: AsyncConnection, device_id: str) -> None:
    await conn.execute(delete(UpdateEventRow).where(UpdateEventRow.device_id == device_id))
