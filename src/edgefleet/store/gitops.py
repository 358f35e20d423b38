"""GitOps records: accepted commits, processed commits, alerts, drift."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.store.schema import Alert, DriftStatus, GitOpsCommit, GitOpsSync


async def accepted_commits(conn: AsyncConnection) -> dict[str, str]:
    rows = await conn.execute(select(GitOpsSync.name, GitOpsSync.accepted_commit))
    return {name: commit for name, commit in rows}


async def refused_before(conn: AsyncConnection, sync: str, commit: str) -> bool:
    found = await conn.execute(select(GitOpsCommit.commit_sha).where(GitOpsCommit.sync == sync,
                                                                     GitOpsCommit.commit_sha == commit,
                                                                 GitOpsCommit.accepted.is_(False)))
    return found.first() is not None


async def record_commit(conn: AsyncConnection, sync: str, commit: str, accepted: bool, reasons: list[str],
                        now: datetime) -> None:
    await conn.execute(insert(GitOpsCommit).values(sync=sync, commit_sha=commit, accepted=accepted,
                                                   reasons={"reasons": reasons}, processed_at=now))
    if not accepted:
        return
    moved = await conn.execute(update(GitOpsSync).where(GitOpsSync.name == sync)
                               .values(accepted_commit=commit, accepted_at=now).returning(GitOpsSync.name))
    if moved.first() is None:
        await conn.execute(insert(GitOpsSync).values(name=sync, accepted_commit=commit, accepted_at=now))


async def commit_log(conn: AsyncConnection, limit: int) -> list[GitOpsCommit]:
    rows = await conn.execute(select(GitOpsCommit.__table__).order_by(GitOpsCommit.processed_at.desc())
                              .limit(limit))
    return [GitOpsCommit(**row._mapping) for row in rows]


async def add_alert(conn: AsyncConnection, kind: str, subject: str, message: str, details: dict[str, Any],
                    now: datetime) -> None:
    await conn.execute(insert(Alert).values(kind=kind, subject=subject, message=message[:2000], details=details,
                                            created_at=now, attempts=0, next_attempt_at=now))


async def due_alerts(conn: AsyncConnection, now: datetime, limit: int = 50) -> list[Alert]:
    rows = await conn.execute(select(Alert.__table__).where(Alert.delivered_at.is_(None),
                                                            Alert.next_attempt_at <= now)
                              .order_by(Alert.id).limit(limit))
    return [Alert(**row._mapping) for row in rows]


async def list_alerts(conn: AsyncConnection, limit: int) -> list[Alert]:
    rows = await conn.execute(select(Alert.__table__).order_by(Alert.id.desc()).limit(limit))
    return [Alert(**row._mapping) for row in rows]


async def mark_alert(conn: AsyncConnection, alert_id: int, *, delivered: datetime | None, attempts: int,
                     next_attempt: datetime) -> None:
    await conn.execute(update(Alert).where(Alert.id == alert_id)
                       .values(delivered_at=delivered, attempts=attempts, next_attempt_at=next_attempt))


async def drift_of(conn: AsyncConnection, device_id: str) -> DriftStatus | None:
    row = (await conn.execute(select(DriftStatus.__table__).where(DriftStatus.device_id == device_id))).first()
    return DriftStatus(**row._mapping) if row is not None else None


async def set_drift(conn: AsyncConnection, device_id: str, state: str, differences: dict[str, Any],
                    now: datetime, heals: int) -> None:
    await conn.execute(delete(DriftStatus).where(DriftStatus.device_id == device_id))
    await conn.execute(insert(DriftStatus).values(device_id=device_id, state=state, differences=differences,
                                                  since=now, heals=heals))


async def drifted(conn: AsyncConnection) -> list[DriftStatus]:
    rows = await conn.execute(select(DriftStatus.__table__).where(DriftStatus.state == "out_of_sync")
                              .order_by(DriftStatus.device_id))
    return [DriftStatus(**row._mapping) for row in rows]
