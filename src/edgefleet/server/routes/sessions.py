"""Remote sessions: an operator opens one (the gate), attaches to it over a WebSocket, and
the device joins over its own mTLS WebSocket when its check-in carries the offer. The
recording of a shell session is read back by an admin (``edgefleet audit replay``)."""

from __future__ import annotations

import logging
import urllib.parse
from typing import Annotated

from fastapi import APIRouter, Path, Request, WebSocket
from fastapi.responses import Response

from edgefleet.credentials import Role
from edgefleet.errors import EdgefleetError, Unauthenticated
from edgefleet.protocol.sessions import SessionId, SessionOpened, SessionRequest
from edgefleet.server.auth import (
    Admin,
    AdminPrincipal,
    DeviceIdPath,
    ScopedOperator,
    admin_principal,
    allowed,
    authenticate_device,
)
from edgefleet.server.dashboard.routes import COOKIE
from edgefleet.server.recording import read_recording
from edgefleet.server.state import server_state

log = logging.getLogger("edgefleet.server.sessions")
router = APIRouter(tags=["sessions"])


def _source(connection: Request | WebSocket) -> str | None:
    return connection.client.host if connection.client else None


@router.post("/api/v1/admin/devices/{device_id}/sessions", status_code=201)
async def open_session(who: ScopedOperator, device_id: DeviceIdPath, body: SessionRequest,
                       request: Request) -> SessionOpened:
    """Open a remote session (shell, logs, port-forward) to a device: 403 with the reason
    when the gate refuses it. Attach to ``attach`` within a minute."""
    session = await server_state(request).sessions.open(who, device_id, body, _source(request))
    return session.opened("/api/v1/admin")


async def _operator(websocket: WebSocket) -> AdminPrincipal:
    scheme, _, value = websocket.headers.get("authorization", "").partition(" ")
    token = value if scheme.lower() == "bearer" and value else websocket.cookies.get(COOKIE)
    if not token:
        raise Unauthenticated("bearer token required", code="token_required")
    return allowed(await admin_principal(server_state(websocket), token), Role.OPERATOR, scoped=True)


async def _attach(websocket: WebSocket, session_id: str) -> None:
    try:
        who = await _operator(websocket)
    except EdgefleetError as exc:
        log.info("session attach refused: %s", exc.message)
        await websocket.close(4401, exc.message[:120])
        return
    await websocket.accept()
    await server_state(websocket).sessions.attach_operator(session_id, who, websocket, _source(websocket))


@router.websocket("/api/v1/admin/sessions/{session_id}/attach")
async def attach(websocket: WebSocket, session_id: Annotated[SessionId, Path()]) -> None:
    """The operator's side of a session it opened (bearer token, same operator)."""
    await _attach(websocket, session_id)


@router.websocket("/ui/sessions/{session_id}/attach")
async def attach_from_dashboard(websocket: WebSocket, session_id: Annotated[SessionId, Path()]) -> None:
    """The dashboard's terminal: the same, with the dashboard's session cookie (path /ui).
    A page of another origin cannot attach (cross-site WebSocket hijacking)."""
    origin = websocket.headers.get("origin")
    if origin is not None and urllib.parse.urlsplit(origin).netloc != websocket.headers.get("host"):
        log.warning("dashboard session attach from origin %s refused", origin[:200])
        await websocket.close(4403, "cross-origin attach refused")
        return
    await _attach(websocket, session_id)


@router.websocket("/api/v1/devices/{device_id}/sessions/{session_id}")
async def device_side(websocket: WebSocket, device_id: DeviceIdPath,
                      session_id: Annotated[SessionId, Path()]) -> None:
    """The device's side of a session its check-in offered (its client certificate)."""
    try:
        device = await authenticate_device(websocket, device_id)
    except EdgefleetError as exc:
        log.warning("session channel of %s refused: %s", device_id, exc.message)
        await websocket.close(4401, exc.message[:120])
        return
    await websocket.accept()
    await server_state(websocket).sessions.attach_device(device.id, session_id, websocket)


@router.get("/api/v1/admin/sessions/{session_id}/recording")
async def recording(_: Admin, session_id: str, request: Request) -> Response:
    """A shell session's recording (asciicast v2, one JSON value per line)."""
    data = read_recording(server_state(request).settings.data_dir / "sessions", session_id)
    return Response(data, media_type="application/x-asciicast")
