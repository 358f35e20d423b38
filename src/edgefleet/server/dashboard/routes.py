"""The fleet dashboard's pages under ``/ui``.

Login takes an admin token and keeps it in an HttpOnly, SameSite=Strict, Secure cookie;
every page checks it as the API checks a bearer token, and the token's role decides
which buttons a page shows (and the verbs re-check it). Operator verbs are plain HTML
form POSTs to the same services the API uses, so they work without JavaScript; a small
script refreshes the pages that change (``data-refresh``)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from edgefleet.credentials import Role
from edgefleet.errors import EdgefleetError, Forbidden, NotFound, Unauthenticated
from edgefleet.server.auth import AdminPrincipal, admin_principal
from edgefleet.server.dashboard.charts import progress, progress_svg
from edgefleet.server.state import server_state
from edgefleet.server.views import device_list, device_view
from edgefleet.store.attestation import status as attestation_status
from edgefleet.store.devices import get_device
from edgefleet.store.gitops import commit_log, drift_of, list_alerts
from edgefleet.store.overview import fleet_counts, recent_telemetry
from edgefleet.store.rollouts import rollout_events
from edgefleet.store.updates import update_history

log = logging.getLogger("edgefleet.server.dashboard")
router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=FilePath(__file__).parent / "templates")
COOKIE = "edgefleet_session"
PAGE = 100


class LoginRequired(Exception):
    """No or no longer valid session: the page sends the browser to the login form."""


async def _who(request: Request) -> AdminPrincipal:
    token = request.cookies.get(COOKIE)
    if not token:
        raise LoginRequired
    try:
        return await admin_principal(server_state(request), token)
    except Unauthenticated as exc:
        log.info("dashboard session refused: %s", exc.message)
        raise LoginRequired from exc


def _page(request: Request, name: str, who: AdminPrincipal, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"who": who, "operator": who.role.allows(Role.OPERATOR),
                                                      **context})


@router.get("/login")
async def login_form(request: Request, error: str | None = None) -> HTMLResponse:
    return templates.TemplateResponse(request, "login.html", {"error": error, "who": None})


@router.post("/login")
async def login(request: Request, token: Annotated[str, Form(max_length=200)]) -> Response:
    try:
        who = await admin_principal(server_state(request), token)
    except EdgefleetError as exc:
        log.warning("dashboard login refused: %s", exc.message)
        return templates.TemplateResponse(request, "login.html", {"error": "That token is not valid.", "who": None},
                                          status_code=401)
    log.info("dashboard login: %s (%s)", who.name, who.role)
    response = RedirectResponse("/ui/", status_code=303)
    response.set_cookie(COOKIE, token.strip(), httponly=True, secure=True, samesite="strict", path="/ui")
    return response


@router.post("/logout")
async def logout() -> Response:
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(COOKIE, path="/ui")
    return response


@router.get("/")
async def overview(request: Request) -> HTMLResponse:
    who = await _who(request)
    state = server_state(request)
    async with state.db.transaction() as conn:
        counts = await fleet_counts(conn)
        alerts = await list_alerts(conn, 10)
    rollouts = [r for r in await state.rollout_views.all() if r.status not in ("completed", "aborted")][:10]
    return _page(request, "overview.html", who, counts=counts, alerts=alerts, rollouts=rollouts)


@router.get("/devices")
async def devices(request: Request, site: Annotated[str | None, Query(max_length=64)] = None,
                  page: Annotated[int, Query(ge=0, le=100_000)] = 0) -> HTMLResponse:
    who = await _who(request)
    state = server_state(request)
    site = site or None
    async with state.db.transaction() as conn:
        listed = await device_list(conn, state.presence, site=site, limit=PAGE, offset=page * PAGE,
                                   fresh=state.freshness())
    return _page(request, "devices.html", who, devices=listed.devices, total=listed.total, site=site, page=page,
                 pages=max(1, -(-listed.total // PAGE)))


@router.get("/devices/{device_id}")
async def device(request: Request, device_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
                 ) -> HTMLResponse:
    who = await _who(request)
    state = server_state(request)
    async with state.db.transaction() as conn:
        row = await get_device(conn, device_id)
        if row is None:
            raise NotFound(f"device {device_id} not found")
        attested = await attestation_status(conn, device_id)
        history = await update_history(conn, device_id, 30)
        drift = await drift_of(conn, device_id)
        telemetry = await recent_telemetry(conn, device_id, 30)
    view = device_view(row, state.presence, attested, state.freshness())
    status = row.status or {}
    return _page(request, "device.html", who, device=view, history=history, drift=drift,
                 telemetry=[(r, _short(r.body)) for r in telemetry], workloads=status.get("workloads") or {},
                 health_checks=(view.update or {}).get("health_checks") or [])


def _short(body: str) -> str:
    try:
        value = json.loads(body)
    except ValueError:
        return body[:300]
    if isinstance(value, dict) and "message" in value:
        return f"[{value.get('level', '')}] {value.get('source', '')}: {value['message']}"[:300]
    return json.dumps(value, separators=(", ", ": "))[:300]


@router.get("/releases")
async def releases(request: Request) -> HTMLResponse:
    who = await _who(request)
    state = server_state(request)
    version, rows = await asyncio.to_thread(state.repository.releases)
    async with state.db.transaction() as conn:
        running = (await fleet_counts(conn)).by_release
    return _page(request, "releases.html", who, targets_version=version, releases=release_rows(rows),
                 running=running)


def release_rows(targets: list[dict[str, object]]) -> list[dict[str, object]]:
    """One row per release (its OS image), with what belongs to it folded in: the content
    index and known-base deltas (their sizes) and the artifacts, instead of a row each."""
    artifacts: dict[object, list[object]] = {}
    for target in targets:
        if target.get("kind") == "artifact":
            artifacts.setdefault(target.get("release"), []).append(str(target["path"]).rsplit("/", 1)[-1])
    return [{**target, "artifacts": artifacts.get(target.get("version"), [])} for target in targets
            if target.get("kind") == "os-image"]


@router.get("/events")
async def events(request: Request) -> HTMLResponse:
    who = await _who(request)
    async with server_state(request).db.transaction() as conn:
        alerts = await list_alerts(conn, 100)
        trail = await rollout_events(conn, None, 100)
        commits = await commit_log(conn, 20)
    return _page(request, "events.html", who, alerts=alerts, trail=trail, commits=commits)


@router.get("/rollouts")
async def rollouts(request: Request) -> HTMLResponse:
    who = await _who(request)
    return _page(request, "rollouts.html", who, rollouts=await server_state(request).rollout_views.all())


@router.get("/rollouts/{rollout_id}")
async def rollout(request: Request, rollout_id: Annotated[str, Path(pattern=r"^ro-[0-9a-f]{12}$")]) -> HTMLResponse:
    who = await _who(request)
    state = server_state(request)
    view = await state.rollout_views.get(rollout_id)
    async with state.db.transaction() as conn:
        events = await rollout_events(conn, rollout_id, 5000)
    points, marks = progress([(e.at, e.kind, e.reason) for e in events])
    total = sum(sum(w.counts.values()) for w in view.waves)
    return _page(request, "rollout.html", who, rollout=view, events=events[:50],
                 chart=progress_svg(points, marks, total), total=total)


@router.post("/rollouts/{rollout_id}/{verb}")
async def operate(request: Request, rollout_id: Annotated[str, Path(pattern=r"^ro-[0-9a-f]{12}$")],
                  verb: Literal["approve", "pause", "resume", "abort", "abort-revert"]) -> Response:
    who = await _who(request)
    if not who.role.allows(Role.OPERATOR):
        raise Forbidden(f"{who.name} has role {who.role}: viewers cannot {verb}", code="insufficient_role")
    if verb.startswith("abort"):
        await server_state(request).rollouts.operate(rollout_id, "abort", who.name, revert=verb == "abort-revert")
    else:
        await server_state(request).rollouts.operate(rollout_id, verb, who.name)
    log.info("%s (dashboard): %s rollout %s", who.name, verb, rollout_id)
    return RedirectResponse(f"/ui/rollouts/{rollout_id}", status_code=303)
