"""Liveness, readiness and Prometheus metrics (unauthenticated, as scrapers expect)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import JSONResponse

from edgefleet.errors import StoreError
from edgefleet.server.state import server_state
from edgefleet.store.devices import count_devices

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> Response:
    """The process is alive."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> Response:
    """Migrations applied and the database answers."""
    state = server_state(request)
    if not state.ready:
        return JSONResponse({"status": "starting"}, status_code=503)
    try:
        await state.db.ping()
    except StoreError as exc:
        return JSONResponse({"status": "database unavailable", "reason": exc.code}, status_code=503)
    return JSONResponse({"status": "ready", "database": state.db.backend})


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text exposition format"}})
async def metrics(request: Request) -> Response:
    """Prometheus text exposition."""
    state = server_state(request)
    try:
        async with state.db.transaction() as conn:
            state.metrics.devices.set(await count_devices(conn))
    except StoreError:
        pass  # the gauge keeps its last value; readyz reports the outage
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
