"""Rollout specs from the API, and the planner's state to and from the database's JSON."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from edgefleet.protocol.v1 import RolloutRequest
from edgefleet.rollouts.planner import Amount, Budget, DeviceState, Placement, Spec, State, Status, Wave


def amount(text: str) -> Amount:
    return Amount(percent=float(text[:-1])) if text.endswith("%") else Amount(count=int(text))


def spec_from_request(request: RolloutRequest) -> Spec:
    waves = tuple(Wave(amount(w.size), dict(w.selector), w.success_threshold, timedelta(seconds=w.bake_seconds),
                       timedelta(seconds=w.deadline_seconds)) for w in request.waves)
    return Spec(request.release, waves, amount(request.failure_threshold), request.attestation_failures_tolerated,
                tuple(Budget(b.group_by, b.max_updating) for b in request.budgets),
                request.approval_between_waves, timedelta(seconds=request.offline_after_seconds))


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def state_to_json(state: State) -> dict[str, Any]:
    return {
        "status": str(state.status), "wave": state.wave, "reason": state.reason, "approved_wave": state.approved_wave,
        "wave_started": state.wave_started.isoformat() if state.wave_started else None,
        "baking_since": state.baking_since.isoformat() if state.baking_since else None,
        "devices": {d: [p.wave, str(p.state), p.reason, p.told_at.isoformat() if p.told_at else None,
                        p.succeeded_at.isoformat() if p.succeeded_at else None] for d, p in state.devices.items()},
    }


def state_from_json(value: dict[str, Any]) -> State:
    devices = {d: Placement(int(p[0]), DeviceState(p[1]), p[2], _time(p[3]), _time(p[4]))
               for d, p in value.get("devices", {}).items()}
    return State(Status(value.get("status", "running")), int(value.get("wave", -1)), _time(value.get("wave_started")),
                 _time(value.get("baking_since")), int(value.get("approved_wave", -1)), devices, value.get("reason"))
