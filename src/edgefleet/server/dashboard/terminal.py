"""The dashboard's terminal and log view for one device (xterm.js, vendored from npm by
``scripts/vendor-web``): the page opens a session through the same gate as the CLI, with
the dashboard's session cookie, and attaches to it over a WebSocket on ``/ui``."""

from __future__ import annotations

from pathlib import Path as PathLib
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse

from edgefleet.credentials import Role
from edgefleet.protocol.sessions import SessionOpened, SessionRequest
from edgefleet.server.auth import allowed
from edgefleet.server.dashboard.routes import render, signed_in
from edgefleet.server.scoping import visible_device
from edgefleet.server.state import server_state

router = APIRouter(prefix="/ui", include_in_schema=False)
DeviceId = Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
VENDOR = ("xterm.js", "xterm.css", "addon-fit.js")
STATIC = PathLib(__file__).parent / "static"


@router.get("/devices/{device_id}/terminal")
async def terminal(request: Request, device_id: DeviceId) -> HTMLResponse:
    who = await signed_in(request)
    async with server_state(request).db.transaction(readonly=True) as conn:
        await visible_device(conn, who, device_id)
    return render(request, "terminal.html", who, device_id=device_id,
                  vendored=all((STATIC / "vendor" / name).is_file() for name in VENDOR))


@router.post("/devices/{device_id}/sessions", status_code=201)
async def open_session(request: Request, device_id: DeviceId, body: SessionRequest) -> SessionOpened:
    """The page's session, through the same gate as the API's (role operator, in scope)."""
    who = allowed(await signed_in(request), Role.OPERATOR, scoped=True, what="a remote session")
    request.state.principal = who
    client = request.client.host if request.client else None
    session = await server_state(request).sessions.open(who, device_id, body, client)
    return session.opened("/ui")
