"""A page on the local network behind one credential from the local configuration: the
agent's technician page and the hub's page for its sites. The login form checks the
credential in constant time and keeps it in an HttpOnly, SameSite=Strict cookie; the page
and ``status.json`` show what ``view`` returns, read fresh on every request. Works when
mounted under a prefix (the hub serves it at ``/site``)."""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

log = logging.getLogger("edgefleet.localpage")
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
COOKIE = "edgefleet_local"
MIN_CREDENTIAL = 8


def _when(at: float | None) -> str:
    return "" if at is None else datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def create_local_app(view: Callable[[], dict[str, Any]], token: str, template: str, title: str) -> FastAPI:
    """Raises ValueError for a credential shorter than MIN_CREDENTIAL characters."""
    if len(token) < MIN_CREDENTIAL:
        raise ValueError(f"a local page's credential must have {MIN_CREDENTIAL} characters or more")
    app = FastAPI(title=title, docs_url=None, redoc_url=None, openapi_url=None)

    def base(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def signed_in(request: Request) -> bool:
        return hmac.compare_digest(request.cookies.get(COOKIE, "").encode(), token.encode())

    def login_page(request: Request, error: str | None, status: int = 200) -> HTMLResponse:
        return templates.TemplateResponse(request, "login.html", {"error": error, "title": title,
                                                                   "base": base(request)}, status_code=status)

    @app.get("/login")
    async def login_form(request: Request) -> HTMLResponse:
        return login_page(request, None)

    @app.post("/login")
    async def login(request: Request, credential: Annotated[str, Form(max_length=500)]) -> Response:
        if not hmac.compare_digest(credential.strip().encode(), token.encode()):
            log.warning("local page login refused from %s", request.client.host if request.client else "?")
            return login_page(request, "That credential is not valid.", 401)
        response = RedirectResponse(f"{base(request)}/", status_code=303)
        response.set_cookie(COOKIE, credential.strip(), httponly=True, samesite="strict", path=base(request) or "/")
        return response

    @app.get("/")
    async def page(request: Request) -> Response:
        if not signed_in(request):
            return RedirectResponse(f"{base(request)}/login", status_code=303)
        return templates.TemplateResponse(request, template, {"v": await asyncio.to_thread(view), "when": _when,
                                                               "title": title})

    @app.get("/status.json")
    async def status(request: Request) -> Response:
        if not signed_in(request):
            return JSONResponse({"error": "sign in first"}, status_code=401)
        return JSONResponse(await asyncio.to_thread(view))

    return app


def read_credential(path: Path | None) -> str | None:
    """The credential in ``path``; None (logged) when missing, unreadable or too short."""
    if path is None:
        return None
    try:
        token = path.read_text().strip()
    except OSError as exc:
        log.error("local page off: cannot read %s: %s", path, exc)
        return None
    if len(token) < MIN_CREDENTIAL:
        log.error("local page off: %s must hold a credential of %d characters or more", path, MIN_CREDENTIAL)
        return None
    return token
