"""Admin API v1: bootstrap tokens (operator) and admin tokens (admin): create, list, revoke.
A token's secret is shown once, when it is created, and stored only as its hash."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from sqlalchemy.ext.asyncio import AsyncConnection

from edgefleet.credentials import TokenKind, new_token
from edgefleet.errors import Forbidden, NotFound
from edgefleet.protocol.base import MAX_INT
from edgefleet.protocol.v1 import (
    AdminTokenList,
    AdminTokenView,
    BootstrapTokenCreated,
    BootstrapTokenList,
    BootstrapTokenRequest,
    BootstrapTokenView,
)
from edgefleet.server.auth import Admin, AdminPrincipal, Operator, ScopedOperator
from edgefleet.server.state import server_state
from edgefleet.store.tokens import admin_tokens, bootstrap_tokens, insert_bootstrap, revoke_admin, revoke_bootstrap

log = logging.getLogger("edgefleet.server")
router = APIRouter(prefix="/api/v1/admin", tags=["admin"])

TokenIdPath = Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")]


@router.post("/bootstrap-tokens", status_code=201)
async def create_bootstrap_token(who: ScopedOperator, body: BootstrapTokenRequest, request: Request
                                 ) -> BootstrapTokenCreated:
    """Create a single-use enrollment token for one device at ``site``. Shown once. A token
    limited to a scope creates them only for devices that will be in it."""
    if not who.sees(body.site, body.labels):
        raise Forbidden(f"{who.name!r} is limited to {who.scope}: a device enrolled at {body.site} with labels "
                        f"{body.labels} would be outside it", code="out_of_scope")
    state = server_state(request)
    now = state.clock.now()
    text, token = new_token(TokenKind.BOOTSTRAP)
    expires_at = now + timedelta(seconds=body.ttl_seconds)
    async with state.db.transaction() as conn:
        await insert_bootstrap(conn, token, site=body.site, labels=body.labels, created_by=who.name, now=now,
                               expires_at=expires_at, kind=body.kind)
    log.info("%s created bootstrap token %s for a %s at site %s", who.name, token.id, body.kind, body.site)
    return BootstrapTokenCreated(token=text, id=token.id, site=body.site, labels=body.labels, expires_at=expires_at)


def _bootstrap_view(row: Any, now: datetime) -> BootstrapTokenView:
    state = ("revoked" if row.revoked_at is not None else "used" if row.used_at is not None
             else "expired" if row.expires_at <= now else "unused")
    return BootstrapTokenView(id=row.id, site=row.site, labels=dict(row.labels), created_at=row.created_at,
                              created_by=row.created_by, expires_at=row.expires_at, used_at=row.used_at,
                              device_id=row.device_id, revoked_at=row.revoked_at, state=state)


@router.get("/bootstrap-tokens")
async def list_bootstrap_tokens(
    _: Operator, request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> BootstrapTokenList:
    """Bootstrap tokens, newest first, with what became of each (unused, used by which
    device, expired, revoked)."""
    state = server_state(request)
    async with state.db.transaction(readonly=True) as conn:
        rows = await bootstrap_tokens(conn, limit=limit, offset=offset)
    now = state.clock.now()
    return BootstrapTokenList(tokens=[_bootstrap_view(row, now) for row in rows])


async def _revoke(request: Request, who: AdminPrincipal, kind: str, token_id: str,
                  revoke: Callable[[AsyncConnection, str, datetime], Awaitable[bool]]) -> Response:
    state = server_state(request)
    async with state.db.transaction() as conn:
        found = await revoke(conn, token_id, state.clock.now())
    if not found:
        raise NotFound(f"no {kind} token {token_id}")
    log.warning("%s revoked %s token %s", who.name, kind, token_id)
    return Response(status_code=204)


@router.delete("/bootstrap-tokens/{token_id}", status_code=204)
async def revoke_bootstrap_token(who: Operator, token_id: TokenIdPath, request: Request) -> Response:
    """Revoke an unused bootstrap token: no device can enroll with it any more."""
    return await _revoke(request, who, "bootstrap", token_id, revoke_bootstrap)


@router.get("/admin-tokens")
async def list_admin_tokens(_: Admin, request: Request) -> AdminTokenList:
    """Every admin token with its role and state (never a secret)."""
    state = server_state(request)
    async with state.db.transaction(readonly=True) as conn:
        rows = await admin_tokens(conn)
    now = state.clock.now()
    return AdminTokenList(tokens=[AdminTokenView(
        id=row.id, name=row.name, role=row.role, scope=row.scope, created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at, state="revoked" if row.revoked_at is not None else "expired"
        if row.expires_at is not None and row.expires_at <= now else "active") for row in rows])


@router.delete("/admin-tokens/{token_id}", status_code=204)
async def revoke_admin_token(who: Admin, token_id: TokenIdPath, request: Request) -> Response:
    """Revoke an admin token: every server process refuses it from its next request."""
    return await _revoke(request, who, "admin", token_id, revoke_admin)
