"""How an edgefleet HTTP service shows an error: one registry from error class to status,
one body shape (``{"error": {"code", "message", "details"?}}``), for the control plane and
the hub alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

from edgefleet.errors import (
    Conflict,
    EdgefleetError,
    Forbidden,
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    StoreError,
    Unauthenticated,
)
from edgefleet.protocol.v1 import ErrorBody

STATUS: list[tuple[type[EdgefleetError], int]] = [
    (InvalidRequest, 422),
    (PayloadTooLarge, 413),
    (Unauthenticated, 401),
    (Forbidden, 403),
    (NotFound, 404),
    (Conflict, 409),
    (RateLimited, 429),
    (StoreError, 503),
]

PUBLIC_MESSAGE = {401: "authentication failed", 403: "forbidden"}

# Every refusal a route may answer, as the OpenAPI document declares it (one body shape).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description} for status, description in (
        (401, "no or bad credentials"), (403, "credentials that do not allow this"), (404, "not found"),
        (409, "conflicts with the current state"), (413, "body too large"), (422, "invalid request"),
        (429, "rate limited"), (503, "overloaded or the store is unavailable"))
}


def status_for(exc: EdgefleetError) -> int:
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def error_response(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
                   headers: Mapping[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse({"error": body}, status_code=status, headers=headers)
