"""Rollouts and their audit events."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Text, bindparam, insert, select, type_coerce, update
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.store.schema import AttestationStatus, Device, DirectorState, RolloutEvent, RolloutRow

ACTIVE = ("running", "baking", "awaiting_approval", "paused")


async def create_rollout(conn: AsyncConnection, row: dict[str, Any]) -> None:
    await conn.execute(insert(RolloutRow).values(**row))


async def get_rollout(conn: AsyncConnection, rollout_id: str, *, with_state: bool = True) -> RolloutRow | None:
    """The whole rollout; without the planner's state and the previous releases (an entry
    per device each: ``state`` and ``previous`` are then None) unless ``with_state``."""
    table = RolloutRow.__table__
    columns = table.c if with_state else [c for c in table.c if c.name not in ("state", "previous")]
    found = (await conn.execute(select(*columns).where(RolloutRow.id == rollout_id))).first()
    return None if found is None else RolloutRow(**found._mapping)


async def rollout_heads(conn: AsyncConnection, *, statuses: Sequence[str] | None = None) -> Sequence[Row[Any]]:
    """Rollouts newest first (only those in ``statuses`` if given), without the planner's
    state and the previous releases, which hold an entry per device."""
    stmt = select(RolloutRow.id, RolloutRow.release, RolloutRow.selector, RolloutRow.spec, RolloutRow.status,
                  RolloutRow.version, RolloutRow.created_by, RolloutRow.created_at)
    stmt = stmt.order_by(RolloutRow.created_at.desc(), RolloutRow.id)
    if statuses is not None:
        stmt = stmt.where(RolloutRow.status.in_([str(s) for s in statuses]))
    return (await conn.execute(stmt)).all()


async def rollout_version(conn: AsyncConnection, rollout_id: str) -> int | None:
    """A rollout's version: it changes with every change of the rollout."""
    found = (await conn.execute(select(RolloutRow.version).where(RolloutRow.id == rollout_id))).first()
    return None if found is None else int(found[0])


async def save_rollout(conn: AsyncConnection, rollout_id: str, version: int, now: datetime,
                       **values: Any) -> bool:
    """Compare-and-swap on ``version``: False when another controller moved it first."""
    result = await conn.execute(update(RolloutRow).where(RolloutRow.id == rollout_id, RolloutRow.version == version)
                                .values(version=version + 1, updated_at=now, **values).returning(RolloutRow.id))
    return result.first() is not None


async def add_events(conn: AsyncConnection, rollout_id: str, events: Sequence[tuple[str, str | None, str]],
                     now: datetime) -> None:
    if events:
        await conn.execute(insert(RolloutEvent), [
            {"rollout_id": rollout_id, "at": now, "kind": kind, "device_id": device, "reason": reason[:1000]}
            for kind, device, reason in events])


async def rollout_events(conn: AsyncConnection, rollout_id: str | None, limit: int) -> list[RolloutEvent]:
    """A rollout's audit trail (every rollout's, with None), newest first."""
    query = select(RolloutEvent.__table__)
    if rollout_id is not None:
        query = query.where(RolloutEvent.rollout_id == rollout_id)
    rows = await conn.execute(query.order_by(RolloutEvent.id.desc()).limit(limit))
    return [RolloutEvent(**row._mapping) for row in rows]


async def rollout_devices(conn: AsyncConnection) -> Sequence[Row[Any]]:
    """Every device as the rollout controller sees it, in one query: labels, presence, what it
    runs and reports about its update, its accepted GitOps group, its last attestation
    verdict and the release its director metadata names. Only the fields it needs: the
    controller reads this on every step. On SQLite the labels come as their JSON text,
    decoded only for a device whose row changed since the controller's last step."""
    stmt = (select(Device.id, Device.site, type_coerce(Device.labels, Text).label("labels"), Device.last_seen_at,
                   Device.running_version,
                   Device.health, Device.status["update"]["phase"].as_string().label("update_phase"),
                   Device.status["update"]["release"].as_string().label("update_release"),
                   Device.status["update"]["reason"].as_string().label("update_reason"),
                   Device.status["health_findings"][0]["name"].as_string().label("health_reason"),
                   Device.desired["config"]["group"].as_string().label("group"),
                   AttestationStatus.passed.label("attested"), AttestationStatus.release.label("attested_release"),
                   DirectorState.release.label("assigned"))
            .outerjoin(AttestationStatus, AttestationStatus.device_id == Device.id)
            .outerjoin(DirectorState, DirectorState.device_id == Device.id)
            .where(Device.kind == "device"))  # a site's hub is never a rollout's target
    return (await conn.execute(stmt)).all()


async def workload_reports(conn: AsyncConnection, device_ids: Sequence[str]) -> dict[str, tuple[Any, Any, Any]]:
    """Per device: the workloads its desired configuration names, and from its last status
    report its drift parts and its workloads' statuses (a workload rollout's view)."""
    stmt = select(Device.id, Device.desired["config"]["workloads"], Device.status["config"]["parts"],
                  Device.status["workloads"]).where(Device.id.in_(bindparam("ids", expanding=True)))
    found: dict[str, tuple[Any, Any, Any]] = {}
    for start in range(0, len(device_ids), 1000):
        for row in await conn.execute(stmt, {"ids": list(device_ids[start:start + 1000])}):
            found[row[0]] = (row[1], row[2], row[3])
    return found
