"""The technician's page, served by the agent on the local network (``local_ui``): what
the device is running, its slots, the update in progress and its history, health checks,
attestation, the telemetry waiting in the buffer and the newest log lines. Everything
comes from the agent itself, so the page works with the uplink down.

Protected by a credential from the device's configuration (``local_ui_token_file``):
the login form checks it in constant time and keeps it in an HttpOnly, SameSite=Strict
cookie. Plain HTTP on the local network: the store's LAN is the boundary, as for the
console port next to the device."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import uvicorn
from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from edgefleet.errors import ConfigError

if TYPE_CHECKING:
    from edgefleet.agent.daemon import Agent

log = logging.getLogger("edgefleet.agent.localui")
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
COOKIE = "edgefleet_technician"


def _when(at: float | None) -> str:
    return "" if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def create_local_app(agent: Agent, token: str) -> FastAPI:
    app = FastAPI(title="edgefleet technician", docs_url=None, redoc_url=None, openapi_url=None)

    def signed_in(request: Request) -> bool:
        return hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), token.encode())

    @app.get("/login")
    async def login_form(request: Request) -> HTMLResponse:
        return templates.TemplateResponse(request, "technician_login.html", {"error": None})

    @app.post("/login")
    async def login(request: Request, credential: Annotated[str, Form(max_length=500)]) -> Response:
        if not hmac.compare_digest(credential.strip().encode(), token.encode()):
            log.warning("technician login refused from %s", request.client.host if request.client else "?")
            return templates.TemplateResponse(request, "technician_login.html",
                                              {"error": "That credential is not valid."}, status_code=401)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, credential.strip(), httponly=True, samesite="strict")
        return response

    @app.get("/")
    async def page(request: Request) -> Response:
        if not signed_in(request):
            return RedirectResponse("/login", status_code=303)
        view = await asyncio.to_thread(agent.local_view)
        return templates.TemplateResponse(request, "technician.html", {"v": view, "when": _when})

    @app.get("/status.json")
    async def status(request: Request) -> Response:
        if not signed_in(request):
            return JSONResponse({"error": "sign in first"}, status_code=401)
        return JSONResponse(await asyncio.to_thread(agent.local_view))

    return app


def parse_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"local_ui must be host:port, not {listen!r}")
    return host.strip("[]"), int(port)


async def serve_local_ui(agent: Agent, listen: str, token_file: Path | None, stop: asyncio.Event) -> None:
    """Serve until ``stop``. A missing or empty credential keeps the page off (logged)."""
    try:
        token = (await asyncio.to_thread(token_file.read_text)).strip() if token_file is not None else ""
    except OSError as exc:
        token = ""
        log.error("technician page off: cannot read %s: %s", token_file, exc)
    if len(token) < 8:
        log.error("technician page off: local_ui_token_file must hold a credential of 8 characters or more")
        return
    host, port = parse_listen(listen)
    server = uvicorn.Server(uvicorn.Config(create_local_app(agent, token), host=host, port=port, lifespan="off",
                                           log_config=None, access_log=False, server_header=False))
    task = asyncio.create_task(server.serve(), name="technician-page")
    log.info("technician page on http://%s:%d", host, port)
    with contextlib.suppress(asyncio.CancelledError):
        await stop.wait()
    server.should_exit = True
    await task

