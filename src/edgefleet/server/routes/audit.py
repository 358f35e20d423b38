"""Admin API of the audit log: read it (newest first, filtered, paged) and verify its chain."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request

from edgefleet.protocol.base import MAX_INT
from edgefleet.protocol.v1 import AuditEntry, AuditList, AuditVerdict
from edgefleet.server.auth import Admin
from edgefleet.server.state import server_state
from edgefleet.store.audit import audit_rows

router = APIRouter(prefix="/api/v1/admin/audit", tags=["audit"])


@router.get("")
async def entries(
    _: Admin, request: Request,
    since: datetime | None = None,
    actor: Annotated[str | None, Query(max_length=128)] = None,
    device: Annotated[str | None, Query(max_length=256, description="the subject: a device, rollout or token")]
    = None,
    before_seq: Annotated[int | None, Query(ge=1, le=MAX_INT)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> AuditList:
    """Newest first; ``before_seq`` (the last seq of a page) gives the next page. A ``since``
    without a zone is UTC."""
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=UTC)
    async with server_state(request).db.transaction(readonly=True) as conn:
        rows = await audit_rows(conn, since=since, actor=actor, subject=device, before_seq=before_seq, limit=limit)
    return AuditList(entries=[AuditEntry(seq=r.seq, at=r.at, actor=r.actor, source=r.source, action=r.action,
                                         subject=r.subject, outcome=r.outcome, details=dict(r.details),
                                         digest=r.digest) for r in rows])


@router.get("/verify")
async def verify(_: Admin, request: Request) -> AuditVerdict:
    """Walk the whole chain; the first deleted or altered row, if any."""
    return await server_state(request).audit.verify()
