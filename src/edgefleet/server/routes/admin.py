"""Admin API v1 (bearer tokens with roles): devices and their desired state (tokens: ``tokens.py``)."""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response

from edgefleet.errors import InvalidRequest, NotFound
from edgefleet.protocol.base import MAX_INT
from edgefleet.protocol.v1 import (
    ApprovalDecision,
    ApprovalList,
    ApprovalView,
    AssignmentView,
    AssignRelease,
    DesiredState,
    DeviceKind,
    DeviceList,
    DeviceView,
    Name,
    RevokeRequest,
    RevokeResult,
    SetDesired,
    UpdateEvent,
    UpdateHistory,
)
from edgefleet.protocol.workloads import declared
from edgefleet.server.auth import DeviceIdPath, ScopedAdmin, ScopedOperator, ScopedViewer
from edgefleet.server.lifecycle import decommission as decommission_device
from edgefleet.server.lifecycle import revoke as revoke_device
from edgefleet.server.scoping import check_device, sees_device, visible_device
from edgefleet.server.state import server_state
from edgefleet.server.views import approval_view, device_filter, device_list, device_view
from edgefleet.store.approvals import approvals
from edgefleet.store.attestation import status as attestation_status
from edgefleet.store.devices import desired_state
from edgefleet.store.revocations import revocation_of
from edgefleet.store.updates import update_history

log = logging.getLogger("edgefleet.server")
router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


@router.get("/devices")
async def devices(
    who: ScopedViewer,
    request: Request,
    site: Name | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
    kind: DeviceKind = "device",
    selector: Annotated[str | None, Query(max_length=1000, description="k=v,k2=v2: every label must match")] = None,
    q: Annotated[str | None, Query(max_length=64, description="a piece of the device id or hardware id")] = None,
) -> DeviceList:
    """List devices, by site then id; ``kind=hub`` lists the sites' hubs instead. A token
    limited to a scope lists the devices in it."""
    state = server_state(request)
    only = device_filter(site=site, kind=kind, selector=selector, search=q, scope=who.scope)
    async with state.db.transaction() as conn:
        return await device_list(conn, state.presence, only, limit=limit, offset=offset, fresh=state.freshness())


@router.get("/devices/{device_id}")
async def device(who: ScopedViewer, device_id: DeviceIdPath, request: Request) -> DeviceView:
    state = server_state(request)
    async with state.db.transaction() as conn:
        row = await visible_device(conn, who, device_id)
        attested = await attestation_status(conn, device_id)
        revoked = await revocation_of(conn, row.cert_serial)
    return device_view(row, state.presence, attested, state.freshness(), revoked)


