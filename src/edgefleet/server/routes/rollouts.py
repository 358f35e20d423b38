"""Admin API of wave rollouts: start, status, events, and the operator verbs."""

from __future__ import annotations

import logging
import re
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query, Request

from edgefleet.errors import NotFound
from edgefleet.protocol.v1 import (
    RolloutAbort,
    RolloutEvents,
    RolloutEventView,
    RolloutList,
    RolloutPreview,
    RolloutRequest,
    RolloutView,
)
from edgefleet.server.auth import ScopedOperator, ScopedViewer
from edgefleet.server.scoping import check_rollout, check_selector, covers, visible_rollout
from edgefleet.server.state import server_state
from edgefleet.store.rollouts import rollout_events

log = logging.getLogger("edgefleet.server")
router = APIRouter(prefix="/api/v1/admin/rollouts", tags=["rollouts"])
ROLLOUT_ID = re.compile(r"ro-[0-9a-f]{12}")


def _rollout_id(rollout_id: Annotated[str, Path(max_length=64)]) -> str:
    """A rollout id from the path; one that cannot be an id is not found, like one that is not there."""
    if not ROLLOUT_ID.fullmatch(rollout_id):
        raise NotFound(f"no rollout {rollout_id!r}")
    return rollout_id


RolloutId = Annotated[str, Depends(_rollout_id)]


@router.post("", status_code=201)
async def start(who: ScopedOperator, body: RolloutRequest, request: Request) -> RolloutView:
    """Start rolling a published release out to the devices matching ``selector``, in waves.
    A token limited to a scope starts only rollouts whose selector keeps to it."""
    check_selector(who, body.selector)
    row = await server_state(request).rollouts.start(body, who.name)
    log.info("%s started rollout %s of %s", who.name, row.id, body.release)
    return server_state(request).rollout_views.of(row)


@router.post("/preview")
async def preview(who: ScopedOperator, body: RolloutRequest, request: Request) -> RolloutPreview:
    """Who each wave would take were this rollout started now; nothing is started."""
    check_selector(who, body.selector)
    return await server_state(request).rollouts.preview(body)


@router.get("")
async def rollouts(who: ScopedViewer, request: Request) -> RolloutList:
    """Every rollout (a token limited to a scope: those that keep to it)."""
    views = await server_state(request).rollout_views.all()
    return RolloutList(rollouts=[view for view in views if covers(who, view.selector)])


@router.get("/{rollout_id}")
async def rollout(who: ScopedViewer, rollout_id: RolloutId, request: Request) -> RolloutView:
    """A rollout's status: counts per wave and why each failed device failed; the waves it
    has not started show who they would take now."""
    state = server_state(request)
    return await state.rollouts.with_planned(visible_rollout(who, await state.rollout_views.get(rollout_id)))


@router.get("/{rollout_id}/events")
async def events(who: ScopedViewer, rollout_id: RolloutId, request: Request,
                 limit: Annotated[int, Query(ge=1, le=10000)] = 200) -> RolloutEvents:
    """The audit trail: every decision and verb, with its reason, newest first (404 for a
    rollout that does not exist, or not in the caller's scope)."""
    visible_rollout(who, await server_state(request).rollout_views.get(rollout_id))
    async with server_state(request).db.transaction() as conn:
        rows = await rollout_events(conn, rollout_id, limit)
    return RolloutEvents(events=[RolloutEventView(at=r.at, kind=r.kind, device_id=r.device_id, reason=r.reason)
                                 for r in rows])


@router.post("/{rollout_id}/{verb}")
async def operate(who: ScopedOperator, rollout_id: RolloutId, verb: Literal["pause", "resume", "approve", "revert"],
                  request: Request) -> RolloutView:
    """pause, resume, approve; revert: an aborted rollout's devices go back to their previous release."""
    await check_rollout(server_state(request), who, rollout_id)
    row = await server_state(request).rollouts.operate(rollout_id, verb, who.name)
    log.info("%s: %s rollout %s", who.name, verb, rollout_id)
    return server_state(request).rollout_views.of(row)


@router.post("/{rollout_id}/abort/now")
async def abort(who: ScopedOperator, rollout_id: RolloutId, body: RolloutAbort, request: Request) -> RolloutView:
    """Stop the rollout; with ``revert``, devices it updated go back to their previous release."""
    await check_rollout(server_state(request), who, rollout_id)
    row = await server_state(request).rollouts.operate(rollout_id, "abort", who.name, revert=body.revert)
    log.warning("%s aborted rollout %s%s", who.name, rollout_id, " with revert" if body.revert else "")
    return server_state(request).rollout_views.of(row)
