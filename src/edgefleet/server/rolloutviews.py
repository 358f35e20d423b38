"""What the admin API shows of a rollout: its counts per wave and why devices failed.

A view is built once per version of a rollout (every change bumps it) and kept: an
operator's dashboard polls a rollout over thousands of devices every second, and decoding
the planner's state, an entry per device, costs more than the rest of such a request.
While a rollout moves, its version changes on every step of the controller: the view then
takes the planner's state from the controller of this process when it holds that version,
and reads neither the state nor the per-device releases from the database.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from edgefleet.errors import NotFound
from edgefleet.protocol.v1 import RolloutView, RolloutWaveView
from edgefleet.rollouts.codec import state_from_json
from edgefleet.rollouts.planner import FINAL, DeviceState, State
from edgefleet.store import Database
from edgefleet.store.rollouts import get_rollout, rollout_heads, rollout_version
from edgefleet.store.schema import RolloutRow

FAILED_LISTED = 100  # failed devices listed per wave, with their reasons


def rollout_view(row: RolloutRow, state: State | None = None) -> RolloutView:
    """``state``: the row's planner state, when already decoded."""
    state = state_from_json(row.state) if state is None else state
    count = len(row.spec.get("waves", []))
    counts = [{str(s): 0 for s in DeviceState} for _ in range(count)]
    failed: list[list[dict[str, Any]]] = [[] for _ in range(count)]
    for device_id, place in sorted(state.devices.items()):  # one pass, however many waves
        counts[place.wave][str(place.state)] += 1
        if (place.state in FINAL and place.state is not DeviceState.SUCCEEDED
                and len(failed[place.wave]) < FAILED_LISTED):
            failed[place.wave].append({"device_id": device_id, "state": str(place.state), "reason": place.reason})
    waves = [RolloutWaveView(wave=n + 1, counts=counts[n], failed=failed[n]) for n in range(count)]
    return RolloutView(id=row.id, release=row.release, status=row.status, reason=state.reason, wave=state.wave + 1,
                       waves=waves, group=row.spec.get("group"),
                       selector={str(k): str(v) for k, v in row.selector.items()},
                       from_releases=[str(r) for r in row.spec.get("from_releases") or []], created_by=row.created_by,
                       created_at=row.created_at, updated_at=row.updated_at)


class RolloutViews:
    def __init__(self, db: Database, decoded: Callable[[str, int], State | None] | None = None,
                 entries: int = 256) -> None:
        """``decoded(rollout, version)``: the planner's state of that version of a rollout, if
        this process holds it decoded."""
        self.db = db
        self.decoded = decoded or (lambda rollout_id, version: None)
        self.entries = entries
        self._views: OrderedDict[str, tuple[int, RolloutView]] = OrderedDict()

    def of(self, row: RolloutRow, state: State | None = None) -> RolloutView:
        view = self._current(row.id, row.version)
        if view is not None:
            return view
        view = rollout_view(row, state)
        self._views[row.id] = (row.version, view)
        self._views.move_to_end(row.id)
        while len(self._views) > self.entries:
            self._views.popitem(last=False)
        return view

    def _current(self, rollout_id: str, version: int) -> RolloutView | None:
        cached = self._views.get(rollout_id)
        return cached[1] if cached is not None and cached[0] == version else None

    async def get(self, rollout_id: str) -> RolloutView:
        """Raises NotFound."""
        async with self.db.transaction(readonly=True) as conn:
            version = await rollout_version(conn, rollout_id)
            view = None if version is None else self._current(rollout_id, version)
            state = None if version is None else self.decoded(rollout_id, version)
            row = None if view is not None else await get_rollout(conn, rollout_id, with_state=state is None)
        if view is not None:
            return view
        if row is None:
            raise NotFound(f"rollout {rollout_id} not found")
        if state is not None and row.version != version:  # it moved on between the two reads
            return await self.get(rollout_id)
        return self.of(row, state)

    async def all(self) -> list[RolloutView]:
        """Every rollout, newest first."""
        views: list[RolloutView] = []
        async with self.db.transaction(readonly=True) as conn:
            for head in await rollout_heads(conn):
                view = self._current(head.id, head.version)
                if view is None:
                    row = await get_rollout(conn, head.id)
                    if row is None:  # deleted meanwhile
                        continue
                    view = self.of(row)
                views.append(view)
        return views
