"""Telemetry records devices ship, stored exactly once (by device and sequence number)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.errors import Conflict
from edgefleet.store.schema import TelemetryRecordRow, TelemetryStream


async def store_batch(conn: AsyncConnection, device_id: str, records: Sequence[dict[str, Any]], dropped: int,
                      now: datetime) -> int:
    """Store the records above what is stored already (a batch sent again adds nothing);
    returns the highest sequence number now stored. Raises Conflict when another request
    stored this device's records meanwhile (the caller's transaction must roll back)."""
    stream = (await conn.execute(select(TelemetryStream).where(TelemetryStream.device_id == device_id))).first()
    through = 0 if stream is None else int(stream.stored_through)
    fresh = [r for r in records if r["seq"] > through]
    if fresh:
        await conn.execute(insert(TelemetryRecordRow), [
            {"device_id": device_id, "seq": r["seq"], "kind": r["kind"], "at": r["at"], "body": r["body"],
             "received_at": now} for r in fresh])
    new_through = int(max([through, *(r["seq"] for r in fresh)]))
    if stream is None:
        await conn.execute(insert(TelemetryStream).values(device_id=device_id, stored_through=new_through,
                                                          dropped=dropped, batches=1, updated_at=now))
        return new_through
    result = await conn.execute(
        update(TelemetryStream)
        .where(TelemetryStream.device_id == device_id, TelemetryStream.stored_through == through)
        .values(stored_through=new_through, dropped=max(int(stream.dropped), dropped),
                batches=TelemetryStream.batches + 1, updated_at=now))
    if result.rowcount != 1:
        raise Conflict(f"telemetry of {device_id} was stored concurrently; send the batch again",
                       code="concurrent_change")
    return new_through


async def telemetry_records(conn: AsyncConnection, device_id: str, after: int, limit: int) -> list[TelemetryRecordRow]:
    rows = await conn.execute(select(TelemetryRecordRow.__table__)
                              .where(TelemetryRecordRow.device_id == device_id, TelemetryRecordRow.seq > after)
                              .order_by(TelemetryRecordRow.seq).limit(limit))
    return [TelemetryRecordRow(**row._mapping) for row in rows]


async def telemetry_stream(conn: AsyncConnection, device_id: str) -> TelemetryStream | None:
    row = (await conn.execute(select(TelemetryStream.__table__).where(TelemetryStream.device_id == device_id))).first()
    return None if row is None else TelemetryStream(**row._mapping)
