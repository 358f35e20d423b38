"""Build the control plane's ASGI app."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from edgefleet import __version__
from edgefleet.clock import Clock, ScaledClock, SystemClock
from edgefleet.errors import EdgefleetError, StoreError
from edgefleet.server.alerts import Alerts
from edgefleet.server.attestation import AttestationService
from edgefleet.server.audit import AuditLog, AuditTrail
from edgefleet.server.dashboard import routes as dashboard
from edgefleet.server.dashboard import terminal
from edgefleet.server.devicecache import ChangeFeed, DeviceCache
from edgefleet.server.director import DirectorService
from edgefleet.server.errors import OverloadLog, install_error_handlers
from edgefleet.server.fastpath import DeviceFastPath
from edgefleet.server.gitops import GitOpsService, restore_self_heal
from edgefleet.server.longpoll import LongPolls
from edgefleet.server.metrics import Metrics
from edgefleet.server.middleware import RequestMetrics
from edgefleet.server.nonces import ensure_secret_key
from edgefleet.server.oidc import OidcSignIn
from edgefleet.server.presence import Presence
from edgefleet.server.ratelimit import DeviceRateLimiter
from edgefleet.server.repository import RepositoryService
from edgefleet.server.revocations import RevocationPublisher
from edgefleet.server.rollouts import RolloutController
from edgefleet.server.rolloutviews import RolloutViews
from edgefleet.server.routes import (
    admin,
    attestation,
    audit,
    device,
    gitops,
    health,
    repository,
    revocations,
    rollouts,
    sessions,
    signin,
    telemetry,
    tokens,
    vulns,
)
from edgefleet.server.settings import ServerSettings
from edgefleet.server.state import ServerState
from edgefleet.server.workload import WorkloadIssuer
from edgefleet.store import Database
from edgefleet.web.bodylimit import BodyLimit
from edgefleet.web.errors import ERROR_RESPONSES

log = logging.getLogger("edgefleet.server")
NONCE_PRUNE_SECONDS = 60.0


async def _refresh_timestamps(state: ServerState, interval: float) -> None:
    """Keep the image repository's timestamp fresh so devices never see it expire."""
    while True:
        try:
            if await asyncio.to_thread(state.repository.refresh_if_expiring):
                log.info("re-signed image repository snapshot and timestamp before expiry")
        except EdgefleetError as exc:
            log.error("cannot re-sign the image repository timestamp: %s", exc)
        await asyncio.sleep(interval)


def _streams_large_bodies(path: str) -> bool:
    """Routes that read their (larger) bodies with their own bounds."""
    return (path.startswith("/api/v1/admin/repository/") or path.endswith("/attestation/quote")
            or path.startswith("/api/v1/admin/vulnerabilities/"))


def _telemetry_options() -> dict[str, Any]:
    """FastAPI's native OpenTelemetry (0.165 and later) asks the global providers on every
    request, a few percent of a check-in's cost. Where nothing configures OpenTelemetry (no
    ``OTEL_*`` variable in the environment) it is switched off; set one to keep it."""
    if "telemetry" not in inspect.signature(FastAPI.__init__).parameters:
        return {}
    if any(name.startswith("OTEL_") or name == "FASTAPI_OTEL_AUTO_CONFIGURE" for name in os.environ):
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


async def _to_login(request: Request, exc: Exception) -> Response:
    return RedirectResponse("/ui/login", status_code=303)


