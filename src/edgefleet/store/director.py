"""Director state queries. Each function runs inside the caller's transaction (the
synchronous ones: see ``store.devices``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.releases.director import DirectorFiles
from edgefleet.store.schema import DirectorState

_STATE = select(DirectorState.__table__).where(DirectorState.device_id == bindparam("b_id"))


def director_state(conn: Connection, device_id: str) -> DirectorState | None:
    row = conn.execute(_STATE, {"b_id": device_id}).first()
    return None if row is None else DirectorState(**row._mapping)


class Versions(NamedTuple):
    version: int  # of targets and snapshot
    timestamp_version: int


async def director_versions(conn: AsyncConnection, device_ids: Sequence[str]) -> dict[str, Versions]:
    """The metadata versions of these devices' director states (those that have one)."""
    rows = await conn.execute(select(DirectorState.device_id, DirectorState.version, DirectorState.timestamp_version)
                              .where(DirectorState.device_id.in_(device_ids)))
    return {device_id: Versions(version, timestamp) for device_id, version, timestamp in rows}


async def save_assignment(conn: AsyncConnection, device_id: str, release: str | None, files: DirectorFiles,
                          now: datetime, *, previous_version: int | None) -> bool:
    """Insert, or replace only if nobody else moved the device on meanwhile; True if stored."""
    return device_id in await save_assignments(conn, release, [(device_id, files, previous_version)], now)


async def save_assignments(conn: AsyncConnection, release: str | None,
                           assignments: Sequence[tuple[str, DirectorFiles, int | None]], now: datetime) -> set[str]:
    """``save_assignment`` for many devices (device, files, previous version) in a few
    statements; returns the devices stored (the others moved on meanwhile)."""
    def values(files: DirectorFiles) -> dict[str, Any]:
        return {"release": release, "version": files.version, "targets": files.targets, "snapshot": files.snapshot,
                "timestamp_version": files.timestamp_version, "timestamp": files.timestamp,
                "timestamp_expires": files.timestamp_expires, "assigned_at": now}

    updates = [{"b_id": d, "b_previous": previous, **values(files)} for d, files, previous in assignments
               if previous is not None]
    if updates:
        stmt = (update(DirectorState)
                .where(DirectorState.device_id == bindparam("b_id"), DirectorState.version == bindparam("b_previous"))
                .values({column: bindparam(column) for column in values(assignments[0][1])})
                .execution_options(synchronize_session=False))
        await conn.execute(stmt, updates)
    inserts = [{"device_id": d, **values(files)} for d, files, previous in assignments if previous is None]
    if inserts:
        # Two first writes for one device can race (its first metadata request and an
        # assignment, or two requests): the loser stores nothing and is told so below.
        dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        await conn.execute(dialect_insert(DirectorState).on_conflict_do_nothing(index_elements=["device_id"]),
                           inserts)
    wanted = {d: files.targets for d, files, _ in assignments}  # signed now: unique to this write
    rows = await conn.execute(select(DirectorState.device_id, DirectorState.targets)
                              .where(DirectorState.device_id.in_(list(wanted))))
    return {d for d, targets in rows if targets == wanted[d]}


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
