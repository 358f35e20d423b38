"""Director state queries. Each function runs inside the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.releases.director import DirectorFiles
from edgefleet.store.schema import DirectorState


async def director_state(conn: AsyncConnection, device_id: str) -> DirectorState | None:
    row = (await conn.execute(select(DirectorState.__table__).where(DirectorState.device_id == device_id))).first()
    return None if row is None else DirectorState(**row._mapping)


async def director_states(conn: AsyncConnection, device_ids: Sequence[str]) -> dict[str, DirectorState]:
    rows = await conn.execute(select(DirectorState.__table__).where(DirectorState.device_id.in_(device_ids)))
    return {row.device_id: DirectorState(**row._mapping) for row in rows}


async def save_assignment(conn: AsyncConnection, device_id: str, release: str | None, files: DirectorFiles,
                          now: datetime, *, previous_version: int | None) -> bool:
    """Insert, or replace only if nobody else moved the device on meanwhile; True if stored."""
    values = {
        "release": release, "version": files.version, "targets": files.targets, "snapshot": files.snapshot,
        "timestamp_version": files.timestamp_version, "timestamp": files.timestamp,
        "timestamp_expires": files.timestamp_expires, "assigned_at": now,
    }
    if previous_version is None:
        await conn.execute(insert(DirectorState).values(device_id=device_id, **values))
        return True
    result = await conn.execute(
        update(DirectorState)
        .where(DirectorState.device_id == device_id, DirectorState.version == previous_version)
        .values(**values)
        .returning(DirectorState.device_id)
    )
    return result.first() is not None


async def save_timestamp(conn: AsyncConnection, device_id: str, previous_version: int, version: int, data: bytes,
                         expires: datetime) -> bool:
    result = await conn.execute(
        update(DirectorState)
        .where(DirectorState.device_id == device_id, DirectorState.timestamp_version == previous_version)
        .values(timestamp_version=version, timestamp=data, timestamp_expires=expires)
        .returning(DirectorState.device_id)
    )
    return result.first() is not None


async def all_director_states(conn: AsyncConnection) -> list[DirectorState]:
    return [DirectorState(**row._mapping) for row in await conn.execute(select(DirectorState.__table__))]


async def forget_device(conn: AsyncConnection, device_id: str) -> None:
    await conn.execute(delete(DirectorState).where(DirectorState.device_id == device_id))
