"""What the fleet dashboard's overview counts: devices by update state, health, site and
running release, attestation and drift verdicts. One grouped query each, so the page
costs the same for ten devices or ten thousand (bench/dashboard.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.elements import ColumnElement

from edgefleet.protocol.scope import Scope
from edgefleet.store.devices import DeviceFilter
from edgefleet.store.schema import AttestationStatus, Device, DriftStatus, TelemetryRecordRow


@dataclass(frozen=True)
class FleetCounts:
    total: int
    by_update_state: dict[str, int]
    by_health: dict[str, int]
    by_site: dict[str, int]
    by_release: dict[str, int]
    attestation: dict[str, int]  # passed, failed, quarantined, never
    drift: dict[str, int]  # in_sync, out_of_sync, unknown, never


async def _grouped(conn: AsyncConnection, fleet: list[ColumnElement[bool]],
                   column: ColumnElement[Any] | InstrumentedAttribute[Any], limit: int = 50) -> dict[str, int]:
    rows = await conn.execute(select(column, func.count()).select_from(Device).where(*fleet).group_by(column)
                              .order_by(func.count().desc()).limit(limit))
    return {str(key) if key is not None else "none": int(count) for key, count in rows}


async def fleet_counts(conn: AsyncConnection, scope: Scope | None = None) -> FleetCounts:
    """The fleet's devices (with ``scope``, those in it) counted every way the overview shows."""
    fleet = DeviceFilter(scope=scope).where()
    total = int((await conn.execute(select(func.count()).select_from(Device).where(*fleet))).scalar_one())
    verdict = case((AttestationStatus.device_id.is_(None), "never"), (AttestationStatus.quarantined, "quarantined"),
                   (AttestationStatus.passed, "passed"), else_="failed")
    attested = await conn.execute(select(verdict, func.count()).select_from(Device).outerjoin(
        AttestationStatus, AttestationStatus.device_id == Device.id).where(*fleet).group_by(verdict))
    drift_state = func.coalesce(DriftStatus.state, "never")
    drift = await conn.execute(select(drift_state, func.count()).select_from(Device).outerjoin(
        DriftStatus, DriftStatus.device_id == Device.id).where(*fleet).group_by(drift_state))
    return FleetCounts(
        total=total, by_update_state=await _grouped(conn, fleet, Device.update_state),
        by_health=await _grouped(conn, fleet, Device.health), by_site=await _grouped(conn, fleet, Device.site),
        by_release=await _grouped(conn, fleet, Device.running_version),
        attestation={str(k): int(v) for k, v in attested}, drift={str(k): int(v) for k, v in drift})


async def recent_telemetry(conn: AsyncConnection, device_id: str, limit: int) -> list[TelemetryRecordRow]:
    """A device's newest stored telemetry records, newest first."""
    rows = await conn.execute(select(TelemetryRecordRow.__table__).where(TelemetryRecordRow.device_id == device_id)
                              .order_by(TelemetryRecordRow.seq.desc()).limit(limit))
    return [TelemetryRecordRow(**row._mapping) for row in rows]
