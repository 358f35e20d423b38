"""How errors are shown over HTTP: one registry from error class to status, one body shape.

Authentication failures show the caller a generic message; the log carries the reason.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from edgefleet.errors import EdgefleetError, RateLimited
from edgefleet.server.state import ServerState, server_state
from edgefleet.web.errors import PUBLIC_MESSAGE, error_response, status_for

log = logging.getLogger("edgefleet.server")
ADMIN_PATHS = ("/api/v1/admin/", "/ui/")

class OverloadLog:
    """One log line per kind of 503 per ``window`` seconds, then how many were left out: an
    overloaded server that logs every refusal spends its last CPU on logging. The metric
    counts every one."""

    def __init__(self, window: float = 5.0, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.window = window
        self.monotonic = monotonic
        self._last: dict[str, float] = {}
        self._quiet: dict[str, int] = {}

    def should_log(self, code: str) -> tuple[bool, int]:
        """(log this one?, how many like it were left out since the last line)."""
        now = self.monotonic()
        if now - self._last.get(code, -self.window) < self.window:
            self._quiet[code] = self._quiet.get(code, 0) + 1
            return False, 0
        self._last[code] = now
        return True, self._quiet.pop(code, 0)


def refusal(state: ServerState, method: str, path: str, exc: EdgefleetError, overload: OverloadLog) -> JSONResponse:
    """The answer to a request refused with ``exc``: counted, logged (429s and 503s
    sparingly), and shown with a generic message where the reason would help an attacker."""
    status = status_for(exc)
    state.metrics.refusals.labels(exc.code).inc()
    # 404s are routine (TUF clients probe for root N+1); refusals are worth a warning.
    level = logging.ERROR if status >= 500 else logging.INFO if status == 404 else logging.WARNING
    shown, left_out = overload.should_log(exc.code) if status in (429, 503) else (True, 0)
    if shown:
        more = f" ({left_out} more like it in the last {overload.window:g} s)" if left_out else ""
        log.log(level, "refused %s %s -> %d %s: %s%s", method, path, status, exc.code, exc.message, more)
    bearer = status == 401 and path.startswith("/api/v1/admin")
    headers = {"www-authenticate": "Bearer"} if bearer else None
    if isinstance(exc, RateLimited):
        headers = {"retry-after": str(max(1, math.ceil(exc.retry_after)))}
    if status == 401 and not bearer:
        # A device certificate refused (superseded by a renewal, revoked): this connection
        # goes on presenting it, so end it; the client's next one presents what it holds now.
        headers = {"connection": "close"}
    # An operator refused by the admin API (its role, its scope, a device's attestation
    # before a remote session) authenticated already: the reason helps it, not an attacker.
    public = exc.message if status == 403 and path.startswith(ADMIN_PATHS) else PUBLIC_MESSAGE.get(status,
                                                                                                   exc.message)
    return error_response(status, exc.code, public, headers=headers)


def invalid(state: ServerState, method: str, path: str, errors: Sequence[Mapping[str, Any]]) -> JSONResponse:
    """The answer to a request that failed validation (pydantic's ``errors()``)."""
    # Keep location, message and type; never echo the (possibly huge) input back.
    details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
               for e in errors[:20]]
    state.metrics.refusals.labels("invalid_request").inc()
    log.warning("refused %s %s -> 422 invalid_request: %s", method, path,
                "; ".join(f"{'.'.join(map(str, d['loc']))}: {d['msg']}" for d in details))
    return error_response(422, "invalid_request", "request failed validation", details)


# A refusal as a page, for the requests that get one (the dashboard's pages); None: JSON.
PageFor = Callable[[Request, int, str], Response | None]


def install_error_handlers(app: FastAPI, overload: OverloadLog, page_for: PageFor = lambda *_: None) -> None:

    def shown(request: Request, answer: JSONResponse) -> Response:
        """``answer``, or the same refusal as a page when ``page_for`` makes one."""
        message = json.loads(bytes(answer.body))["error"]["message"]
        return page_for(request, answer.status_code, message) or answer

    async def on_edgefleet_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, EdgefleetError)
        return shown(request, refusal(server_state(request), request.method, request.url.path, exc, overload))

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return shown(request, invalid(server_state(request), request.method, request.url.path, exc.errors()))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 400:  # FastAPI's "error parsing the body": bad input, as every other
            return invalid(server_state(request), request.method, request.url.path,
                           [{"loc": ("body",), "msg": str(exc.detail), "type": "body_unparseable"}])
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return shown(request, error_response(exc.status_code, code, str(exc.detail), headers=exc.headers))

    app.add_exception_handler(EdgefleetError, on_edgefleet_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
