"""GitOps: the push webhook (HMAC, GitHub style), and the admin views of syncs, drift and
alerts."""

from __future__ import annotations

import hmac
import logging
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from edgefleet.errors import NotFound, Unauthenticated
from edgefleet.protocol.v1 import AlertList, AlertView, DriftList, DriftView, GitOpsCommitView, GitOpsLog
from edgefleet.server.alerts import signature
from edgefleet.server.auth import Operator, Viewer
from edgefleet.server.bodies import bounded_body
from edgefleet.server.state import server_state
from edgefleet.store.gitops import commit_log, drifted, list_alerts

log = logging.getLogger("edgefleet.server")
router = APIRouter(tags=["gitops"])
Limit = Annotated[int, Query(ge=1, le=1000)]


@router.post("/api/v1/gitops/webhook", status_code=202)
async def push_webhook(request: Request) -> Response:
    """A push to the fleet repository: fetch now. Signed like GitHub's
    ``X-Hub-Signature-256: sha256=<HMAC of the body>``; the body itself is not trusted."""
    state = server_state(request)
    secret = state.settings.gitops_webhook_secret
    if not secret or not state.settings.gitops:
        raise NotFound("the GitOps webhook is not configured")
    body = await bounded_body(request, 1 << 20)
    given = request.headers.get("x-hub-signature-256", "")
    if not hmac.compare_digest(given, signature(secret, body)):
        raise Unauthenticated("bad webhook signature", code="bad_signature")
    state.gitops.trigger()
    return Response(status_code=202)


@router.post("/api/v1/admin/gitops/sync")
async def sync_now(who: Operator, request: Request) -> GitOpsLog:
    """Fetch every sync now and decide new commits; returns what was decided."""
    state = server_state(request)
    decisions = await state.gitops.sync_once()
    now = state.clock.now()
    log.info("%s ran a GitOps sync: %d new commits", who.name, len(decisions))
    return GitOpsLog(commits=[GitOpsCommitView(sync=d.sync, commit=d.commit, accepted=d.accepted, reasons=d.reasons,
                                               processed_at=now) for d in decisions])


@router.get("/api/v1/admin/gitops/commits")
async def commits(_: Viewer, request: Request, limit: Limit = 100) -> GitOpsLog:
    async with server_state(request).db.transaction() as conn:
        rows = await commit_log(conn, limit)
    return GitOpsLog(commits=[GitOpsCommitView(sync=r.sync, commit=r.commit_sha, accepted=r.accepted,
                                               reasons=list(r.reasons.get("reasons", [])), processed_at=r.processed_at)
                              for r in rows])


@router.get("/api/v1/admin/drift")
async def drift(_: Viewer, request: Request) -> DriftList:
    """Devices whose reported configuration differs from their desired state."""
    async with server_state(request).db.transaction() as conn:
        rows = await drifted(conn)
    return DriftList(devices=[DriftView(device_id=r.device_id, state=r.state, differences=r.differences,
                                        since=r.since, heals=r.heals) for r in rows])


@router.get("/api/v1/admin/alerts")
async def alerts(_: Viewer, request: Request, limit: Limit = 100) -> AlertList:
    async with server_state(request).db.transaction() as conn:
        rows = await list_alerts(conn, limit)
    return AlertList(alerts=[AlertView(id=r.id, kind=r.kind, subject=r.subject, message=r.message, details=r.details,
                                       created_at=r.created_at, delivered_at=r.delivered_at, attempts=r.attempts)
                             for r in rows])
