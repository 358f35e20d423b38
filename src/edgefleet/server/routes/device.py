"""Device API v1: enrollment, check-in (desired state), status reports, own record."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Connection
from starlette.responses import JSONResponse

from edgefleet.errors import Forbidden, NotFound
from edgefleet.protocol.base import MAX_INT
from edgefleet.protocol.v1 import (
    CertificateRenewed,
    CheckInAnswer,
    DeviceView,
    DirectorBundle,
    DirectorBundleQuery,
    EnrollRequest,
    EnrollResponse,
    Reenroll,
    ReenrollAnswer,
    RenewCertificate,
    StatusAck,
    StatusReport,
)
from edgefleet.server.auth import CurrentDevice, DeviceIdPath, fresh_device_state
from edgefleet.server.enrollment import enroll_device
from edgefleet.server.renewal import reenroll, renew_certificate
from edgefleet.server.routes.attestation import challenge
from edgefleet.server.state import server_state
from edgefleet.server.views import device_view
from edgefleet.store.devices import apply_status, desired_state, get_device, stored_health
from edgefleet.store.updates import record_update_events

router = APIRouter(prefix="/api/v1", tags=["device"])
DIRECTOR_FILE = r"^[A-Za-z0-9.]{1,64}$"


class CheckIn(BaseModel):
    """A check-in's query."""

    model_config = ConfigDict(extra="ignore")
    known: int = Field(-1, ge=-1, le=MAX_INT, description="desired version the device already has")
    wait: float = Field(0, ge=0, le=3600, description="long-poll up to this many seconds")


@router.post("/enroll", status_code=201)
async def enroll(body: EnrollRequest, request: Request) -> EnrollResponse:
    """Trade a single-use bootstrap token and a CSR for a device certificate."""
    state = server_state(request)
    response = await enroll_device(state, body)
    state.gitops.device_joined(response.device_id)
    return response


@router.get(
    "/devices/{device_id}/desired",
    responses={200: {"model": CheckInAnswer}, 204: {"description": "nothing newer than `known`"}},
)
async def check_in(device: CurrentDevice, request: Request, query: Annotated[CheckIn, Query()]) -> Response:
    """Check in: 204 when the device already has the newest desired state and no remote
    session waits for it, else 200 with the newer state, the sessions, or both."""
    known, wait = query.known, query.wait
    state = server_state(request)
    state.presence.seen(device.id, state.clock.now())
    try:
        state.attestation.gate(device.auth)
    except Forbidden:
        # A quarantined device gets no configuration, but a forensic (read-only) session.
        forensic = [offer.model_dump(mode="json") for offer in state.sessions.offers(device.id, read_only=True)]
        if not forensic:
            raise
        return JSONResponse({"version": known, "document": None, "sessions": forensic})
    version = device.desired_version
    found: tuple[int, dict[str, Any]] | None = None  # read together with a woken wait's version
    if version == known and wait > 0:

        async def read_version() -> int:
            # The change feed evicts a changed device from the cache (and wakes this wait),
            # so a cached entry is current: a re-check costs no query until something changed.
            nonlocal found
            auth = state.devices.get(device.id)
            if auth is not None:
                return auth.desired_version
            async with state.long_polls.rereads:  # a wave wakes thousands at once: a few at a time
                fresh = await fresh_device_state(state, device.id)
            if fresh is None:
                return known
            found = (fresh[0].desired_version, fresh[1])
            return found[0]

        version = await state.long_polls.wait(
            device.id, known, version, min(wait, state.settings.long_poll_max_seconds), read_version,
            lambda: state.sessions.pending(device.id))
        state.presence.seen(device.id, state.clock.now())  # it was connected all along
    sessions = [offer.model_dump(mode="json") for offer in state.sessions.offers(device.id)]
    if version == known:
        if sessions:
            return JSONResponse({"version": version, "document": None, "sessions": sessions})
        state.metrics.checkins.labels("not_modified").inc()
        return Response(status_code=204)
    if found is None or found[0] != version:
        found = await state.db.read(desired_state, device.id)
    if found is None:
        raise NotFound(f"device {device.id} vanished during check-in")
    state.metrics.checkins.labels("updated").inc()
    answer: dict[str, Any] = {"version": found[0], "document": found[1]}
    if sessions:
        answer["sessions"] = sessions
    return JSONResponse(answer)


