"""Operator sign-in for the CLI: where to sign in, and the token exchange that turns an ID
token of the configured OpenID Connect provider into a short-lived admin token (RFC 8693).
The dashboard's sign-in is in ``dashboard/routes.py``; both go through ``server/oidc.py``."""

from __future__ import annotations

import hashlib
import logging
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Form, Request

from edgefleet.errors import InvalidRequest, NotFound, Unauthenticated
from edgefleet.protocol.v1 import ID_TOKEN_TYPE, TOKEN_EXCHANGE, OidcInfo, TokenExchanged
from edgefleet.server.oidc import LEEWAY_SECONDS, MAX_ID_TOKEN, Grant, OidcSignIn
from edgefleet.server.state import ServerState, server_state
from edgefleet.store.signins import spend_id_token

log = logging.getLogger("edgefleet.server")
router = APIRouter(prefix="/api/v1/auth", tags=["sign-in"])


def provider(state: ServerState) -> OidcSignIn:
    """The configured provider. Raises NotFound when there is none."""
    if state.oidc is None:
        raise NotFound("this control plane has no OpenID Connect provider (settings: oidc)")
    return state.oidc


@router.get("/oidc")
async def oidc_info(request: Request) -> OidcInfo:
    """Where an operator signs in from the CLI (public: the issuer and a public client id)."""
    settings = provider(server_state(request)).settings
    return OidcInfo(issuer=settings.issuer, client_id=settings.cli_client_id, scope=settings.request_scope)


@router.post("/oidc/token")
async def exchange(
    request: Request,
    grant_type: Annotated[str, Form(max_length=128)],
    subject_token: Annotated[str, Form(max_length=MAX_ID_TOKEN)],
    subject_token_type: Annotated[str, Form(max_length=128)],
) -> TokenExchanged:
    """RFC 8693 token exchange: an ID token the provider issued to the CLI's client, for an
    admin token of the role its groups map to (401 ``oidc_refused``, 403 ``oidc_no_role``).
    Each ID token is exchanged once: a copy of it (from a log, a shell history) gets nothing."""
    state = server_state(request)
    oidc = provider(state)
    if grant_type != TOKEN_EXCHANGE or subject_token_type != ID_TOKEN_TYPE:
        raise InvalidRequest(f"grant_type must be {TOKEN_EXCHANGE} and subject_token_type {ID_TOKEN_TYPE}",
                             code="unsupported_grant_type")
    claims = await oidc.verify_id_token(subject_token, oidc.settings.cli_client_id)
    grant = oidc.grant(claims)
    now = state.clock.now()
    async with state.db.transaction() as conn:
        fresh = await spend_id_token(conn, hashlib.sha256(subject_token.encode()).hexdigest(), str(claims["sub"]),
                                     datetime.fromtimestamp(int(claims["exp"]) + LEEWAY_SECONDS, UTC), now)
    if not fresh:
        raise Unauthenticated(f"the ID token of {grant.name} was exchanged before: sign in again",
                              code="oidc_refused")
    token, expires_at = await oidc.mint(state.db, grant, now)
    await record_sign_in(state, grant, request, "cli")
    return TokenExchanged(access_token=token, expires_in=int((expires_at - now).total_seconds()),
                          role=str(grant.role), scope=None if grant.scope is None else str(grant.scope))


async def record_sign_in(state: ServerState, grant: Grant, request: Request, via: str) -> None:
    """A sign-in is a security decision: it goes on the audit trail."""
    await state.audit.record(grant.name, "sign in", subject=grant.name,
                             source=request.client.host if request.client else None,
                             details={"via": via, "role": str(grant.role), "group": grant.group,
                                      "scope": None if grant.scope is None else str(grant.scope)})
