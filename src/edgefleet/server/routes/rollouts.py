"""Admin API of wave rollouts: start, status, events, and the operator verbs."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request

from edgefleet.errors import NotFound
from edgefleet.protocol.v1 import (
    RolloutAbort,
    RolloutEvents,
    RolloutEventView,
    RolloutList,
    RolloutRequest,
    RolloutView,
    RolloutWaveView,
)
from edgefleet.rollouts.codec import state_from_json
from edgefleet.rollouts.planner import FINAL, DeviceState
from edgefleet.server.auth import Operator, Viewer
from edgefleet.server.state import server_state
from edgefleet.store.rollouts import get_rollout, list_rollouts, rollout_events
from edgefleet.store.schema import RolloutRow

log = logging.getLogger("edgefleet.server")
router = APIRouter(prefix="/api/v1/admin/rollouts", tags=["rollouts"])
RolloutId = Annotated[str, Path(pattern=r"^ro-[0-9a-f]{12}$")]


def rollout_view(row: RolloutRow) -> RolloutView:
    state = state_from_json(row.state)
    count = len(row.spec.get("waves", []))
    counts = [{str(s): 0 for s in DeviceState} for _ in range(count)]
    failed: list[list[dict[str, Any]]] = [[] for _ in range(count)]
    for device_id, place in sorted(state.devices.items()):  # one pass, however many waves
        counts[place.wave][str(place.state)] += 1
        if place.state in FINAL and place.state is not DeviceState.SUCCEEDED and len(failed[place.wave]) < 100:
            failed[place.wave].append({"device_id": device_id, "state": str(place.state), "reason": place.reason})
    waves = [RolloutWaveView(wave=n + 1, counts=counts[n], failed=failed[n]) for n in range(count)]
    return RolloutView(id=row.id, release=row.release, status=row.status, reason=state.reason, wave=state.wave + 1,
                       waves=waves, group=row.spec.get("group"), created_by=row.created_by,
                       created_at=row.created_at, updated_at=row.updated_at)


@router.post("", status_code=201)
async def start(who: Operator, body: RolloutRequest, request: Request) -> RolloutView:
    """Start rolling a published release out to the devices matching ``selector``, in waves."""
    row = await server_state(request).rollouts.start(body, who.name)
    log.info("%s started rollout %s of %s", who.name, row.id, body.release)
    return rollout_view(row)


@router.get("")
async def rollouts(_: Viewer, request: Request) -> RolloutList:
    async with server_state(request).db.transaction() as conn:
        rows = await list_rollouts(conn)
    return RolloutList(rollouts=[rollout_view(r) for r in rows])


@router.get("/{rollout_id}")
async def rollout(_: Viewer, rollout_id: RolloutId, request: Request) -> RolloutView:
    async with server_state(request).db.transaction() as conn:
        row = await get_rollout(conn, rollout_id)
    if row is None:
        raise NotFound(f"rollout {rollout_id} not found")
    return rollout_view(row)


@router.get("/{rollout_id}/events")
async def events(_: Viewer, rollout_id: RolloutId, request: Request,
                 limit: Annotated[int, Query(ge=1, le=10000)] = 200) -> RolloutEvents:
    """The audit trail: every decision and verb, with its reason, newest first."""
    async with server_state(request).db.transaction() as conn:
        rows = await rollout_events(conn, rollout_id, limit)
    return RolloutEvents(events=[RolloutEventView(at=r.at, kind=r.kind, device_id=r.device_id, reason=r.reason)
                                 for r in rows])


@router.post("/{rollout_id}/{verb}")
async def operate(who: Operator, rollout_id: RolloutId, verb: Literal["pause", "resume", "approve"],
                  request: Request) -> RolloutView:
    row = await server_state(request).rollouts.operate(rollout_id, verb, who.name)
    log.info("%s: %s rollout %s", who.name, verb, rollout_id)
    return rollout_view(row)


@router.post("/{rollout_id}/abort/now")
async def abort(who: Operator, rollout_id: RolloutId, body: RolloutAbort, request: Request) -> RolloutView:
    """Stop the rollout; with ``revert``, devices it updated go back to their previous release."""
    row = await server_state(request).rollouts.operate(rollout_id, "abort", who.name, revert=body.revert)
    log.warning("%s aborted rollout %s%s", who.name, rollout_id, " with revert" if body.revert else "")
    return rollout_view(row)
