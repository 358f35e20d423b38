"""The requests of a device update, dispatched straight to their endpoints.

A device that updates makes about ten requests (check-in, its director metadata, status
reports, a nonce and a quote, a workload token). Through FastAPI each one crosses its
middleware stack, a linear match against every route and the dependency solver: measured
here, 0.10 ms of the 0.12 ms a bare ``GET /healthz`` costs the server, more for a route
with dependencies, against 0.02 ms for uvicorn and TLS. This ASGI layer recognises those
requests by path and calls the very endpoint functions FastAPI would, with the same
authentication, validation (the same pydantic models), error answers, logs and metrics;
it sits inside ``BodyLimit``, which bounds their bodies as it does every other's.
Anything else, and any device request that does not arrive with its client certificate
on this TLS connection (a trusted proxy's header), goes through FastAPI.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, StringConstraints, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from edgefleet.errors import EdgefleetError
from edgefleet.protocol.v1 import DirectorBundleQuery, StatusReport, WorkloadTokenQuery
from edgefleet.server.auth import AuthenticatedDevice, authenticate_device
from edgefleet.server.errors import OverloadLog, invalid, refusal
from edgefleet.server.routes import attestation, device
from edgefleet.server.state import server_state

_PATH = re.compile(r"^/api/v1/devices/([A-Za-z0-9._-]{1,64})/"
                   r"(desired|status|director|director/[^/]+|attestation/nonce|attestation/quote|workload-token)$")
_DIRECTOR_FILE = TypeAdapter(Annotated[str, StringConstraints(pattern=device.DIRECTOR_FILE)])
_PREFIX = "/api/v1/devices/{device_id}/"

Call = Callable[[AuthenticatedDevice, Request, str], Awaitable[Any]]
Q = TypeVar("Q", bound=BaseModel)


class Invalid(Exception):
    """A request part failed validation; ``errors`` as pydantic reports them, located."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__("invalid request")
        self.errors = errors


def _located(exc: ValidationError, *where: str) -> Invalid:
    return Invalid([{**e, "loc": (*where, *e["loc"])} for e in exc.errors(include_url=False)])


def _query(request: Request) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(request.scope["query_string"].decode("latin-1")))


def _query_as(model: type[Q], request: Request) -> Q:
    """The request's query as ``model``; raises Invalid."""
    try:
        return model.model_validate(_query(request))
    except ValidationError as exc:
        raise _located(exc, "query") from exc


async def _check_in(dev: AuthenticatedDevice, request: Request, _: str) -> Any:
    return await device.check_in(dev, request, _query_as(device.CheckIn, request))


async def _workload_token(dev: AuthenticatedDevice, request: Request, _: str) -> Any:
    return await attestation.workload_token(dev, request, _query_as(WorkloadTokenQuery, request))


async def _status(dev: AuthenticatedDevice, request: Request, _: str) -> Any:
    body = await request.body()  # bounded by BodyLimit, outside this layer
    try:
        report = StatusReport.model_validate_json(body)
    except ValidationError as exc:
        raise _located(exc, "body") from exc
    return await device.report_status(dev, report, request)


async def _director_bundle(dev: AuthenticatedDevice, request: Request, _: str) -> Any:
    return await device.director_bundle(dev, request, _query_as(DirectorBundleQuery, request))


async def _director(dev: AuthenticatedDevice, request: Request, tail: str) -> Any:
    try:
        name = _DIRECTOR_FILE.validate_python(tail.removeprefix("director/"))
    except ValidationError as exc:
        raise _located(exc, "path", "name") from exc
    return await device.director_file(dev, name, request)


@dataclass(frozen=True)
class _Route:
    method: str
    template: str  # as FastAPI names it, for the request metrics
    call: Call


def _route(method: str, tail: str, call: Call) -> _Route:
    return _Route(method, _PREFIX + tail, call)


_ROUTES = {
    "desired": _route("GET", "desired", _check_in),
    "status": _route("POST", "status", _status),
    "director": _route("GET", "director", _director_bundle),
    "director/": _route("GET", "director/{name}", _director),
    "attestation/nonce": _route("POST", "attestation/nonce", lambda d, r, _: attestation.nonce(d, r)),
    "attestation/quote": _route("POST", "attestation/quote", lambda d, r, _: attestation.quote(d, r)),
    "workload-token": _route("GET", "workload-token", _workload_token),
}


def _has_client_certificate(scope: Scope) -> bool:
    tls = scope.get("extensions", {}).get("tls")
    return bool(tls and tls.get("client_cert_chain"))


def _response(answer: Response | BaseModel) -> Response:
    """What an endpoint returned, as FastAPI sends it (a model as its JSON)."""
    return answer if isinstance(answer, Response) else JSONResponse(answer.model_dump(mode="json"))


class DeviceFastPath:
    """ASGI middleware: a device update's requests go straight to their endpoints."""

    def __init__(self, app: ASGIApp, overload: OverloadLog) -> None:
        self.app = app
        self.overload = overload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = _PATH.match(scope["path"]) if scope["type"] == "http" else None
        tail = "" if found is None else found.group(2)
        route = _ROUTES.get("director/" if tail.startswith("director/") else tail)
        if found is None or route is None or route.method != scope["method"] or not _has_client_certificate(scope):
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500
        request = Request(scope, receive)
        state = server_state(request)
        try:
            try:
                dev = await authenticate_device(request, found.group(1))
                response = _response(await route.call(dev, request, tail))
            except EdgefleetError as exc:
                response = refusal(state, scope["method"], scope["path"], exc, self.overload)
            except Invalid as exc:
                response = invalid(state, scope["method"], scope["path"], exc.errors)
            status = response.status_code
            await response(scope, receive, send)
        finally:
            state.metrics.request(scope["method"], route.template, status, time.perf_counter() - started)
