"""Property tests of the rollout planner (hypothesis): whatever the fleet does, disruption
budgets are never exceeded, no device is told outside its wave, a halted rollout never
advances; plus the behaviours operators rely on, step by step."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.rollouts.planner import (
    IN_FLIGHT,
    Amount,
    Budget,
    DeviceState,
    Observation,
    Spec,
    State,
    Status,
    Wave,
    plan,
)

T0 = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
RELEASE = "2026.12.0"


def fleet(count: int, sites: int) -> list[Observation]:
    return [Observation(f"dev-{i:03d}", {"site": f"site-{i % sites}", "ring": "canary" if i < 2 else "main"},
                        None, "2026.11.0", "idle", None) for i in range(count)]


def seen(obs: Observation, now: datetime, **changes: object) -> Observation:
    return replace(obs, last_seen=now, **changes)  # type: ignore[arg-type]


OUTCOMES = st.sampled_from(["commit", "commit", "commit", "rollback", "attest_fail", "silent", "offline"])


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Spec, list[Observation], list[dict[str, str]]]:
    waves = tuple(
        Wave(Amount(count=draw(st.integers(1, 5))) if draw(st.booleans())
             else Amount(percent=draw(st.sampled_from([10.0, 25.0, 50.0]))),
             success_threshold=draw(st.sampled_from([50.0, 90.0, 100.0])),
             bake=timedelta(minutes=draw(st.integers(0, 30))), deadline=timedelta(hours=2))
        for _ in range(draw(st.integers(1, 4))))
    budgets = (Budget("site", draw(st.integers(1, 3))),) if draw(st.booleans()) else ()
    spec = Spec(RELEASE, waves, failure_threshold=Amount(count=draw(st.integers(1, 6))),
                attestation_failures_tolerated=draw(st.integers(0, 1)), budgets=budgets,
                approval_between_waves=draw(st.booleans()))
    devices = fleet(draw(st.integers(1, 30)), draw(st.integers(1, 4)))
    ticks = draw(st.lists(st.dictionaries(st.sampled_from([d.id for d in devices]), OUTCOMES, max_size=8),
                          min_size=5, max_size=40))
    return spec, devices, ticks


@settings(max_examples=300, deadline=None)
@given(scenarios())
def test_budgets_waves_and_halts_hold_whatever_the_devices_do(
    scenario: tuple[Spec, list[Observation], list[dict[str, str]]]
) -> None:
    spec, observations, ticks = scenario
    by_id = {o.id: o for o in observations}
    state, now = State(), T0
    told: set[str] = set()
    for tick in ticks:
        # Devices told to update report something, as the fleet pleases.
        for device_id, outcome in tick.items():
            if device_id not in told:
                continue
            obs = by_id[device_id]
            if outcome == "commit":
                by_id[device_id] = seen(obs, now, running_version=RELEASE, update_state="committed",
                                        update_release=RELEASE, attestation="passed", attested_release=RELEASE)
            elif outcome == "rollback":
                by_id[device_id] = seen(obs, now, update_state="rolled_back", update_release=RELEASE)
            elif outcome == "attest_fail":
                by_id[device_id] = seen(obs, now, attestation="failed", attested_release=RELEASE)
            elif outcome == "silent":
                by_id[device_id] = seen(obs, now)
        before = state
        state, decisions = plan(spec, state, list(by_id.values()), now)
        assigned = [d.device_id for d in decisions if d.kind == "assign"]
        # A halted (or aborted) rollout never advances and never tells anyone.
        if before.status in (Status.HALTED, Status.ABORTED):
            assert assigned == []
            assert state.wave == before.wave
            assert state.status == before.status
        # Nobody is told twice, and nobody outside the current wave (or, once completed, the last).
        for device_id in assigned:
            assert device_id is not None
            assert device_id not in told
            assert state.devices[device_id].wave == state.wave
        told.update(d for d in assigned if d is not None)
        for device_id, place in state.devices.items():
            assert place.wave <= state.wave
            if place.state is not DeviceState.PENDING:
                assert device_id in told
        # Disruption budgets: in-flight devices per label value never exceed the budget.
        for budget in spec.budgets:
            counts: dict[str, int] = {}
            for device_id, place in state.devices.items():
                if place.state in IN_FLIGHT:
                    value = by_id[device_id].labels[budget.group_by]
                    counts[value] = counts.get(value, 0) + 1
            assert all(n <= budget.max_updating for n in counts.values()), counts
        if state.status is Status.AWAITING_APPROVAL and len(ticks) % 2:
            state = replace(state, approved_wave=state.wave)  # an operator approves, sometimes
        now += timedelta(minutes=10)


def commit(obs: Observation, now: datetime) -> Observation:
    return seen(obs, now, running_version=RELEASE, update_state="committed", update_release=RELEASE,
                attestation="passed", attested_release=RELEASE)


def test_clean_rollout_goes_wave_by_wave_and_honours_bake_time() -> None:
    spec = Spec(RELEASE, (Wave(Amount(count=1), bake=timedelta(minutes=30)), Wave(Amount(percent=100))))
    devices = {o.id: o for o in fleet(4, 2)}
    state, decisions = plan(spec, State(), list(devices.values()), T0)
    assert [d.device_id for d in decisions if d.kind == "assign"] == ["dev-000"]
    devices["dev-000"] = commit(devices["dev-000"], T0 + timedelta(minutes=5))
    state, decisions = plan(spec, state, list(devices.values()), T0 + timedelta(minutes=6))
    assert state.status is Status.BAKING
    state, decisions = plan(spec, state, list(devices.values()), T0 + timedelta(minutes=34))
    assert state.status is Status.BAKING  # baked from the commit at 12:06, not from the wave start
    state, decisions = plan(spec, state, list(devices.values()), T0 + timedelta(minutes=37))
    assert sorted(d.device_id for d in decisions if d.kind == "assign") == ["dev-001", "dev-002", "dev-003"]
    for device_id in ("dev-001", "dev-002", "dev-003"):
        devices[device_id] = commit(devices[device_id], T0 + timedelta(minutes=40))
    state, decisions = plan(spec, state, list(devices.values()), T0 + timedelta(minutes=41))
    assert state.status is Status.COMPLETED


def test_in_an_attesting_fleet_a_committed_device_succeeds_only_once_attested_against_the_release() -> None:
    spec = Spec(RELEASE, (Wave(Amount(count=2), deadline=timedelta(hours=1)),), attestation_required=True)
    devices = {o.id: o for o in fleet(2, 1)}
    state, _ = plan(spec, State(), list(devices.values()), T0)
    for device_id in devices:  # both commit; dev-001's last passing attestation was of the old release
        devices[device_id] = seen(commit(devices[device_id], T0), T0, attestation=None, attested_release=None)
    devices["dev-001"] = replace(devices["dev-001"], attestation="passed", attested_release="2026.11.0")
    state, _ = plan(spec, state, list(devices.values()), T0 + timedelta(minutes=1))
    assert {d: p.state for d, p in state.devices.items()} == {"dev-000": DeviceState.UPDATING,
                                                               "dev-001": DeviceState.UPDATING}
    devices["dev-000"] = commit(devices["dev-000"], T0 + timedelta(minutes=2))  # attested against RELEASE
    state, _ = plan(spec, state, list(devices.values()), T0 + timedelta(minutes=3))
    assert state.devices["dev-000"].state is DeviceState.SUCCEEDED
    state, _ = plan(spec, state, list(devices.values()), T0 + timedelta(hours=2))
    assert state.devices["dev-001"].state is DeviceState.TIMED_OUT
    assert state.devices["dev-001"].reason is not None
    assert "did not attest against it" in state.devices["dev-001"].reason
    # A fleet without TPMs: committing on health checks is success.
    unattested = {o.id: seen(commit(o, T0), T0, attestation=None, attested_release=None) for o in fleet(2, 1)}
    no_tpm = replace(spec, attestation_required=False)
    state, _ = plan(no_tpm, State(), list(unattested.values()), T0)
    state, _ = plan(no_tpm, state, list(unattested.values()), T0 + timedelta(minutes=1))
    assert all(p.state is DeviceState.SUCCEEDED for p in state.devices.values())


def test_first_failed_attestation_halts_before_the_next_wave() -> None:
    spec = Spec(RELEASE, (Wave(Amount(count=2)), Wave(Amount(percent=100))))
    devices = {o.id: o for o in fleet(6, 3)}
    state, _ = plan(spec, State(), list(devices.values()), T0)
    devices["dev-000"] = commit(devices["dev-000"], T0)
    devices["dev-001"] = seen(devices["dev-001"], T0, attestation="failed", attested_release=RELEASE)
    state, decisions = plan(spec, state, list(devices.values()), T0 + timedelta(minutes=1))
    assert state.status is Status.HALTED
    assert state.reason is not None
    assert "attestation failed on dev-001" in state.reason
    state, decisions = plan(spec, state, list(devices.values()), T0 + timedelta(hours=5))
    assert [d for d in decisions if d.kind == "assign"] == []
    assert state.wave == 0


def test_offline_devices_neither_stall_nor_fail_before_the_deadline() -> None:
    spec = Spec(RELEASE, (Wave(Amount(count=3), success_threshold=50, deadline=timedelta(hours=1)),
                          Wave(Amount(percent=100))), failure_threshold=Amount(count=5))
    devices = {o.id: o for o in fleet(6, 1)}
    state, _ = plan(spec, State(), list(devices.values()), T0)
    devices["dev-000"] = commit(devices["dev-000"], T0 + timedelta(minutes=1))
    devices["dev-001"] = commit(devices["dev-001"], T0 + timedelta(minutes=1))
    state, decisions = plan(spec, state, list(devices.values()), T0 + timedelta(minutes=30))
    assert state.devices["dev-002"].state is DeviceState.OFFLINE  # counted apart, not failed
    assert state.wave == 1  # the two that answered succeeded: the wave does not wait for it
    assert len([d for d in decisions if d.kind == "assign"]) == 3
    state, _ = plan(spec, state, list(devices.values()), T0 + timedelta(minutes=59))
    assert state.devices["dev-002"].state is DeviceState.OFFLINE
    state, _ = plan(spec, state, list(devices.values()), T0 + timedelta(minutes=61))
    assert state.devices["dev-002"].state is DeviceState.TIMED_OUT  # only at its deadline
    assert state.status is Status.RUNNING  # 1 of the 5 failures the threshold allows


def test_a_device_that_goes_silent_mid_update_is_offline_then_timed_out_never_updating_for_ever() -> None:
    spec = Spec(RELEASE, (Wave(Amount(count=1), deadline=timedelta(hours=1)), Wave(Amount(percent=100))),
                failure_threshold=Amount(count=1))
    devices = {o.id: o for o in fleet(3, 1)}
    state, _ = plan(spec, State(), list(devices.values()), T0)
    told = next(d for d, p in state.devices.items() if p.state is DeviceState.UPDATING)
    devices[told] = seen(devices[told], T0 + timedelta(seconds=30), update_state="trial_boot", update_release=RELEASE)
    state, _ = plan(spec, state, list(devices.values()), T0 + timedelta(minutes=1))
    assert state.devices[told].state is DeviceState.UPDATING
    state, _ = plan(spec, state, list(devices.values()), T0 + timedelta(minutes=10))  # nothing since its trial began
    assert state.devices[told].state is DeviceState.OFFLINE
    assert state.devices[told].reason == "silent since 2026-11-26T12:00:30+00:00, mid-update"
    assert state.status is Status.RUNNING  # not a success: the next wave waits
    assert state.wave == 0
    state, _ = plan(spec, state, list(devices.values()), T0 + timedelta(hours=1))
    assert state.devices[told].state is DeviceState.TIMED_OUT
    assert state.status is Status.HALTED


def test_an_offline_device_that_returns_catches_up() -> None:
    spec = Spec(RELEASE, (Wave(Amount(count=2)), Wave(Amount(percent=100))))
    devices = {o.id: o for o in fleet(3, 1)}
    state, _ = plan(spec, State(), list(devices.values()), T0)
    devices["dev-000"] = commit(devices["dev-000"], T0 + timedelta(minutes=1))
    state, _ = plan(spec, state, list(devices.values()), T0 + timedelta(minutes=2))
    devices["dev-002"] = commit(devices["dev-002"], T0 + timedelta(minutes=3))
    state, _ = plan(spec, state, list(devices.values()), T0 + timedelta(minutes=4))
    assert state.status is Status.COMPLETED
    assert state.devices["dev-001"].state is DeviceState.OFFLINE
    devices["dev-001"] = commit(devices["dev-001"], T0 + timedelta(hours=5))
    state, _ = plan(spec, state, list(devices.values()), T0 + timedelta(hours=5))
    assert state.devices["dev-001"].state is DeviceState.SUCCEEDED


def test_a_wave_whose_devices_are_all_offline_waits() -> None:
    spec = Spec(RELEASE, (Wave(Amount(count=2)), Wave(Amount(percent=100))))
    devices = {o.id: o for o in fleet(3, 1)}
    state, _ = plan(spec, State(), list(devices.values()), T0)
    state, decisions = plan(spec, state, list(devices.values()), T0 + timedelta(hours=1))
    assert {p.state for p in state.devices.values() if p.wave == 0} == {DeviceState.OFFLINE}
    assert (state.wave, state.status) == (0, Status.RUNNING)
    assert [d for d in decisions if d.kind == "assign"] == []


def test_a_wave_that_found_no_devices_bakes_from_its_start_and_moves_on() -> None:
    spec = Spec(RELEASE, (Wave(Amount(count=1), bake=timedelta(minutes=5)), Wave(Amount(percent=100))))
    state, _ = plan(spec, State(), [], T0)  # nobody in the selection yet
    state, _ = plan(spec, state, [], T0 + timedelta(minutes=1))
    assert (state.wave, state.status) == (0, Status.BAKING)
    devices = fleet(2, 1)  # they enrol while the empty first wave bakes
    state, decisions = plan(spec, state, devices, T0 + timedelta(minutes=6))
    assert (state.wave, state.status) == (1, Status.RUNNING)
    assert sorted(d.device_id for d in decisions if d.kind == "assign") == ["dev-000", "dev-001"]


def test_a_told_device_not_seen_yet_holds_its_wave_until_the_offline_grace_passes() -> None:
    spec = Spec(RELEASE, (Wave(Amount(count=2)), Wave(Amount(percent=100))), offline_after=timedelta(minutes=2))
    devices = {o.id: o for o in fleet(3, 1)}
    state, _ = plan(spec, State(), list(devices.values()), T0)
    devices["dev-000"] = commit(devices["dev-000"], T0 + timedelta(seconds=5))
    state, decisions = plan(spec, state, list(devices.values()), T0 + timedelta(seconds=10))
    assert state.devices["dev-001"].state is DeviceState.UPDATING  # between two check-ins, maybe
    assert state.wave == 0
    assert [d for d in decisions if d.kind == "assign"] == []
    state, decisions = plan(spec, state, list(devices.values()), T0 + timedelta(minutes=2))
    assert state.devices["dev-001"].state is DeviceState.OFFLINE
    assert state.wave == 1


def test_crossing_the_failure_threshold_halts() -> None:
    spec = Spec(RELEASE, (Wave(Amount(count=4), success_threshold=0), Wave(Amount(percent=100))),
                failure_threshold=Amount(count=2))
    devices = {o.id: o for o in fleet(8, 2)}
    state, _ = plan(spec, State(), list(devices.values()), T0)
    devices["dev-000"] = seen(devices["dev-000"], T0, update_state="rolled_back", update_release=RELEASE)
    state, _ = plan(spec, state, list(devices.values()), T0 + timedelta(minutes=1))
    assert state.status is Status.RUNNING
    devices["dev-001"] = seen(devices["dev-001"], T0, update_state="failed", update_release=RELEASE)
    state, _ = plan(spec, state, list(devices.values()), T0 + timedelta(minutes=2))
    assert state.status is Status.HALTED
    assert state.reason == "2 devices failed or timed out, threshold 2"


def test_device_joining_mid_rollout_waits_for_a_later_wave_or_gets_the_completed_release() -> None:
    spec = Spec(RELEASE, (Wave(Amount(count=1)), Wave(Amount(percent=100))))
    devices = {o.id: o for o in fleet(2, 1)}
    state, _ = plan(spec, State(), list(devices.values()), T0)
    newcomer = Observation("dev-new", {"site": "site-0"}, T0, "2026.11.0", "idle", None)
    devices["dev-new"] = newcomer
    state, decisions = plan(spec, state, list(devices.values()), T0 + timedelta(minutes=1))
    assert "dev-new" not in state.devices  # the canary wave is full: it waits for the next wave
    devices["dev-000"] = commit(devices["dev-000"], T0 + timedelta(minutes=2))
    state, decisions = plan(spec, state, list(devices.values()), T0 + timedelta(minutes=3))
    assert sorted(d.device_id for d in decisions if d.kind == "assign") == ["dev-001", "dev-new"]
    for device_id in ("dev-001", "dev-new"):
        devices[device_id] = commit(devices[device_id], T0 + timedelta(minutes=4))
    state, _ = plan(spec, state, list(devices.values()), T0 + timedelta(minutes=5))
    assert state.status is Status.COMPLETED
    devices["dev-late"] = Observation("dev-late", {"site": "site-0"}, T0, "2026.11.0", "idle", None)
    state, decisions = plan(spec, state, list(devices.values()), T0 + timedelta(minutes=6))
    assert [d.device_id for d in decisions if d.kind == "assign"] == ["dev-late"]


def test_approval_between_waves_is_waited_for() -> None:
    spec = Spec(RELEASE, (Wave(Amount(count=1)), Wave(Amount(percent=100))), approval_between_waves=True)
    devices = {o.id: o for o in fleet(3, 1)}
    state, _ = plan(spec, State(), list(devices.values()), T0)
    devices["dev-000"] = commit(devices["dev-000"], T0)
    state, decisions = plan(spec, state, list(devices.values()), T0 + timedelta(minutes=1))
    assert state.status is Status.AWAITING_APPROVAL
    state, decisions = plan(spec, state, list(devices.values()), T0 + timedelta(hours=3))
    assert [d for d in decisions if d.kind == "assign"] == []
    state, decisions = plan(spec, replace(state, approved_wave=0), list(devices.values()), T0 + timedelta(hours=4))
    assert len([d for d in decisions if d.kind == "assign"]) == 2
