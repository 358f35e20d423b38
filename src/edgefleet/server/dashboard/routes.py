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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Form, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from pydantic import ValidationError

from edgefleet.credentials import Role
from edgefleet.errors import EdgefleetError, Unauthenticated
from edgefleet.protocol.base import ADVISORY_NAME
from edgefleet.protocol.typed_text import parse_pairs, parse_wave
from edgefleet.protocol.v1 import RolloutPreview, RolloutRequest
from edgefleet.server.auth import AdminPrincipal, admin_principal, allowed
from edgefleet.server.dashboard.charts import progress, progress_svg
from edgefleet.server.lifecycle import decommission, revoke
from edgefleet.server.oidc import Pending
from edgefleet.server.routes.signin import provider, record_sign_in
from edgefleet.server.scoping import (
    check_device,
    check_rollout,
    check_selector,
    covers,
    sees_device,
    visible_device,
    visible_rollout,
)
from edgefleet.server.state import server_state
from edgefleet.server.views import approval_view, device_filter, device_list, device_view
from edgefleet.store.approvals import approvals as approval_rows
from edgefleet.store.attestation import status as attestation_status
from edgefleet.store.gitops import commit_log, drift_of, list_alerts
from edgefleet.store.overview import fleet_counts, recent_telemetry
from edgefleet.store.revocations import revocation_of
from edgefleet.store.rollouts import rollout_events
from edgefleet.store.updates import update_history
from edgefleet.ui import ago
from edgefleet.vuln.report import render_html
from edgefleet.web.errors import status_for

log = logging.getLogger("edgefleet.server.dashboard")
router = APIRouter(prefix="/ui", include_in_schema=False)
templates = Jinja2Templates(directory=FilePath(__file__).parent / "templates")


def when(moment: datetime | None) -> Markup:
    """A time as people read it ("3 min ago"), the exact time (UTC) on hover."""
    if moment is None:
        return Markup("never")
    exact = moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return Markup('<time datetime="{}" title="{}">{}</time>').format(moment.isoformat(), exact, ago(moment))


templates.env.filters["when"] = when
COOKIE = "edgefleet_session"
OIDC_COOKIE = "edgefleet_oidc"
PAGE = 100


def error_page(request: Request, status: int, message: str) -> Response | None:
    """A dashboard page's refusal (an unknown device, a bad filter) as a page with the
    reason and the way back; None for the API and the verbs, which keep their JSON."""
    if not request.url.path.startswith("/ui/") or request.method != "GET":
        return None
    return templates.TemplateResponse(request, "error.html", {"who": None, "status": status, "message": message},
                                      status_code=status)


class LoginRequired(Exception):
    """No or no longer valid session: the page sends the browser to the login form."""


async def signed_in(request: Request) -> AdminPrincipal:
    token = request.cookies.get(COOKIE)
    if not token:
        raise LoginRequired
    try:
        principal = await admin_principal(server_state(request), token)
    except Unauthenticated as exc:
        log.info("dashboard session refused: %s", exc.message)
        raise LoginRequired from exc
    request.state.principal = principal  # the audit trail's actor
    return principal


def render(request: Request, name: str, who: AdminPrincipal, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"who": who, "operator": who.role.allows(Role.OPERATOR),
                                                      "admin": who.role.allows(Role.ADMIN), **context})


@router.get("/login")
async def login_form(request: Request, error: str | None = None) -> HTMLResponse:
    return _login_page(request, error)


def _login_page(request: Request, error: str | None, status: int = 200) -> HTMLResponse:
    oidc = server_state(request).oidc
    return templates.TemplateResponse(request, "login.html", {
        "error": error, "who": None, "oidc": None if oidc is None else oidc.settings.issuer}, status_code=status)


@router.get("/oidc/start")
async def oidc_start(request: Request) -> Response:
    """Off to the OpenID Connect provider; the browser keeps what it must bring back."""
    oidc = provider(server_state(request))
    url, pending = await oidc.start(str(request.url_for("oidc_callback")))
    response = RedirectResponse(url, status_code=303)
    # Lax: the provider sends the browser back with a top-level GET from its own site.
    response.set_cookie(OIDC_COOKIE, pending.encode(), max_age=600, httponly=True, secure=True, samesite="lax",
                        path="/ui/oidc")
    return response