def _store_report(conn: Connection, device_id: str, body: StatusReport, now: datetime) -> tuple[bool, int, bool]:
    """The report, and the A/B update events it brings that are new, in one transaction;
    returns (accepted, stored seq, whether the device has just turned unhealthy)."""
    # Read only for an unhealthy report (a healthy fleet sends none): the turn, not every
    # report of an unhealthy device, wakes the rollout controller.
    turned = body.health == "unhealthy" and stored_health(conn, device_id) != "unhealthy"
    accepted, seq = apply_status(conn, device_id, body.seq, body.model_dump(mode="json"), now,
                                 running_version=body.running_version, health=body.health,
                                 update_state=body.update_state)
    if accepted and body.update is not None and body.update.events:
        record_update_events(conn, device_id, [e.model_dump() for e in body.update.events], now)
    return accepted, seq, accepted and turned


@router.post("/devices/{device_id}/status")
async def report_status(device: CurrentDevice, body: StatusReport, request: Request) -> StatusAck:
    """Store a status report unless a report with the same or a higher seq was stored."""
    state = server_state(request)
    now = state.clock.now()
    state.presence.seen(device.id, now)
    accepted, seq, turned_unhealthy = await state.db.write(_store_report, device.id, body, now)
    if turned_unhealthy or (accepted and body.update is not None and body.update.phase in ("rolled_back", "failed")):
        state.rollouts.wake()  # a failed update or a device turning unhealthy may halt a rollout now
    if accepted and body.config is not None:
        await state.gitops.observe(device.id, body.config.model_dump(), body.desired_version_applied)
    state.metrics.status_reports.labels("accepted" if accepted else "stale").inc()
    return StatusAck(accepted=accepted, seq=seq,
                     attestation_expires_in_seconds=state.attestation.expires_in(device.auth),
                     challenge=challenge(device, request) if body.challenge and device.auth.tpm_identity else None)


@router.post("/devices/{device_id}/certificate")
async def renew(device: CurrentDevice, body: RenewCertificate, request: Request) -> CertificateRenewed:
    """A new certificate for a key the device made, while it is not quarantined and (with a
    TPM identity, or when the fleet requires it) freshly attested. The current one keeps
    working until the device presents the new one."""
    return await renew_certificate(server_state(request), device, body.csr_pem)


@router.post("/devices/{device_id}/reenroll", responses={202: {"model": ReenrollAnswer}})
async def reenroll_device(device_id: DeviceIdPath, body: Reenroll, request: Request) -> Response:
    """For a device whose certificate expired (server-authenticated TLS only): its old
    certificate and a CSR signed by the old key. 202 while an operator has not approved it
    (the first request files it), 200 with the new certificate once one has. Charged to the
    device's rate limit before anything is verified: no certificate vouches for the caller."""
    state = server_state(request)
    state.rate_limits.charge(device_id)
    answer = await reenroll(state, device_id, body)
    return JSONResponse(answer.model_dump(mode="json"), status_code=200 if answer.state == "issued" else 202)


@router.get("/devices/{device_id}/director")
async def director_bundle(device: CurrentDevice, request: Request,
                          query: Annotated[DirectorBundleQuery, Query()]) -> DirectorBundle:
    """This device's director repository in one answer: the roots after the one it trusts,
    the timestamp, and the snapshot and targets unless it holds them (a TUF client's whole
    refresh in one round trip; it verifies every file as if fetched alone)."""
    state = server_state(request)
    state.attestation.gate(device.auth)
    return await state.director.bundle(device.id, query.root, query.snapshot)


@router.get("/devices/{device_id}/director/{name}")
async def director_file(
    device: CurrentDevice, name: Annotated[str, Path(pattern=DIRECTOR_FILE)], request: Request
) -> Response:
    """This device's director repository (Uptane): root versions, timestamp, snapshot, targets."""
    state = server_state(request)
    state.attestation.gate(device.auth)
    data = await state.director.file(device.id, name)
    return Response(data, media_type="application/json")


@router.get("/devices/{device_id}")
async def own_record(device: CurrentDevice, request: Request) -> DeviceView:
    """A device reads its own record."""
    state = server_state(request)
    async with state.db.transaction(readonly=True) as conn:
        row = await get_device(conn, device.id)
    if row is None:
        raise NotFound(f"device {device.id} not found")
    return device_view(row, state.presence)
