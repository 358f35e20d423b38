"""Who is calling: devices by client certificate, operators by bearer token with a role."""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Path
from starlette.requests import HTTPConnection, Request

from edgefleet.credentials import Role, TokenKind, parse_token, secret_matches
from edgefleet.errors import Forbidden, Unauthenticated
from edgefleet.pki import DeviceCertificate, verify_device_certificate
from edgefleet.protocol.scope import Scope, parse_scope
from edgefleet.server.state import ServerState, server_state
from edgefleet.store.devices import DeviceAuth, device_auth, device_auth_and_desired, promote_next_certificate
from edgefleet.store.revocations import revocation_of, revoke_serial
from edgefleet.store.tokens import admin_token

log = logging.getLogger("edgefleet.server")

DeviceIdPath = Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
DECOMMISSIONED = "decommissioned"  # the revocation reason lifecycle.decommission records


@dataclass(frozen=True)
class AuthenticatedDevice:
    id: str
    desired_version: int
    auth: DeviceAuth
    site: str | None = None  # as the fleet CA signed it into the certificate (None: enrolled before sites were)


@dataclass(frozen=True)
class AdminPrincipal:
    token_id: str
    name: str
    role: Role
    scope: Scope | None = None  # None: the whole fleet

    def sees(self, site: str | None, labels: Mapping[str, str]) -> bool:
        """Whether a device with this site and these labels is in this operator's scope."""
        return self.scope is None or self.scope.admits(site, labels)


def _presented_certificate(state: ServerState, request: HTTPConnection) -> DeviceCertificate:
    tls = request.scope.get("extensions", {}).get("tls")
    if tls and tls.get("client_cert_chain"):
        return state.identity_of(tls["client_cert_chain"][0])
    settings = state.settings
    client = request.client.host if request.client else None
    header = request.headers.get(settings.client_cert_header)
    if header:
        if client not in settings.trusted_proxies:
            raise Unauthenticated("client certificate required", code="client_cert_required")
        # nginx's $ssl_client_escaped_cert: URL-encoded PEM. Not verified by our TLS
        # stack, so verify it fully here.
        return verify_device_certificate(state.ca.cert_pem, urllib.parse.unquote(header), state.clock.now())
    raise Unauthenticated("client certificate required", code="client_cert_required")


async def fresh_device_auth(state: ServerState, device_id: str) -> DeviceAuth | None:
    """Read a device's serial and desired version from the database, refreshing the cache."""
    read_at = state.devices.generation
    auth = await state.db.read(device_auth, device_id)
    _remember(state, device_id, auth, read_at)
    return auth


async def fresh_device_state(state: ServerState, device_id: str) -> tuple[DeviceAuth, dict[str, Any]] | None:
    """``fresh_device_auth`` and the desired document, in one read."""
    read_at = state.devices.generation
    found = await state.db.read(device_auth_and_desired, device_id)
    _remember(state, device_id, None if found is None else found[0], read_at)
    return found


def _remember(state: ServerState, device_id: str, auth: DeviceAuth | None, read_at: int) -> None:
    if auth is None:
        state.devices.forget(device_id)
    else:
        state.devices.put(device_id, auth, read_at)


async def authenticate_device(request: HTTPConnection, device_id: DeviceIdPath) -> AuthenticatedDevice:
    """The device named in the path, if and only if the caller holds its current certificate.

    Raises:
        Unauthenticated: no certificate, not a device certificate, device unknown or
            decommissioned, the certificate was superseded by a newer enrollment or revoked.
        Forbidden: a valid device certificate for another device.
        RateLimited: the device sends more than its rate limit allows.
    """
    state = server_state(request)
    identity = _presented_certificate(state, request)
    if identity.device_id != device_id:
        raise Forbidden(
            f"device {identity.device_id} may not access records of {device_id}", code="not_your_device"
        )
    state.rate_limits.charge(device_id)
    auth = state.devices.get(device_id)
    if auth is None or auth.cert_serial != identity.serial:  # not cached, or the copy may predate a renewal
        auth = await fresh_device_auth(state, device_id)
    if auth is not None and auth.cert_serial != identity.serial and auth.next_serial == identity.serial:
        auth = await _promote(state, device_id, identity.serial)
    if auth is None:
        async with state.db.transaction(readonly=True) as conn:
            revoked = await revocation_of(conn, identity.serial)
        if revoked is not None and revoked.device_id == device_id and revoked.reason == DECOMMISSIONED:
            # The fleet CA's certificate of a device an operator ended: tell it to erase
            # its credentials and stop (it cannot enroll again with them anyway).
            raise Unauthenticated(f"{device_id} was decommissioned by {revoked.revoked_by}", code="decommissioned")
    current = current_or_refuse(auth, device_id, identity.serial)
    return AuthenticatedDevice(device_id, current.desired_version, current, identity.site)