def create_app(settings: ServerSettings, *, clock: Clock | None = None) -> FastAPI:
    """The FastAPI app. Migrations run in its lifespan, before the first request.

    Raises:
        ConfigError: no fleet CA in the data dir, or an unusable database URL.
    """
    metrics = Metrics()
    if clock is None:
        clock = (ScaledClock(settings.clock_speed, settings.clock_epoch) if settings.clock_speed > 1
                 else SystemClock())
    db = Database(settings.effective_database_url)
    long_polls = LongPolls(settings.max_long_polls, metrics)
    devices = DeviceCache(settings.device_cache_seconds, settings.device_cache_entries, clock.monotonic)
    repository_service = RepositoryService(settings.data_dir, clock, settings.max_artifact_bytes)
    alerts = Alerts(settings, db, clock, metrics)
    presence = Presence()
    director = DirectorService(db, repository_service, clock, devices, long_polls)
    controller = RolloutController(db, clock, director, alerts, presence, metrics, settings.rollout_tick_seconds,
                                   settings.attestation_required)
    audit_log = AuditLog(db, clock, ensure_secret_key(settings.data_dir / "keys" / "audit.key"))
    ca = settings.pki.load_ca()
    state = ServerState(
        settings=settings,
        db=db,
        ca=ca,
        clock=clock,
        metrics=metrics,
        presence=presence,
        long_polls=long_polls,
        devices=devices,
        changes=ChangeFeed(db, devices, long_polls, clock),
        repository=repository_service,
        director=director,
        attestation=AttestationService(settings, db, clock, repository_service, devices, metrics, audit_log),
        workload=WorkloadIssuer(settings.data_dir / "keys", settings.trust_domain,
                                timedelta(seconds=settings.workload_token_seconds)),
        alerts=alerts,
        audit=audit_log,
        revocations=RevocationPublisher(db, ca, clock),
        gitops=GitOpsService(settings, db, clock, metrics, alerts, repository_service, director, controller),
        rollouts=controller,
        rollout_views=RolloutViews(db, controller.decoded),
        rate_limits=DeviceRateLimiter(settings.device_rate_per_second, settings.device_rate_burst,
                                      monotonic=clock.monotonic),
        oidc=None if settings.oidc is None else OidcSignIn(settings.oidc),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.db.migrate()
        await state.changes.start()
        state.repository.prepare()
        state.ready = True
        background = [
            asyncio.create_task(state.presence.run(state.db, settings.presence_flush_seconds)),
            asyncio.create_task(state.changes.run(settings.device_cache_sync_seconds)),
            asyncio.create_task(_refresh_timestamps(state, settings.timestamp_check_seconds)),
            asyncio.create_task(state.alerts.run()),
            asyncio.create_task(state.rollouts.run()),
            asyncio.create_task(state.attestation.prune_nonces(NONCE_PRUNE_SECONDS)),
            asyncio.create_task(state.vulns.watch_exploited(settings.exploited_check_seconds)),
        ]
        if settings.gitops:
            await restore_self_heal(state.gitops)
            background.append(asyncio.create_task(state.gitops.run()))
        log.info("control plane ready on %s", state.db.backend)
        if settings.ek_trust == "tofu":
            log.warning("ek_trust = tofu: the first endorsement key each device presents is trusted, software TPMs "
                        "included (labs and demos only; production: approval or vendor)")
        try:
            yield
        finally:
            # uvicorn has stopped accepting and finished in-flight requests: persist what
            # is still in memory, then close the database.
            state.ready = False
            state.long_polls.close()
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            try:
                await state.presence.flush(state.db)
            except StoreError as exc:
                log.error("could not persist last-seen times at shutdown: %s", exc)
            await state.rollouts.leadership.release()
            await state.db.close()
            log.info("control plane stopped")

    app = FastAPI(
        title="edgefleet control plane",
        version=__version__,
        lifespan=lifespan,
        description="Device API (mTLS) and admin API (bearer tokens) of an edgefleet control plane.",
        responses=ERROR_RESPONSES,
        **_telemetry_options(),
    )
    app.state.edgefleet = state
    app.include_router(health.router)
    app.include_router(device.router)
    app.include_router(admin.router)
    app.include_router(audit.router)
    app.include_router(tokens.router)
    app.include_router(repository.router)
    app.include_router(revocations.router)
    app.include_router(attestation.router)
    app.include_router(gitops.router)
    app.include_router(rollouts.router)
    app.include_router(telemetry.router)
    app.include_router(signin.router)
    app.include_router(vulns.router)
    app.include_router(sessions.router)
    app.include_router(terminal.router)  # before the dashboard's /devices/{id}/{verb}
    app.include_router(dashboard.router)
    app.mount("/ui/static", StaticFiles(directory=Path(dashboard.__file__).parent / "static"), name="ui-static")
    app.add_exception_handler(dashboard.LoginRequired, _to_login)
    # The image repository as static files (Range requests supported, for resumable
    # downloads). Only verified metadata and targets live here; uploads wait in blobs/.
    # Pieces are checked against their content ids when uploaded (and again by devices).
    for part in ("metadata", "targets", "pieces"):
        directory = settings.data_dir / "repository" / part
        directory.mkdir(parents=True, exist_ok=True)
        app.mount(f"/repository/{part}", StaticFiles(directory=directory), name=f"repository-{part}")
    overload = OverloadLog()
    install_error_handlers(app, overload, dashboard.error_page)
    app.add_middleware(AuditTrail, audit=state.audit)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(DeviceFastPath, overload=overload)  # a device update's requests, past FastAPI's stack
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes, exempt=_streams_large_bodies)
    return app
