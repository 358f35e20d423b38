"""The rollout controller: runs the pure planner over what devices report, stores its state
(compare-and-swap, so two controllers never both act on a step) and applies its decisions
through the director. One controller acts at a time: on PostgreSQL the process holding an
advisory lock on a dedicated connection; a lost connection hands leadership over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Row

from edgefleet.clock import Clock
from edgefleet.errors import Conflict, EdgefleetError, InvalidRequest, NotFound, StoreError
from edgefleet.gitops.render import GroupSpec
from edgefleet.protocol.v1 import (
    RolloutPlan,
    RolloutPreview,
    RolloutRequest,
    RolloutView,
    RolloutWavePreview,
    WaveRequest,
)
from edgefleet.protocol.workload_verdicts import EMPTY, judge, revision
from edgefleet.rollouts.codec import spec_from_request, state_from_json, state_to_json
from edgefleet.rollouts.planner import FINAL, Observation, State, Status, matches, plan, planned_waves
from edgefleet.server.alerts import Alerts
from edgefleet.server.director import DirectorService
from edgefleet.server.metrics import Metrics
from edgefleet.server.presence import Presence
from edgefleet.store import Database
from edgefleet.store.db import SessionLock
from edgefleet.store.rollouts import (
    ACTIVE,
    add_events,
    create_rollout,
    get_rollout,
    rollout_devices,
    rollout_heads,
    save_rollout,
    workload_reports,
)
from edgefleet.store.schema import RolloutRow

log = logging.getLogger("edgefleet.server.rollouts")
LEADER_LOCK = 7235915  # pg advisory lock key of the rollout controller
FOLLOW_EVERY = 5  # ticks between steps of a completed rollout
PREVIEW_LISTED = 200  # device ids listed per wave in a preview (the count is whole)
PLANNED_FOR = 5.0  # seconds a rollout's planned waves are reused by the views that poll it
FOLLOWED = 20  # completed rollouts followed at most (the newest per selection)
PACE = 4.0  # the controller rests at least this many times its last step's duration...
MAX_REST = 10.0  # ...but never longer than this (news from other processes waits for the step)


def new_rollout_id() -> str:
    return f"ro-{secrets.token_hex(6)}"


class Leadership:
    """Who may act. SQLite serves one process; PostgreSQL elects with an advisory lock held
    by a dedicated session, which the database releases if the process dies."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self._lock = SessionLock(db, LEADER_LOCK)
        self._held = False

    async def held(self) -> bool:
        if self.db.backend != "postgresql":
            return True
        try:
            held = await self._lock.hold()
        except StoreError as exc:  # no database session: not the leader now
            if self._held:
                log.warning("rollout controller lost its database session: %s", exc.message)
            self._held = False
            return False
        if held and not self._held:
            log.info("this process is the rollout controller")
        self._held = held
        return held

    async def release(self) -> None:
        await self._lock.release()
        self._held = False


@dataclass(frozen=True)
class Seen:
    """A device as a step of the controller sees it: what the planner observes, plus its
    accepted GitOps group and the release its director metadata names."""

    observation: Observation
    group: str | None
    assigned: str | None

    @property
    def id(self) -> str:
        return self.observation.id


Looks = dict[str, tuple[tuple[Any, ...], Seen]]  # device -> (its row and presence, what was seen)


def look(rows: Sequence[Row[Any]], presence: Presence, before: Looks) -> tuple[list[Seen], Looks]:
    """The devices of ``rows`` as seen now. A device whose row and presence are those of
    ``before`` is the same object again: on every step the controller reads every device,
    and most did not change since the last step."""
    seen, now = [], {}
    for row in rows:
        key = (*row, presence.latest(row.id))
        hit = before.get(row.id)
        if hit is None or hit[0] != key:
            # JSON text on SQLite; PostgreSQL's driver has decoded it already.
            labels = {**(json.loads(row.labels) if isinstance(row.labels, str) else row.labels or {}),
                      "site": row.site}
            hit = key, Seen(Observation(
                row.id, labels, key[-1] or row.last_seen_at, row.running_version, row.update_phase or "idle",
                row.update_release, None if row.attested is None else ("passed" if row.attested else "failed"),
                row.attested_release, row.health, row.update_reason, row.health_reason), row.group, row.assigned)
        now[row.id] = hit
        seen.append(hit[1])
    return seen, now