def current_or_refuse(auth: DeviceAuth | None, device_id: str, serial: str) -> DeviceAuth:
    """``auth`` when ``serial`` is the enrolled device's current, unrevoked certificate.

    Raises:
        Unauthenticated: the device is unknown (or decommissioned), the certificate was
            superseded (a newer enrollment or renewal) or revoked.
    """
    if auth is None:
        raise Unauthenticated(f"device {device_id} is not enrolled", code="unknown_device")
    if auth.cert_serial != serial:
        raise Unauthenticated(f"certificate {serial} of {device_id} was superseded", code="stale_certificate")
    if auth.revoked:
        raise Unauthenticated(f"certificate {serial} of {device_id} was revoked", code="certificate_revoked")
    return auth


async def _promote(state: ServerState, device_id: str, serial: str) -> DeviceAuth | None:
    """The device presents its renewed certificate for the first time: from now on only that
    one works, here and (through the revocation list) at its hub. Its auth, read afresh."""
    now = state.clock.now()
    async with state.db.transaction() as conn:
        old = await promote_next_certificate(conn, device_id, serial, now)
        if old is not None:
            await revoke_serial(conn, old[0], old[1], device_id, reason="superseded by its renewal", by="renewal",
                                now=now)
    state.devices.forget(device_id)
    if old is not None:
        log.info("%s presented its renewed certificate %s; %s no longer works", device_id, serial, old[0])
    return await fresh_device_auth(state, device_id)


async def admin_principal(state: ServerState, presented: str) -> AdminPrincipal:
    """The operator an admin token names (from a bearer header or the dashboard's cookie).

    Raises:
        Unauthenticated: malformed, unknown, revoked or expired token.
    """
    token = parse_token(TokenKind.ADMIN, presented.strip())
    async with state.db.transaction() as conn:
        row = await admin_token(conn, token.id)
    now = state.clock.now()
    if row is None or not secret_matches(token, row.secret_hash):
        raise Unauthenticated(f"unknown admin token {token.id}", code="invalid_token")
    if row.revoked_at is not None:
        raise Unauthenticated(f"admin token {token.id} was revoked", code="invalid_token")
    if row.expires_at is not None and row.expires_at <= now:
        raise Unauthenticated(f"admin token {token.id} expired", code="invalid_token")
    return AdminPrincipal(token.id, row.name, Role(row.role), None if row.scope is None else parse_scope(row.scope))


def allowed(principal: AdminPrincipal, needed: Role, *, scoped: bool, what: str | None = None) -> AdminPrincipal:
    """``principal`` if its role includes ``needed`` and, unless the action itself keeps to
    the principal's scope (``scoped``), it is not limited to part of the fleet.

    Raises Forbidden (``insufficient_role``, ``fleet_wide_only``)."""
    doing = f": {what} needs {needed}" if what else f", needs {needed}"
    if not principal.role.allows(needed):
        raise Forbidden(f"{principal.name!r} has role {principal.role}{doing}", code="insufficient_role")
    if principal.scope is not None and not scoped:
        raise Forbidden(f"{principal.name!r} is limited to {principal.scope}: this acts on the whole fleet",
                        code="fleet_wide_only")
    return principal


def require_role(needed: Role, *, scoped: bool = False) -> Callable[[Request], Awaitable[AdminPrincipal]]:
    """A dependency admitting bearer tokens whose role includes ``needed``; a token limited
    to a scope only where the route keeps to it (``scoped``: it filters what it lists and
    refuses a device or rollout outside the scope as not found)."""

    async def dependency(request: Request) -> AdminPrincipal:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not value:
            raise Unauthenticated("bearer token required", code="token_required")
        principal = await admin_principal(server_state(request), value)
        request.state.principal = principal  # the audit trail's actor
        return allowed(principal, needed, scoped=scoped)

    return dependency


CurrentDevice = Annotated[AuthenticatedDevice, Depends(authenticate_device)]
# Fleet-wide routes (tokens, releases, GitOps, the audit log, hubs): a scoped token is refused.
Viewer = Annotated[AdminPrincipal, Depends(require_role(Role.VIEWER))]
Operator = Annotated[AdminPrincipal, Depends(require_role(Role.OPERATOR))]
Admin = Annotated[AdminPrincipal, Depends(require_role(Role.ADMIN))]
# Routes that keep to the caller's scope.
ScopedViewer = Annotated[AdminPrincipal, Depends(require_role(Role.VIEWER, scoped=True))]
ScopedOperator = Annotated[AdminPrincipal, Depends(require_role(Role.OPERATOR, scoped=True))]
ScopedAdmin = Annotated[AdminPrincipal, Depends(require_role(Role.ADMIN, scoped=True))]