@router.get("/oidc/callback", name="oidc_callback")
async def oidc_callback(request: Request, code: Annotated[str | None, Query(max_length=2048)] = None,
                        state: Annotated[str | None, Query(max_length=256)] = None,
                        error: Annotated[str | None, Query(max_length=256)] = None) -> Response:
    """Back from the provider: redeem the code, verify the ID token, start a session with
    an admin token of the role the operator's groups map to."""
    service = server_state(request)
    oidc = provider(service)
    pending = Pending.decode(request.cookies.get(OIDC_COOKIE, ""))
    if error is not None or code is None or state is None or pending is None:
        why = f"the provider said {error}" if error else "the sign-in expired or was started elsewhere"
        log.warning("dashboard sign-in refused: %s", why)
        return _login_page(request, f"Sign-in failed: {why}. Try again.", status=401)
    try:
        grant = await oidc.finish(pending, state, code, str(request.url_for("oidc_callback")))
    except EdgefleetError as exc:
        log.warning("dashboard sign-in refused: %s", exc.message)
        return _login_page(request, "Sign-in failed: " + ("none of your groups has a role here."
                                                         if exc.code == "oidc_no_role" else "the provider's answer "
                                                         "was not accepted."), status=status_for(exc))
    token, _ = await oidc.mint(service.db, grant, service.clock.now())
    await record_sign_in(service, grant, request, "dashboard")
    # A page, not a redirect: the session cookie is SameSite=Strict, and a redirect would
    # still belong to the navigation the provider's site started.
    response = templates.TemplateResponse(request, "signed_in.html", {"who": None, "name": grant.name})
    response.set_cookie(COOKIE, token, httponly=True, secure=True, samesite="strict", path="/ui")
    response.delete_cookie(OIDC_COOKIE, path="/ui/oidc")
    return response


@router.post("/login")
async def login(request: Request, token: Annotated[str, Form(max_length=200)]) -> Response:
    try:
        who = await admin_principal(server_state(request), token)
    except EdgefleetError as exc:
        log.warning("dashboard login refused: %s", exc.message)
        return _login_page(request, "That token is not valid.", status=401)
    request.state.principal = who  # the audit trail records the sign-in
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
    who = await signed_in(request)
    state = server_state(request)
    async with state.db.transaction() as conn:
        counts = await fleet_counts(conn, who.scope)
        alerts = await list_alerts(conn, 10) if who.scope is None else []  # fleet-wide
    rollouts = [r for r in await state.rollout_views.all()
                if r.status not in ("completed", "aborted") and covers(who, r.selector)][:10]
    return render(request, "overview.html", who, counts=counts, alerts=alerts, rollouts=rollouts)


