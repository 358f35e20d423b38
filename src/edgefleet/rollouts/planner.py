"""The wave rollout planner: state, time and device observations in, a new state and
decisions out. Pure: no clock, no database, no network; the controller applies the
decisions through the director and stores the state.

Per device, in the wave it was placed in:

    pending    placed in the wave, not yet told (waiting for the disruption budget)
    updating   told to install the release; no verdict yet
    offline    told, but not seen since the wave started, and the offline grace has passed
               since it was told (never "failed" before the deadline; the wave does not wait
               for it: it is judged on the devices that answered)
    succeeded  runs the release, committed, and attested against the release's measurements
    failed     rolled back, update failed, or attestation failed; or, after it succeeded,
               a failed quote or an unhealthy report on the release
    timed_out  no verdict by the wave's deadline

The rollout halts at once on a failed attestation beyond the tolerance, or when failures
cross the failure threshold; a halted rollout never places or tells another device.
Between waves it bakes (the wave's devices must stay healthy for the bake time after the
last one committed) and, if asked, waits for an operator's approval. A device that
succeeded is still watched: one that then fails a quote against the release, or reports
itself unhealthy on it, turns failed and counts like any failure (a failed quote halts at
once beyond its tolerance, default 0; unhealthy devices against the failure threshold).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from edgefleet.protocol.v1 import ATTESTATION_ROLLBACK


class DeviceState(StrEnum):
    PENDING = "pending"
    UPDATING = "updating"
    OFFLINE = "offline"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"


class Status(StrEnum):
    RUNNING = "running"
    BAKING = "baking"
    AWAITING_APPROVAL = "awaiting_approval"
    PAUSED = "paused"
    HALTED = "halted"
    COMPLETED = "completed"
    ABORTED = "aborted"


ATTESTATION_FAILED = ATTESTATION_ROLLBACK
FINAL = frozenset({DeviceState.SUCCEEDED, DeviceState.FAILED, DeviceState.TIMED_OUT})
IN_FLIGHT = frozenset({DeviceState.UPDATING, DeviceState.OFFLINE})
STOPPED = frozenset({Status.HALTED, Status.COMPLETED, Status.ABORTED})


@dataclass(frozen=True)
class Amount:
    """A count, or a percentage of a base (rounded up, at least 1 of a non-empty base)."""

    count: int | None = None
    percent: float | None = None

    def of(self, base: int) -> int:
        if self.count is not None:
            return min(self.count, base)
        assert self.percent is not None
        return min(base, max(1, math.ceil(base * self.percent / 100))) if base else 0


@dataclass(frozen=True)
class Wave:
    size: Amount
    selector: Mapping[str, str] = field(default_factory=dict)
    success_threshold: float = 100.0  # percent of the wave's devices that must succeed
    bake: timedelta = timedelta(0)
    deadline: timedelta = timedelta(hours=24)


@dataclass(frozen=True)
class Budget:
    """At most ``max_updating`` devices in flight per value of label ``group_by``."""

    group_by: str
    max_updating: int


@dataclass(frozen=True)
class Spec:
    release: str
    waves: tuple[Wave, ...]
    failure_threshold: Amount = Amount(percent=10)  # of all devices in the rollout
    attestation_failures_tolerated: int = 0
    budgets: tuple[Budget, ...] = ()
    approval_between_waves: bool = False
    # A told device still unseen after this long counts as offline. Until then it is
    # updating: it may be between two check-ins, or on its way to the first after waking.
    offline_after: timedelta = timedelta(minutes=2)
    # The fleet attests (the server's attestation_required): a device succeeds only once it
    # attested against this release. Without TPMs, committing on health checks suffices.
    attestation_required: bool = False


@dataclass(frozen=True)
class Observation:
    """What the control plane knows of a device right now."""

    id: str
    labels: Mapping[str, str]
    last_seen: datetime | None
    running_version: str | None
    update_state: str  # the A/B phase the device reports
    update_release: str | None  # the release that phase is about
    attestation: Literal["passed", "failed"] | None = None
    attested_release: str | None = None
    health: str = "unknown"
    update_reason: str | None = None  # why the device's update is in its phase
    health_reason: str | None = None  # the first failing health finding, by name


@dataclass(frozen=True)
class Placement:
    wave: int
    state: DeviceState = DeviceState.PENDING
    reason: str | None = None
    told_at: datetime | None = None
    succeeded_at: datetime | None = None


@dataclass(frozen=True)
class State:
    status: Status = Status.RUNNING
    wave: int = -1  # the current wave; -1 before the first starts
    wave_started: datetime | None = None
    baking_since: datetime | None = None
    approved_wave: int = -1  # the operator approved moving past this wave
    devices: Mapping[str, Placement] = field(default_factory=dict)
    reason: str | None = None  # why halted, paused or aborted


@dataclass(frozen=True)
class Decision:
    kind: Literal["assign", "halt", "wave_started", "baking", "awaiting_approval", "completed", "device"]
    device_id: str | None = None
    reason: str = ""


def _halt(state: State, decisions: list[Decision], reason: str) -> tuple[State, list[Decision]]:
    return replace(state, status=Status.HALTED, reason=reason), [*decisions, Decision("halt", reason=reason)]


def matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _failure(spec: Spec, obs: Observation) -> str | None:
    """Why the device shows the release failed on it (a failed quote against it, or an update
    of it that failed or rolled back), or None."""
    if obs.attestation == "failed" and obs.attested_release == spec.release:
        return ATTESTATION_FAILED
    if obs.update_release == spec.release and obs.update_state in ("rolled_back", "failed"):
        if obs.update_reason == ATTESTATION_ROLLBACK:
            return ATTESTATION_FAILED
        why = f": {obs.update_reason}" if obs.update_reason else ""
        return f"update {obs.update_state} on the device{why}"
    return None


def _verdict(spec: Spec, place: Placement, obs: Observation | None, wave: Wave, now: datetime,
             started: datetime) -> tuple[DeviceState, str | None]:
    if place.state is DeviceState.SUCCEEDED and obs is not None:
        # Watched after its commit too, through the bake and later waves: a device that
        # fails a quote, turns unhealthy on the release or whose update of it fails after all
        # (a workload set that crashed later) counts against the rollout.
        if (failure := _failure(spec, obs)) is not None:
            return DeviceState.FAILED, failure
        if obs.health == "unhealthy" and obs.running_version == spec.release:
            return DeviceState.FAILED, f"unhealthy on the release: {obs.health_reason or 'a required check fails'}"
    if place.state in FINAL or place.state is DeviceState.PENDING:
        return place.state, place.reason
    if obs is not None and (failure := _failure(spec, obs)) is not None:
        return DeviceState.FAILED, failure
    committed = obs is not None and obs.running_version == spec.release and obs.update_state == "committed"
    attested = obs is not None and obs.attestation == "passed" and obs.attested_release == spec.release
    if committed and obs is not None and obs.attestation != "failed" and (attested or not spec.attestation_required):
        return DeviceState.SUCCEEDED, None
    if now >= started + wave.deadline:
        if committed:
            return DeviceState.TIMED_OUT, (f"committed {spec.release} but did not attest against it within the "
                                           f"wave's deadline of {wave.deadline}")
        return DeviceState.TIMED_OUT, f"no verdict within the wave's deadline of {wave.deadline}"
    last_seen = obs.last_seen if obs is not None else None
    if now < (place.told_at or started) + spec.offline_after:
        return DeviceState.UPDATING, None
    if last_seen is None or last_seen < started:
        return DeviceState.OFFLINE, "not seen since the wave started"
    if now - last_seen >= spec.offline_after:  # it answered once, then went quiet mid-update
        return DeviceState.OFFLINE, f"silent since {last_seen.isoformat(timespec='seconds')}, mid-update"
    return DeviceState.UPDATING, None


def _budget_allows(spec: Spec, devices: Mapping[str, Placement], labels: Mapping[str, Mapping[str, str]],
                   candidate: str) -> bool:
    for budget in spec.budgets:
        value = labels.get(candidate, {}).get(budget.group_by)
        in_flight = sum(1 for d, p in devices.items() if p.state in IN_FLIGHT
                        and labels.get(d, {}).get(budget.group_by) == value)
        if in_flight >= budget.max_updating:
            return False
    return True


def plan(spec: Spec, state: State, observations: Sequence[Observation], now: datetime) -> tuple[State,
                                                                                              list[Decision]]:
    """One step of the controller."""
    decisions: list[Decision] = []
    seen = {o.id: o for o in observations}
    labels = {o.id: o.labels for o in observations}
    devices = dict(state.devices)
    # 1. Accounting for every placed device (even when stopped: the view stays true).
    if state.wave >= 0 and state.wave_started is not None:
        for device_id, place in devices.items():
            if place.wave > state.wave:
                continue
            new_state, reason = _verdict(spec, place, seen.get(device_id), spec.waves[place.wave], now,
                                         state.wave_started if place.wave == state.wave else place.told_at or now)
            if new_state != place.state:
                devices[device_id] = replace(place, state=new_state, reason=reason,
                                             succeeded_at=now if new_state is DeviceState.SUCCEEDED else None)
                decisions.append(Decision("device", device_id, f"{new_state}{f': {reason}' if reason else ''}"))
    state = replace(state, devices=devices)
    if state.status is Status.COMPLETED:
        # Every wave passed: a device that joins now gets the release straight away.
        return _join_last_wave(spec, state, observations, now, decisions), decisions
    if state.status in STOPPED or state.status is Status.PAUSED:
        return state, decisions
    # 2. Halts.
    attestation_failures = [d for d, p in devices.items() if p.reason == ATTESTATION_FAILED]
    if len(attestation_failures) > spec.attestation_failures_tolerated:
        reason = (f"attestation failed on {', '.join(sorted(attestation_failures)[:5])} "
                  f"(tolerated: {spec.attestation_failures_tolerated})")
        return _halt(state, decisions, reason)
    total = len({o.id for o in observations} | set(devices))
    failures = sum(1 for p in devices.values() if p.state in (DeviceState.FAILED, DeviceState.TIMED_OUT))
    threshold = spec.failure_threshold.of(total)
    if failures and failures >= threshold:
        reason = f"{failures} devices failed or timed out, threshold {threshold}"
        return _halt(state, decisions, reason)
    # 3. Wave progress.
    if state.wave >= 0:
        members = [p for p in devices.values() if p.wave == state.wave]
        judged = [p for p in members if p.state in FINAL]
        offline = sum(1 for p in members if p.state is DeviceState.OFFLINE)
        # Offline devices do not hold the wave: it is judged on the devices that answered
        # (at least one must have); they stay in the rollout and catch up when they return,
        # or time out at their deadline.
        if len(judged) + offline == len(members) and (judged or not members):
            wave = spec.waves[state.wave]
            succeeded = [p for p in judged if p.state is DeviceState.SUCCEEDED]
            rate = 100.0 * len(succeeded) / len(judged) if judged else 100.0
            if rate < wave.success_threshold:
                reason = f"wave {state.wave + 1}: {rate:.0f}% succeeded, needs {wave.success_threshold:g}%"
                return _halt(state, decisions, reason)
            # An empty wave bakes from its start (with nobody to commit, it would bake forever).
            last_commit = max((p.succeeded_at for p in succeeded if p.succeeded_at),
                              default=state.wave_started or now)
            if now < last_commit + wave.bake:
                if state.status is not Status.BAKING:
                    decisions.append(Decision("baking", reason=f"wave {state.wave + 1} bakes until "
                                                              f"{(last_commit + wave.bake).isoformat()}"))
                return replace(state, status=Status.BAKING, baking_since=last_commit), decisions
            if state.wave + 1 >= len(spec.waves):
                return (replace(state, status=Status.COMPLETED, reason=None),
                        [*decisions, Decision("completed", reason="every wave succeeded")])
            if spec.approval_between_waves and state.approved_wave < state.wave:
                if state.status is not Status.AWAITING_APPROVAL:
                    decisions.append(Decision("awaiting_approval", reason=f"wave {state.wave + 1} done; "
                                                                          "approve to continue"))
                return replace(state, status=Status.AWAITING_APPROVAL), decisions
            state = _start_wave(spec, state, observations, now, decisions)
    else:
        state = _start_wave(spec, state, observations, now, decisions)
    if state.wave == len(spec.waves) - 1:
        state = _join_last_wave(spec, state, observations, None, decisions)
    # 4. Tell the current wave's pending devices, within the disruption budgets.
    devices = dict(state.devices)
    for device_id in sorted(d for d, p in devices.items() if p.wave == state.wave and p.state is DeviceState.PENDING):
        if not _budget_allows(spec, devices, labels, device_id):
            continue
        devices[device_id] = replace(devices[device_id], state=DeviceState.UPDATING, told_at=now)
        decisions.append(Decision("assign", device_id, f"wave {state.wave + 1}"))
    return replace(state, devices=devices, status=Status.RUNNING), decisions


def _join_last_wave(spec: Spec, state: State, observations: Sequence[Observation], now: datetime | None,
                    decisions: list[Decision]) -> State:
    """Devices that joined after the last wave started belong to it; once the rollout has
    completed (``now`` given) they are told at once."""
    last = len(spec.waves) - 1
    joined = sorted(o.id for o in observations if o.id not in state.devices and matches(o.labels,
                                                                                         spec.waves[last].selector))
    if not joined:
        return state
    placement = Placement(last) if now is None else Placement(last, DeviceState.UPDATING, told_at=now)
    for device_id in joined:
        decisions.append(Decision("assign", device_id, "joined after the rollout completed") if now is not None
                         else Decision("device", device_id, f"joined: placed in wave {last + 1}"))
    return replace(state, devices={**state.devices, **{d: placement for d in joined}})


def _start_wave(spec: Spec, state: State, observations: Sequence[Observation], now: datetime,
                decisions: list[Decision]) -> State:
    """Place devices in the next wave: its share of those not yet placed (devices that
    joined mid-rollout are simply not placed yet), matching its selector."""
    number = state.wave + 1
    wave = spec.waves[number]
    placed = set(state.devices)
    remaining = sorted(o.id for o in observations if o.id not in placed)
    eligible = [o.id for o in sorted(observations, key=lambda o: o.id)
                if o.id not in placed and matches(o.labels, wave.selector)]
    last = number == len(spec.waves) - 1
    chosen = eligible if last else eligible[:wave.size.of(len(remaining))]
    devices = {**state.devices, **{d: Placement(number) for d in chosen}}
    decisions.append(Decision("wave_started", reason=f"wave {number + 1}: {len(chosen)} devices"))
    return replace(state, wave=number, wave_started=now, baking_since=None, devices=devices)


def planned_waves(spec: Spec, state: State, observations: Sequence[Observation],
                  now: datetime) -> dict[int, list[str]]:
    """Who each wave not started yet would take were it to start now, as ``_start_wave``
    chooses (wave index -> device ids): a preview before a rollout starts, and of the waves
    a halted or waiting rollout has not reached. Devices that join or leave change it."""
    planned: dict[int, list[str]] = {}
    ahead = replace(state, devices=dict(state.devices))
    for number in range(state.wave + 1, len(spec.waves)):
        ahead = _start_wave(spec, ahead, observations, now, [])
        planned[number] = sorted(d for d, p in ahead.devices.items() if p.wave == number)
    return planned