@router.get("/devices/{device_id}/updates")
async def updates(
    who: ScopedViewer, device_id: DeviceIdPath, request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> UpdateHistory:
    """The device's A/B update transitions, newest first."""
    state = server_state(request)
    async with state.db.transaction() as conn:
        await visible_device(conn, who, device_id)
        rows = await update_history(conn, device_id, limit)
    return UpdateHistory(device_id=device_id, events=[
        UpdateEvent(seq=r.seq, phase=r.phase, at=r.at, release=r.release, reason=r.reason) for r in rows
    ])


@router.post("/devices/{device_id}/release-quarantine", status_code=204)
async def release_quarantine(who: ScopedAdmin, device_id: DeviceIdPath, request: Request) -> Response:
    """Let a quarantined device attest again (after an engineer looked at it)."""
    await check_device(server_state(request), who, device_id)
    await server_state(request).attestation.release_quarantine(device_id)
    log.warning("%s released %s from quarantine", who.name, device_id)
    return Response(status_code=204)


@router.get("/devices/{device_id}/desired")
async def get_desired(who: ScopedViewer, device_id: DeviceIdPath, request: Request) -> DesiredState:
    """A device's desired state as it will receive it (rendered configuration included)."""
    async with server_state(request).db.transaction() as conn:
        await visible_device(conn, who, device_id)
        found = await conn.run_sync(desired_state, device_id)
    if found is None:
        raise NotFound(f"device {device_id} not found")
    return DesiredState(version=found[0], document=found[1])


@router.put("/devices/{device_id}/desired")
async def put_desired(who: ScopedOperator, device_id: DeviceIdPath, body: SetDesired, request: Request
                      ) -> DesiredState:
    """Set a device's desired state by hand; devices waiting in a long poll get it at once."""
    await check_device(server_state(request), who, device_id)
    # As the operator wrote it (no defaults added): its configuration's bytes are signed.
    document = body.document.model_dump(mode="json", exclude_unset=True)
    _, invalid = declared(document.get("config") or {})
    if invalid:  # the device would leave it out: say so now, and change nothing
        raise InvalidRequest(f"invalid workloads: {'; '.join(invalid)}", code="invalid_workload")
    async with server_state(request).director.desired.transaction() as changes:
        version = await changes.set(device_id, document)  # its configuration signed before it is heard
    if version is None:
        raise NotFound(f"device {device_id} not found")
    log.info("%s set desired state of %s to version %d", who.name, device_id, version)
    return DesiredState(version=version, document=document)


@router.put("/devices/{device_id}/assignment")
async def assign(who: ScopedOperator, device_id: DeviceIdPath, body: AssignRelease, request: Request
                 ) -> AssignmentView:
    """Point a device's director at a published release (the device verifies it via TUF)."""
    await check_device(server_state(request), who, device_id)
    result = await server_state(request).director.assign(device_id, body.release, force_reboot=body.force_reboot,
                                                         retry_failed=body.retry_failed)
    log.info("%s assigned release %s to %s (director version %d)", who.name, body.release, device_id, result.version)
    return AssignmentView(device_id=device_id, release=body.release, director_version=result.version)


@router.delete("/devices/{device_id}", status_code=204)
async def decommission(who: ScopedAdmin, device_id: DeviceIdPath, request: Request) -> Response:
    """Forget a device; its certificate stops working at once."""
    await check_device(server_state(request), who, device_id)
    await decommission_device(server_state(request), device_id, by=who.name)
    log.info("%s decommissioned %s", who.name, device_id)
    return Response(status_code=204)


@router.get("/approvals")
async def ek_approval_list(
    who: ScopedOperator, request: Request,
    state: Literal["pending", "approved", "rejected", "used", "all"] = "pending",
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> ApprovalList:
    """What an operator decides on, newest first: TPMs no vendor CA certifies (``ek_trust =
    "approval"``) and re-enrollments of devices whose certificate ended; ``state`` pending
    by default. A token limited to a scope sees its devices' requests."""
    async with server_state(request).db.transaction() as conn:
        rows = await approvals(conn, None if state == "all" else state, limit)
        if who.scope is not None:
            rows = [row for row in rows if await sees_device(conn, who, row.device_id)]
    return ApprovalList(approvals=[approval_view(row) for row in rows])


@router.post("/devices/{device_id}/approve")
async def approve(who: ScopedAdmin, device_id: DeviceIdPath, body: ApprovalDecision, request: Request
                  ) -> ApprovalView:
    """Approve what the device waits for: its TPM binds at its next identity request, or
    its next re-enrollment request gets a certificate."""
    await check_device(server_state(request), who, device_id)
    decided = await server_state(request).attestation.decide_approval(device_id, body.fingerprint,
                                                                      approve=True, by=who.name)
    return approval_view(decided)


@router.post("/devices/{device_id}/reject")
async def reject(who: ScopedAdmin, device_id: DeviceIdPath, body: ApprovalDecision, request: Request
                 ) -> ApprovalView:
    """Reject what the device waits for: that TPM never binds, that key gets no certificate."""
    await check_device(server_state(request), who, device_id)
    decided = await server_state(request).attestation.decide_approval(device_id, body.fingerprint,
                                                                      approve=False, by=who.name)
    return approval_view(decided)


@router.post("/devices/{device_id}/revoke")
async def revoke(who: ScopedAdmin, device_id: DeviceIdPath, body: RevokeRequest, request: Request) -> RevokeResult:
    """Revoke the device's certificate: the control plane refuses it at once, every hub
    from its next sync of the fleet's revocation list (and after a restart, offline too).
    The device stays listed, as revoked; it enrolls again only with a new bootstrap token
    and a new hardware identity, or after it is decommissioned."""
    await check_device(server_state(request), who, device_id)
    serial = await revoke_device(server_state(request), device_id, reason=body.reason, by=who.name)
    log.warning("%s revoked %s (certificate %s): %s", who.name, device_id, serial, body.reason)
    return RevokeResult(device_id=device_id, serial=serial)