@router.get("/devices")
async def devices(request: Request, site: Annotated[str | None, Query(max_length=64)] = None,
                  selector: Annotated[str | None, Query(max_length=1000)] = None,
                  q: Annotated[str | None, Query(max_length=64)] = None,
                  page: Annotated[int, Query(ge=0, le=100_000)] = 0) -> HTMLResponse:
    """The devices, filtered by site, labels (``k=v, k2=v2``) and a piece of their id."""
    who = await signed_in(request)
    state = server_state(request)
    only = device_filter(site=site, selector=selector, search=q, scope=who.scope)
    async with state.db.transaction() as conn:
        listed = await device_list(conn, state.presence, only, limit=PAGE, offset=page * PAGE,
                                   fresh=state.freshness())
    return render(request, "devices.html", who, devices=listed.devices, total=listed.total, site=only.site,
                 selector=selector or "", q=q or "", page=page, pages=max(1, -(-listed.total // PAGE)))


@router.get("/devices/{device_id}")
async def device(request: Request, device_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,64}$")]
                 ) -> HTMLResponse:
    who = await signed_in(request)
    state = server_state(request)
    async with state.db.transaction() as conn:
        row = await visible_device(conn, who, device_id)
        attested = await attestation_status(conn, device_id)
        revoked = await revocation_of(conn, row.cert_serial)
        history = await update_history(conn, device_id, 30)
        drift = await drift_of(conn, device_id)
        telemetry = await recent_telemetry(conn, device_id, 30)
    view = device_view(row, state.presence, attested, state.freshness(), revoked)
    status = row.status or {}
    return render(request, "device.html", who, device=view, history=history, drift=drift,
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


@router.get("/approvals")
async def approvals_page(request: Request) -> HTMLResponse:
    who = await signed_in(request)
    async with server_state(request).db.transaction() as conn:
        rows = [row for row in await approval_rows(conn, "pending", 500)
                if who.scope is None or await sees_device(conn, who, row.device_id)]
    return render(request, "approvals.html", who, approvals=[approval_view(row) for row in rows])


@router.post("/approvals/{device_id}/{verb}")
async def decide_approval(request: Request, device_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,64}$")],
                          verb: Literal["approve", "reject"],
                          fingerprint: Annotated[str, Form(pattern=r"^[0-9a-f]{64}$")]) -> Response:
    """An admin decides on the TPM they looked at (the form carries its fingerprint)."""
    who = await _allowed(request, Role.ADMIN, verb)
    await check_device(server_state(request), who, device_id)
    await server_state(request).attestation.decide_approval(device_id, fingerprint, approve=verb == "approve",
                                                            by=who.name)
    return RedirectResponse("/ui/approvals", status_code=303)


@router.get("/releases")
async def releases(request: Request) -> HTMLResponse:
    who = await signed_in(request)
    state = server_state(request)
    version, rows = await asyncio.to_thread(state.repository.releases)
    async with state.db.transaction() as conn:
        running = (await fleet_counts(conn, who.scope)).by_release
    return render(request, "releases.html", who, targets_version=version, releases=release_rows(rows),
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


@router.get("/vulnerabilities")
async def vulnerabilities(request: Request) -> HTMLResponse:
    """Findings over the fleet (the caller's part): counts per severity, every advisory
    that affects a device, each opening its report."""
    who = await signed_in(request)
    found = await server_state(request).vulns.summary(who.scope)
    return render(request, "vulnerabilities.html", who, summary=found)


@router.get("/vulnerabilities/{cve}")
async def vulnerability(request: Request,
                        cve: Annotated[str, Path(pattern=ADVISORY_NAME)]) -> HTMLResponse:
    """One advisory's report (as ``edgefleet vuln report`` writes it) and its devices."""
    who = await signed_in(request)
    found, devices = await server_state(request).vulns.report(cve, who.scope)
    return HTMLResponse(render_html(found, devices[:PAGE * 10], back="/ui/vulnerabilities",
                                    device_link="/ui/devices/"))


@router.get("/events")
async def events(request: Request) -> HTMLResponse:
    who = await signed_in(request)
    allowed(who, Role.VIEWER, scoped=False, what="the fleet's events")
    async with server_state(request).db.transaction() as conn:
        alerts = await list_alerts(conn, 100)
        trail = await rollout_events(conn, None, 100)
        commits = await commit_log(conn, 20)
    return render(request, "events.html", who, alerts=alerts, trail=trail, commits=commits)


@router.get("/rollouts")
async def rollouts(request: Request) -> HTMLResponse:
    who = await signed_in(request)
    return render(request, "rollouts.html", who, rollouts=[
        view for view in await server_state(request).rollout_views.all() if covers(who, view.selector)])


@router.get("/rollouts/new")
async def new_rollout(request: Request) -> HTMLResponse:
    """The form that starts a rollout, with a preview of who each wave takes."""
    who = await _allowed(request, Role.OPERATOR, "starting a rollout")
    return await _new_rollout_page(request, who, NewRollout())


@router.post("/rollouts/new")
async def new_rollout_post(request: Request, release: Annotated[str, Form(max_length=128)],
                           selector: Annotated[str, Form(max_length=1000)] = "",
                           waves: Annotated[str, Form(max_length=500)] = "1, 10%, 100%",
                           failure_threshold: Annotated[str, Form(max_length=16)] = "10%",
                           approval: Annotated[bool, Form()] = False,
                           action: Annotated[Literal["preview", "start"], Form()] = "preview") -> Response:
    """Preview (nothing starts) or start; a refusal shows on the form, which keeps what was typed."""
    who = await _allowed(request, Role.OPERATOR, "starting a rollout")
    typed = NewRollout(release, selector, waves, failure_threshold, approval)
    state = server_state(request)
    try:
        body = RolloutRequest.model_validate({
            "release": release, "selector": parse_pairs(selector.split(",")),
            "waves": [parse_wave(w) for w in waves.split(",") if w.strip()],
            "failure_threshold": failure_threshold.strip(), "approval_between_waves": approval})
        check_selector(who, body.selector)
        if action == "start":
            row = await state.rollouts.start(body, who.name)
            log.info("%s (dashboard) started rollout %s of %s", who.name, row.id, release)
            return RedirectResponse(f"/ui/rollouts/{row.id}", status_code=303)
        preview = await state.rollouts.preview(body)
    except ValidationError as exc:
        return await _new_rollout_page(request, who, typed, error="; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()), status=422)
    except ValueError as exc:
        return await _new_rollout_page(request, who, typed, error=str(exc), status=422)
    except EdgefleetError as exc:
        return await _new_rollout_page(request, who, typed, error=exc.message, status=status_for(exc))
    if not preview.matched:  # start would refuse it: say so now, and offer no start
        return await _new_rollout_page(request, who, typed, status=422,
                                       error=f"the selector {selector.strip() or '(none)'} matches no device")
    return await _new_rollout_page(request, who, typed, preview=preview)


@dataclass(frozen=True)
class NewRollout:
    """What the start-rollout form holds (kept across a preview or a refusal)."""

    release: str = ""
    selector: str = ""
    waves: str = "1, 10%, 100%"
    failure_threshold: str = "10%"
    approval: bool = False


async def _allowed(request: Request, needed: Role, what: str) -> AdminPrincipal:
    """The session's operator, if its role may do ``what`` (Forbidden otherwise); every
    verb of the dashboard keeps to the operator's scope (it checks the device or rollout)."""
    return allowed(await signed_in(request), needed, scoped=True, what=what)



async def _new_rollout_page(request: Request, who: AdminPrincipal, typed: NewRollout, *,
                            preview: RolloutPreview | None = None, error: str | None = None,
                            status: int = 200) -> HTMLResponse:
    _, rows = await asyncio.to_thread(server_state(request).repository.releases)
    versions = [str(r["version"]) for r in release_rows(rows)]
    page = render(request, "rollout_new.html", who, typed=typed, versions=versions, preview=preview, error=error)
    page.status_code = status
    return page


@router.get("/rollouts/{rollout_id}")
async def rollout(request: Request, rollout_id: Annotated[str, Path(pattern=r"^ro-[0-9a-f]{12}$")]) -> HTMLResponse:
    who = await signed_in(request)
    state = server_state(request)
    view = await state.rollouts.with_planned(visible_rollout(who, await state.rollout_views.get(rollout_id)))
    async with state.db.transaction() as conn:
        events = await rollout_events(conn, rollout_id, 5000)
    points, marks = progress([(e.at, e.kind, e.reason) for e in events])
    total = sum(sum(w.counts.values()) for w in view.waves)
    return render(request, "rollout.html", who, rollout=view, events=events[:50],
                 chart=progress_svg(points, marks, total), total=total)


@router.post("/rollouts/{rollout_id}/{verb}")
async def operate(request: Request, rollout_id: Annotated[str, Path(pattern=r"^ro-[0-9a-f]{12}$")],
                  verb: Literal["approve", "pause", "resume", "abort", "abort-revert", "revert"]) -> Response:
    who = await _allowed(request, Role.OPERATOR, verb)
    await check_rollout(server_state(request), who, rollout_id)
    if verb.startswith("abort"):
        await server_state(request).rollouts.operate(rollout_id, "abort", who.name, revert=verb == "abort-revert")
    else:
        await server_state(request).rollouts.operate(rollout_id, verb, who.name)
    log.info("%s (dashboard): %s rollout %s", who.name, verb, rollout_id)
    return RedirectResponse(f"/ui/rollouts/{rollout_id}", status_code=303)


@router.post("/devices/{device_id}/{verb}")
async def device_verb(request: Request, device_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,64}$")],
                      verb: Literal["release-quarantine", "revoke", "decommission"]) -> Response:
    """An admin's verbs on a device (the page asks before it posts them)."""
    who = await _allowed(request, Role.ADMIN, verb)
    state = server_state(request)
    await check_device(state, who, device_id)
    if verb == "decommission":
        await decommission(state, device_id, by=who.name)
        log.warning("%s (dashboard) decommissioned %s", who.name, device_id)
        return RedirectResponse("/ui/devices", status_code=303)
    if verb == "revoke":
        serial = await revoke(state, device_id, reason="revoked from the dashboard", by=who.name)
        log.warning("%s (dashboard) revoked %s (certificate %s)", who.name, device_id, serial)
        return RedirectResponse(f"/ui/devices/{device_id}", status_code=303)
    await state.attestation.release_quarantine(device_id)
    log.warning("%s (dashboard) released %s from quarantine", who.name, device_id)
    return RedirectResponse(f"/ui/devices/{device_id}", status_code=303)