def _selected(device: Seen, selector: dict[str, Any], group: str | None, from_releases: Sequence[str] = (),
              state: State | None = None) -> bool:
    """Whether a rollout of ``selector`` and ``group`` takes ``device``: with
    ``from_releases``, only while it runs one of them, unless ``state`` placed it already."""
    if not (matches(device.observation.labels, selector) and (group is None or device.group == group)):
        return False
    return (not from_releases or device.observation.running_version in from_releases
            or (state is not None and device.id in state.devices))


def _workload_observation(device: Seen, release: str, workloads: dict[str, Any],
                          report: tuple[Any, Any, Any] | None) -> Observation:
    """A device in a workload rollout: where it stands with the rollout's workload set, and
    the health it reports (a device that turns unhealthy on the set counts against it)."""
    _, parts, statuses = report or (None, None, None)
    verdict = judge(workloads, parts, statuses)
    return replace(device.observation, running_version=release if verdict.phase == "committed" else None,
                   update_state=verdict.phase, update_release=release, attestation=None, attested_release=None,
                   health="unhealthy" if verdict.phase == "failed" else device.observation.health,
                   update_reason=verdict.reason)


def workloads_of(spec: dict[str, Any]) -> dict[str, Any] | None:
    """The workload set a rollout moves (None: it moves a release)."""
    found = spec.get("workloads")
    return found if isinstance(found, dict) else None


def request_of(spec: dict[str, Any]) -> RolloutRequest:
    """A stored rollout's request (a workload rollout also stores its sets beside it)."""
    return RolloutRequest.model_validate({k: v for k, v in spec.items() if k not in ("workloads", "workloads_before")})


def _kind(spec: dict[str, Any]) -> str:
    return "release" if workloads_of(spec) is None else "workloads"


def group_rollouts(heads: Sequence[Row[Any]], group: str, kind: str) -> list[Row[Any]]:
    """The rollouts GitOps started for ``group`` of ``kind`` ("release" or "workloads"),
    in the order of ``heads`` (newest first)."""
    return [r for r in heads if r.spec.get("group") == group and r.created_by.startswith("gitops")
            and _kind(r.spec) == kind]


@dataclass(frozen=True)
class Known:
    """A rollout as this controller last read or stored it. While the stored version is the
    same, its state need not be read and decoded again (it holds an entry per device)."""

    id: str
    release: str
    selector: dict[str, Any]
    spec: dict[str, Any]
    version: int
    state: State
    previous: dict[str, Any]

    @staticmethod
    def of(row: RolloutRow) -> Known:
        return Known(row.id, row.release, dict(row.selector), dict(row.spec), row.version,
                     state_from_json(row.state), dict(row.previous))


@dataclass
class RolloutController:
    db: Database
    clock: Clock
    director: DirectorService
    alerts: Alerts
    presence: Presence
    metrics: Metrics
    tick_seconds: float = 2.0
    attestation_required: bool = False  # devices succeed only once attested against the release
    leadership: Leadership = field(init=False)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _ticks: int = 0
    _known: dict[str, Known] = field(default_factory=dict)
    _looks: Looks = field(default_factory=dict)
    _stepped: tuple[float, list[Seen]] | None = None  # when the last step read the fleet, and what it saw
    # rollout id -> (monotonic time, its waves' planned devices): see ``with_planned``
    _planned: dict[str, tuple[float, dict[int, list[str]]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.leadership = Leadership(self.db)

    async def start(self, request: RolloutRequest, who: str, rollout_id: str | None = None, *,
                    workloads: dict[str, Any] | None = None,
                    workloads_before: dict[str, Any] | None = None) -> RolloutRow:
        """Raises NotFound when the release is not published, Conflict when an active
        rollout already covers some of the same devices (each device follows one rollout
        of a release and one of a workload set). With ``workloads``, the rollout moves that
        workload set (named ``request.release``) instead of a release; an abort with revert
        then tells its devices to run ``workloads_before``."""
        if workloads is None:
            await asyncio.to_thread(self.director.release_targets, request.release)
        spec = {**request.model_dump(mode="json"),
                **({} if workloads is None else {"workloads": workloads, "workloads_before": workloads_before})}
        async with self.db.transaction(readonly=True) as conn:
            active = [r for r in await rollout_heads(conn, statuses=ACTIVE) if _kind(r.spec) == _kind(spec)]
            devices = look(await rollout_devices(conn), self.presence, {})[0]
        mine = {d.id for d in devices if _selected(d, request.selector, request.group, request.from_releases)}
        if not mine and not request.allow_empty:
            where = f" in group {request.group}" if request.group else ""
            raise InvalidRequest(f"the selector {dict(request.selector)}{where} matches no device; allow_empty "
                                 "starts it anyway", code="selector_matches_nothing")
        for other in active:
            shared = mine & {d.id for d in devices if _selected(d, other.selector, other.spec.get("group"),
                                                                other.spec.get("from_releases") or (),
                                                                self.decoded(other.id, other.version))}
            if shared:
                raise Conflict(f"rollout {other.id} of {other.release} is active for {len(shared)} of the same "
                               f"devices (e.g. {min(shared)}); let it finish or abort it first", code="rollout_overlap")
        now = self.clock.now()
        rollout_id = rollout_id or new_rollout_id()
        row: dict[str, Any] = {"id": rollout_id, "release": request.release, "selector": dict(request.selector),
               "spec": spec, "state": state_to_json(State()), "status": "running",
               "version": 0, "previous": {}, "created_by": who, "created_at": now, "updated_at": now}
        async with self.db.transaction() as conn:
            await create_rollout(conn, row)
            await add_events(conn, rollout_id, [("started", None, f"{who} started release {request.release} in "
                                                                   f"{len(request.waves)} waves")], now)
            created = await get_rollout(conn, rollout_id)
        assert created is not None
        self._wake.set()
        return created

    async def preview(self, request: RolloutRequest) -> RolloutPreview:
        """Who each wave of ``request`` would take were it started now. Raises NotFound when
        the release is not published (as ``start`` would)."""
        await asyncio.to_thread(self.director.release_targets, request.release)
        matched, planned = await self._plan_ahead(request, State())
        return RolloutPreview(matched=matched, waves=[
            RolloutWavePreview(wave=n + 1, count=len(ids), devices=ids[:PREVIEW_LISTED])
            for n, ids in sorted(planned.items())])

    async def with_planned(self, view: RolloutView) -> RolloutView:
        """``view`` with who each wave not started yet would take now, while the rollout can
        still go on (running, baking, waiting for approval, paused or halted). The plan
        reads the whole fleet, so it is kept ``PLANNED_FOR`` seconds: the dashboard and
        ``rollout watch`` poll a view every second or two, and the view itself is cached
        (``RolloutViews``) so that polling costs next to nothing."""
        if view.status in (Status.COMPLETED, Status.ABORTED) or view.wave >= len(view.waves):
            return view
        kept = self._planned.get(view.id)
        if kept is None or self.clock.monotonic() - kept[0] >= PLANNED_FOR:
            async with self.db.transaction(readonly=True) as conn:
                row = await get_rollout(conn, view.id)
            planned: dict[int, list[str]] = {}
            if row is not None and workloads_of(row.spec) is None:
                planned = (await self._plan_ahead(request_of(row.spec), state_from_json(row.state),
                                                  recent=True))[1]
            now = self.clock.monotonic()
            self._planned = {k: v for k, v in self._planned.items() if now - v[0] < PLANNED_FOR}
            kept = self._planned[view.id] = (now, planned)
        planned = kept[1]
        # Only the waves not started yet (one may have started since the plan was kept).
        waves = [wave.model_copy(update={"planned_count": len(planned[wave.wave - 1]),
                                         "planned": planned[wave.wave - 1][:PREVIEW_LISTED]})
                 if wave.wave > view.wave and wave.wave - 1 in planned else wave for wave in view.waves]
        return view.model_copy(update={"waves": waves})

    async def _plan_ahead(self, request: RolloutRequest, state: State, *,
                          recent: bool = False) -> tuple[int, dict[int, list[str]]]:
        """How many devices ``request`` selects now, and who each wave after ``state``'s would
        take. ``recent``: the fleet as this process's last step saw it, if that was less than
        ``PLANNED_FOR`` seconds ago (a polled view's plan; the step reads the whole fleet
        anyway, and reading it again for every view was half of what a 10,000-device
        rollout's controller spent)."""
        stepped = self._stepped
        if recent and stepped is not None and self.clock.monotonic() - stepped[0] < PLANNED_FOR:
            devices = stepped[1]
        else:
            async with self.db.transaction(readonly=True) as conn:
                devices, self._looks = look(await rollout_devices(conn), self.presence, self._looks)
        observations = [d.observation for d in devices
                        if _selected(d, request.selector, request.group, request.from_releases, state)]
        return len(observations), planned_waves(spec_from_request(request), state, observations, self.clock.now())

    async def from_git(self, groups: Mapping[str, GroupSpec], commit: str) -> list[str]:
        """Start a rollout for each group whose release in the accepted fleet repository has
        none yet (its ``rollout:`` plan, or one wave of the whole group), superseding the
        group's active rollout of another release. Idempotent: a group's release is rolled
        out once, whatever an operator later does with that rollout. Returns the groups
        that must wait (release not published yet, or an operator's rollout covers their
        devices); they are tried again on the next pass."""
        async with self.db.transaction(readonly=True) as conn:
            existing = await rollout_heads(conn)
        waiting, who = [], f"gitops@{commit[:12]}"
        for name, group in sorted(groups.items()):
            if group.release is None:
                continue
            mine = group_rollouts(existing, name, "release")
            if any(r.release == group.release for r in mine):
                continue
            plan_ = group.rollout or RolloutPlan(waves=[WaveRequest(size="100%")])
            request = RolloutRequest(release=group.release, selector=dict(group.selector.matchLabels), group=name,
                                     allow_empty=True, **plan_.model_dump())
            rollout_id = new_rollout_id()
            try:
                await asyncio.to_thread(self.director.release_targets, group.release)
                await self._supersede(mine, f"{who} (superseded by {rollout_id})")
                await self.start(request, who, rollout_id)
            except (NotFound, Conflict) as exc:
                log.warning("group %s: cannot roll out %s yet: %s", name, group.release, exc.message)
                waiting.append(name)
                continue
            log.info("group %s: rollout %s of %s from commit %s", name, rollout_id, group.release, commit[:12])
        return waiting

    async def workloads_from_git(self, groups: Mapping[str, GroupSpec], sets: Mapping[str, dict[str, Any]],
                                 who: str) -> None:
        """Each group with a ``rollout:`` plan whose workload set in the accepted repository
        is not the one its last workload rollout moved gets a rollout of that set with the
        group's plan, superseding the group's active one. An abort with revert goes back to
        the set the last rollout moved."""
        async with self.db.transaction() as conn:
            existing = await rollout_heads(conn)  # newest first
        for name, group in sorted(groups.items()):
            workloads = sets.get(name)
            if group.rollout is None or workloads is None:
                continue
            mine = group_rollouts(existing, name, "workloads")
            release = revision(workloads)
            if (mine and mine[0].release == release) or (not mine and workloads == EMPTY):
                continue
            request = RolloutRequest(release=release, selector=dict(group.selector.matchLabels), group=name,
                                     allow_empty=True, **group.rollout.model_dump())
            rollout_id = new_rollout_id()
            await self._supersede(mine, f"{who} (superseded by {rollout_id})")
            try:
                await self.start(request, who, rollout_id, workloads=workloads,
                                 workloads_before=workloads_of(mine[0].spec) if mine else None)
            except Conflict as exc:
                log.warning("group %s: cannot roll out its workloads %s: %s", name, release, exc.message)
                continue
            log.info("group %s: rollout %s of workloads %s (%s)", name, rollout_id, release, who)

    async def _supersede(self, rollouts: Sequence[Row[Any]], why: str) -> None:
        for old in rollouts:
            if old.status in ACTIVE:
                with contextlib.suppress(Conflict):
                    await self.operate(old.id, "abort", why)

    async def operate(self, rollout_id: str, verb: str, who: str, *, revert: bool = False) -> RolloutRow:
        """pause, resume, approve, abort, or revert (an aborted rollout's devices go back to
        what they ran before: an abort without revert can be made good). Raises NotFound or
        Conflict (not possible now)."""
        if verb == "revert":
            return await self._revert_aborted(rollout_id, who)
        row: RolloutRow | None = None
        for _ in range(5):
            async with self.db.transaction() as conn:
                row = await get_rollout(conn, rollout_id)
                if row is None:
                    raise NotFound(f"rollout {rollout_id} not found")
                state = state_from_json(row.state)
                changed = self._verb(state, verb, who)
                reason = f"{who}: {verb}{' with revert' if revert else ''}"
                if await save_rollout(conn, rollout_id, row.version, self.clock.now(), state=state_to_json(changed),
                                      status=str(changed.status)):
                    await add_events(conn, rollout_id, [(verb, None, reason)], self.clock.now())
                    break
        else:
            raise Conflict(f"rollout {rollout_id} keeps changing; retry", code="concurrent_change")
        if verb == "abort" and revert:
            await self._revert(row)
        self._wake.set()
        return await self._fresh(rollout_id)

    async def _revert_aborted(self, rollout_id: str, who: str) -> RolloutRow:
        async with self.db.transaction(readonly=True) as conn:
            row = await get_rollout(conn, rollout_id)
        if row is None:
            raise NotFound(f"rollout {rollout_id} not found")
        if row.status != Status.ABORTED:
            raise Conflict(f"only an aborted rollout is reverted (this one is {row.status}); abort it with revert",
                           code="rollout_state")
        async with self.db.transaction() as conn:
            await add_events(conn, rollout_id, [("revert", None, f"{who}: revert")], self.clock.now())
        await self._revert(row)
        return await self._fresh(rollout_id)

    async def _fresh(self, rollout_id: str) -> RolloutRow:
        """The rollout as stored now, after a verb (a rollout is never deleted)."""
        async with self.db.transaction(readonly=True) as conn:
            fresh = await get_rollout(conn, rollout_id)
        assert fresh is not None
        return fresh

    @staticmethod
    def _verb(state: State, verb: str, who: str) -> State:
        terminal = state.status in (Status.COMPLETED, Status.ABORTED)
        if verb == "pause" and not terminal and state.status is not Status.HALTED:
            return replace(state, status=Status.PAUSED, reason=f"paused by {who}")
        if verb == "resume" and state.status in (Status.PAUSED, Status.HALTED):
            return replace(state, status=Status.RUNNING, reason=None)
        if verb == "approve" and state.status is Status.AWAITING_APPROVAL:
            return replace(state, approved_wave=state.wave, status=Status.RUNNING)
        if verb == "abort" and not terminal:
            return replace(state, status=Status.ABORTED, reason=f"aborted by {who}")
        raise Conflict(f"cannot {verb} a rollout that is {state.status}", code="rollout_state")

    async def _revert(self, row: RolloutRow) -> None:
        """Devices the rollout told go back to the release they ran before (the director
        assigns it again; the device switches back to that slot)."""
        state = state_from_json(row.state)
        if workloads_of(row.spec) is not None:
            await self._revert_workloads(row, [d for d, p in state.devices.items() if p.told_at is not None])
            return
        events = []
        for device_id, place in state.devices.items():
            previous = row.previous.get(device_id)
            if place.told_at is None or not previous:
                continue
            try:
                await self.director.revert(device_id, previous)
                events.append(("revert", device_id, f"back to {previous}"))
            except EdgefleetError as exc:
                events.append(("revert_failed", device_id, exc.message))
        async with self.db.transaction() as conn:
            await add_events(conn, row.id, events, self.clock.now())

    async def _revert_workloads(self, row: RolloutRow, told: list[str]) -> None:
        before = row.spec.get("workloads_before")
        events: list[tuple[str, str | None, str]]
        if not isinstance(before, dict):
            events = [("revert_failed", None, "no workload set before this rollout to go back to")]
        else:
            reverted = await self.director.assign_workloads(told, before)
            events = [("revert", d, f"back to workloads {revision(before)}") for d in reverted]
        async with self.db.transaction() as conn:
            await add_events(conn, row.id, events, self.clock.now())

    def decoded(self, rollout_id: str, version: int) -> State | None:
        """The planner's state of that version of a rollout, if this controller holds it."""
        known = self._known.get(rollout_id)
        return known.state if known is not None and known.version == version else None

    def wake(self) -> None:
        """Step now rather than at the next tick: a device of this process failed (a halt
        should not wait for the tick). Other processes' news waits for the tick."""
        self._wake.set()

    async def run(self) -> None:
        """Step every ``tick_seconds``, but never sooner than ``PACE`` times the last step's
        duration after it (at most ``MAX_REST``): a step reads every device, so over a large
        fleet under load the controller would otherwise take the server's time from the
        devices it is updating. A wake (a failure in this process) steps at once."""
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()  # news that arrives during the step wakes the next one
            began = loop.time()
            try:
                with self.metrics.rollout_ticks.time():
                    await self.tick()
            except (StoreError, EdgefleetError) as exc:
                log.warning("rollout controller step failed, will retry: %s", exc)
            with contextlib.suppress(TimeoutError):
                rest = max(self.tick_seconds, min(MAX_REST, PACE * (loop.time() - began)))
                await asyncio.wait_for(self._wake.wait(), rest)

    async def tick(self) -> int:
        """One step of every active rollout, if this process leads; returns decisions made.

        Completed rollouts are followed too (every ``FOLLOW_EVERY`` ticks; the newest per
        selection, at most ``FOLLOWED``): offline devices that return are counted, and a
        device that joins their selection later, and that no rollout has assigned anything
        yet, gets their release. Halted rollouts are followed as often (the newest
        ``FOLLOWED``), for their accounting only, while a device of theirs is not judged
        yet: a device that commits after the halt counts as succeeded (an aborted one is
        not: with revert its devices go back, and "failed" would be a lie). Devices read
        once per tick for all rollouts."""
        if not await self.leadership.held():
            return 0
        self._ticks += 1
        async with self.db.transaction(readonly=True) as conn:
            heads = await rollout_heads(conn, statuses=(*ACTIVE, Status.COMPLETED, Status.HALTED))
        due, followed, stopped = [], set[str](), 0
        for head in heads:  # newest first
            if head.status == Status.HALTED:
                known = self._known.get(head.id)
                settled = known is not None and known.version == head.version and all(
                    place.state in FINAL for place in known.state.devices.values())
                stopped += 1
                if settled or stopped > FOLLOWED or self._ticks % FOLLOW_EVERY:
                    continue
            elif head.status == Status.COMPLETED:
                key = json.dumps([head.selector, head.spec.get("group"), _kind(head.spec)], sort_keys=True)
                if key in followed or len(followed) >= FOLLOWED:
                    continue
                followed.add(key)
                if self._ticks % FOLLOW_EVERY:
                    continue
            due.append(head)
        current = {h.id for h in heads}
        self._known = {k: v for k, v in self._known.items() if k in current}
        if not due:
            return 0
        async with self.db.transaction(readonly=True) as conn:
            devices, self._looks = look(await rollout_devices(conn), self.presence, self._looks)
        self._stepped = (self.clock.monotonic(), devices)
        decisions, taken = 0, set[str]()
        for head in due:
            known = self._known.get(head.id)
            if known is None or known.version != head.version:  # changed elsewhere (or new)
                async with self.db.transaction(readonly=True) as conn:
                    found = await get_rollout(conn, head.id)
                if found is None:
                    continue
                known = self._known[head.id] = Known.of(found)
            count, told = await self._step(known, devices, taken)
            decisions += count
            taken |= told
        return decisions

    async def _step(self, row: Known, everyone: Sequence[Seen], taken: set[str]) -> tuple[int, set[str]]:
        """Plan and apply one step; returns the decisions made and the devices told a release
        now."""
        request = request_of(row.spec)
        workloads = workloads_of(row.spec)
        if workloads is not None:
            return await self._workload_step(row, request, workloads, everyone), set()
        spec = replace(spec_from_request(request), attestation_required=self.attestation_required)
        state = row.state
        devices = [d for d in everyone if _selected(d, row.selector, request.group, request.from_releases, state)]
        if state.status is Status.COMPLETED:  # only its own devices, and joiners nobody assigned
            devices = [d for d in devices if d.id in state.devices or (d.assigned is None and d.id not in taken)]
        observations = [d.observation for d in devices]
        now = self.clock.now()
        new_state, decisions = plan(spec, state, observations, now)
        previous = dict(row.previous)
        running = {o.id: o.running_version for o in observations}
        for decision in decisions:
            if decision.kind == "assign" and decision.device_id is not None:
                previous.setdefault(decision.device_id, running.get(decision.device_id))
        if (new_state != state or previous != row.previous) and not await self._save(row, new_state, decisions,
                                                                                     previous, now):
            return 0, set()  # another controller took this step
        told = {d.device_id for d in decisions if d.kind == "assign" and d.device_id is not None}
        if state.status is Status.HALTED:
            return len(decisions), told  # followed for its accounting; it tells nobody anything
        if new_state.status is not Status.ABORTED:
            # Every device the plan told has the release in its director metadata. Idempotent:
            # a controller that died between saving a step and assigning is made good here.
            # A completed rollout only makes good its joiners (never assigned anything): its
            # other devices may since have been moved on by a newer rollout.
            assigned = {d.id: d.assigned for d in devices}
            await self._assign([d for d, p in new_state.devices.items()
                                if p.told_at is not None and d in assigned and assigned[d] != row.release
                                and (state.status is not Status.COMPLETED or assigned[d] is None)],
                               row.release)
        return len(decisions), told

    async def _workload_step(self, row: Known, request: RolloutRequest, workloads: dict[str, Any],
                             everyone: Sequence[Seen]) -> int:
        """One step of a workload rollout: the same planner, over what devices report of their
        workloads; told devices get the set in their signed configuration."""
        state = row.state
        devices = [d for d in everyone if _selected(d, row.selector, request.group)]  # joiners too
        async with self.db.transaction(readonly=True) as conn:
            reports = await workload_reports(conn, [d.id for d in devices])
        observations = [_workload_observation(d, row.release, workloads, reports.get(d.id)) for d in devices]
        now = self.clock.now()
        new_state, decisions = plan(spec_from_request(request), state, observations, now)
        if new_state != state and not await self._save(row, new_state, decisions, row.previous, now):
            return 0
        if state.status is Status.HALTED:
            return len(decisions)  # followed for its accounting only
        if new_state.status is not Status.ABORTED:
            # Idempotent like releases; a completed rollout only tells the joiners it told now.
            told = ({d.device_id for d in decisions if d.kind == "assign"} if state.status is Status.COMPLETED
                    else {d for d, p in new_state.devices.items() if p.told_at is not None})
            behind = sorted(d for d in told if d is not None and d in reports and reports[d][0] != workloads)
            if behind:
                await self.director.assign_workloads(behind, workloads)
        return len(decisions)

    async def _save(self, row: Known, state: State, decisions: Sequence[Any], previous: dict[str, Any],
                    now: datetime) -> bool:
        """Store a step (compare-and-swap), its audit events and any halt alert; False when
        another controller took this step."""
        # Encoded before the transaction: an entry per device, not to be built while holding
        # SQLite's writer turn. The previous releases are stored only when they changed.
        values = {"state": state_to_json(state), "status": str(state.status),
                  **({"previous": previous} if previous != row.previous else {})}
        async with self.db.transaction() as conn:
            if not await save_rollout(conn, row.id, row.version, now, **values):
                self._known.pop(row.id, None)
                return False
            await add_events(conn, row.id, [(d.kind, d.device_id, d.reason) for d in decisions], now)
            for decision in decisions:
                if decision.kind == "halt":
                    await self.alerts.raise_alert(conn, "rollout_halted", row.id,
                                                  f"rollout {row.id} of {row.release} halted: {decision.reason}",
                                                  {"rollout": row.id, "reason": decision.reason})
        self._known[row.id] = replace(row, version=row.version + 1, state=state, previous=previous)
        self.alerts.wake()
        return True

    async def _assign(self, device_ids: list[str], release: str) -> None:
        try:
            failed = await self.director.assign_many(device_ids, release)
        except EdgefleetError as exc:  # the release was withdrawn, the database went away: next tick
            log.warning("could not assign %s to %d devices: %s", release, len(device_ids), exc)
            return
        for device_id, error in failed.items():
            log.warning("could not assign %s to %s: %s", release, device_id, error)
