"""The device API: check-in, long poll, status reports, and that devices stay in their lane."""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from typing import Any

import httpx
import pytest

from edgefleet.pki import create_ca, issue_device_certificate, make_csr, new_device_key
from edgefleet.server.longpoll import REREADS
from edgefleet.server.routes import device as route
from tests.cli_helpers import cli, server_args
from tests.conftest import Fleet


def test_checkin_with_current_version_is_204_and_new_desired_state_is_200(fleet: Fleet) -> None:
    device = fleet.enroll()
    first = device.client.get(f"/api/v1/devices/{device.id}/desired")
    assert first.status_code == 200
    assert first.json() == {"version": 0, "document": {}}
    assert device.client.get(f"/api/v1/devices/{device.id}/desired", params={"known": 0}).status_code == 204
    operator = fleet.client(role="operator")
    operator.put(f"/api/v1/admin/devices/{device.id}/desired", json={"document": {"release": "2.0"}})
    update = device.client.get(f"/api/v1/devices/{device.id}/desired", params={"known": 0})
    assert update.status_code == 200
    assert update.json() == {"version": 1, "document": {"release": "2.0"}}


def test_long_poll_answers_as_soon_as_the_desired_state_changes(fleet: Fleet) -> None:
    device = fleet.enroll()
    result: dict[str, httpx.Response] = {}

    def poll() -> None:
        result["r"] = device.client.get(f"/api/v1/devices/{device.id}/desired", params={"known": 0, "wait": 30})

    poller = threading.Thread(target=poll)
    poller.start()
    time.sleep(0.3)
    assert poller.is_alive()  # still waiting: nothing new yet
    fleet.client(role="operator").put(f"/api/v1/admin/devices/{device.id}/desired", json={"document": {"release": "a"}})
    poller.join(10)
    assert not poller.is_alive()
    assert result["r"].status_code == 200
    assert result["r"].json()["version"] == 1


def test_long_polls_woken_together_read_the_database_a_few_at_a_time_and_all_get_the_change(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    devices = [fleet.enroll() for _ in range(REREADS * 2 + 4)]
    real, inside, most = route.fresh_device_state, [0], [0]

    async def slow_read(state: Any, device_id: str) -> Any:  # a busy database: each read takes a while
        inside[0] += 1
        most[0] = max(most[0], inside[0])
        try:
            await asyncio.sleep(0.4)
            return await real(state, device_id)
        finally:
            inside[0] -= 1

    monkeypatch.setattr(route, "fresh_device_state", slow_read)
    answers: dict[str, httpx.Response] = {}

    def poll(device: Any) -> None:
        answers[device.id] = device.client.get(f"/api/v1/devices/{device.id}/desired",
                                               params={"known": 0, "wait": 30})

    pollers = [threading.Thread(target=poll, args=(d,)) for d in devices]
    for poller in pollers:
        poller.start()
    time.sleep(0.5)
    operator = fleet.client(role="operator")
    for device in devices:  # every change lands while the first woken reads are still running
        operator.put(f"/api/v1/admin/devices/{device.id}/desired", json={"document": {"release": "wave-1"}})
    for poller in pollers:
        poller.join(30)
    assert {d: (r.status_code, r.json()) for d, r in answers.items()} == {
        d.id: (200, {"version": 1, "document": {"release": "wave-1"}}) for d in devices}
    assert most[0] == REREADS


def test_long_poll_ends_with_204_when_nothing_changes(fleet: Fleet) -> None:
    device = fleet.enroll()
    response = device.client.get(f"/api/v1/devices/{device.id}/desired", params={"known": 0, "wait": 0.6})
    assert response.status_code == 204


def test_checkin_marks_the_device_seen(fleet: Fleet) -> None:
    device = fleet.enroll()
    viewer = fleet.client(role="viewer")
    assert viewer.get(f"/api/v1/admin/devices/{device.id}").json()["last_seen_at"] is None
    device.client.get(f"/api/v1/devices/{device.id}/desired", params={"known": 0})
    assert viewer.get(f"/api/v1/admin/devices/{device.id}").json()["last_seen_at"] is not None


def test_status_report_replay_and_stale_reports_are_ignored_idempotently(fleet: Fleet) -> None:
    device = fleet.enroll()
    url = f"/api/v1/devices/{device.id}/status"
    fresh = {"attestation_expires_in_seconds": None, "challenge": None}  # this fleet does not require attestation
    assert device.client.post(url, json={"seq": 5, "health": "healthy", "running_version": "2"}).json() == {
        "accepted": True, "seq": 5, **fresh}
    before = fleet.rows()
    stale = {"accepted": False, "seq": 5, **fresh}
    assert device.client.post(url, json={"seq": 5, "health": "unhealthy"}).json() == stale
    assert device.client.post(url, json={"seq": 3, "health": "unhealthy"}).json() == stale
    assert fleet.rows() == before
    record = device.client.get(f"/api/v1/devices/{device.id}").json()
    assert (record["health"], record["running_version"], record["status_seq"]) == ("healthy", "2", 5)


def test_a_device_turning_unhealthy_wakes_the_rollout_controller_once_per_turn(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = fleet.enroll()
    woken: list[int] = []
    rollouts = fleet.server.app.state.edgefleet.rollouts  # a halt must not wait for the next tick
    monkeypatch.setattr(rollouts, "wake", lambda: woken.append(1))
    url = f"/api/v1/devices/{device.id}/status"
    finding = {"name": "app", "required": True, "detail": "exit status 1"}
    for seq, health, wakes in ((1, "healthy", 0), (2, "unhealthy", 1), (3, "unhealthy", 1), (2, "healthy", 1),
                               (4, "degraded", 1), (5, "unhealthy", 2)):
        findings = [finding] if health == "unhealthy" else []
        device.client.post(url, json={"seq": seq, "health": health, "health_findings": findings})
        assert len(woken) == wakes, (seq, health)


def test_device_cannot_read_or_write_another_devices_records(fleet: Fleet) -> None:
    mallory, victim = fleet.enroll(), fleet.enroll()
    before = fleet.rows()
    for method, path, body in [
        ("GET", f"/api/v1/devices/{victim.id}", None),
        ("GET", f"/api/v1/devices/{victim.id}/desired", None),
        ("POST", f"/api/v1/devices/{victim.id}/status", {"seq": 99, "health": "unhealthy"}),
    ]:
        response = mallory.client.request(method, path, json=body)
        assert response.status_code == 403, path
        assert response.json()["error"]["code"] == "not_your_device"
    assert fleet.rows() == before


def test_device_endpoints_refuse_requests_without_a_client_certificate(fleet: Fleet) -> None:
    device = fleet.enroll()
    anonymous = fleet.client()
    before = fleet.rows()
    assert anonymous.get(f"/api/v1/devices/{device.id}/desired").status_code == 401
    assert anonymous.post(f"/api/v1/devices/{device.id}/status", json={"seq": 1}).status_code == 401
    assert fleet.rows() == before


def test_client_certificate_from_a_foreign_ca_fails_the_tls_handshake(fleet: Fleet, tmp_path) -> None:
    from datetime import UTC, datetime

    device = fleet.enroll()
    rogue_ca = create_ca("rogue", datetime.now(UTC))
    key = new_device_key()
    cert_pem, _ = issue_device_certificate(rogue_ca, make_csr(key, "x").decode(), device.id, datetime.now(UTC), 30)
    (tmp_path / "c.pem").write_bytes(cert_pem)
    (tmp_path / "k.pem").write_bytes(key)
    rogue = fleet.client(cert=tmp_path / "c.pem", key=tmp_path / "k.pem")
    with pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError, ssl.SSLError)):
        rogue.get(f"/api/v1/devices/{device.id}/desired")


def test_decommissioned_device_loses_access_immediately(fleet: Fleet) -> None:
    device = fleet.enroll()
    assert device.client.get(f"/api/v1/devices/{device.id}/desired").status_code == 200
    cli("devices", "decommission", device.id, "--yes", *server_args(fleet))
    response = device.client.get(f"/api/v1/devices/{device.id}/desired")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "decommissioned"  # so it erases its credentials and stops
    assert fleet.client(role="admin").delete(f"/api/v1/admin/devices/{device.id}").status_code == 404


def test_device_reads_its_own_record(fleet: Fleet) -> None:
    device = fleet.enroll(site="pop-1")
    record = device.client.get(f"/api/v1/devices/{device.id}")
    assert record.status_code == 200
    assert record.json()["id"] == device.id
    assert record.json()["site"] == "pop-1"


def update_report(phase: str, seqs: range) -> dict[str, object]:
    events = [{"seq": s, "phase": p, "at": f"2026-11-26T12:00:{s:02d}+00:00", "release": "2.0", "reason": f"step {s}"}
              for s, p in zip(seqs, ["downloading", "downloaded", "installing", "installed", "rebooting",
                                     "trial_boot", "health_checking", "attesting", "committed"], strict=False)]
    return {"phase": phase, "release": "2.0", "from_slot": "a", "to_slot": "b", "events": events}


def test_update_history_is_stored_once_per_event_newest_first_and_goes_with_the_device(fleet: Fleet) -> None:
    device = fleet.enroll()
    url = f"/api/v1/devices/{device.id}/status"
    viewer = fleet.client(role="viewer")
    assert device.client.post(url, json={"seq": 1, "update_state": "installing",
                                         "update": update_report("installing", range(1, 4))}).json()["accepted"]
    # Reports repeat the recent history; each event is stored once.
    assert device.client.post(url, json={"seq": 2, "update_state": "committed",
                                         "update": update_report("committed", range(1, 10))}).json()["accepted"]
    before = fleet.rows()
    stale = {"seq": 1, "update_state": "failed", "update": {**update_report("failed", range(1, 10)),
             "events": [{"seq": 10, "phase": "failed", "at": "2026-11-26T12:01:00+00:00"}]}}
    assert not device.client.post(url, json=stale).json()["accepted"]
    assert fleet.rows() == before  # a stale report adds no history either
    history = viewer.get(f"/api/v1/admin/devices/{device.id}/updates").json()
    assert [e["seq"] for e in history["events"]] == list(range(9, 0, -1))
    assert history["events"][0]["phase"] == "committed"
    record = viewer.get(f"/api/v1/admin/devices/{device.id}").json()
    assert record["update"]["to_slot"] == "b"
    assert "events" not in record["update"]
    assert viewer.get("/api/v1/admin/devices/dev-nope/updates").status_code == 404
    assert fleet.client(role="admin").delete(f"/api/v1/admin/devices/{device.id}").status_code == 204
    assert not [r for r in fleet.rows()["update_events"] if r["device_id"] == device.id]


def test_malformed_update_reports_are_refused_and_change_nothing(fleet: Fleet) -> None:
    device = fleet.enroll()
    url = f"/api/v1/devices/{device.id}/status"
    before = fleet.rows()
    for bad in ({"phase": "Rolled Back!"}, {"phase": "idle", "to_slot": "c"},
                {"phase": "idle", "events": [{"seq": 0, "phase": "idle", "at": "2026-11-26T12:00:00Z"}]},
                {"phase": "idle", "events": [{"seq": 1, "phase": "idle", "at": "yesterday"}]},
                {"phase": "idle", "reason": "x" * 5000}):
        assert device.client.post(url, json={"seq": 1, "update": bad}).status_code == 422, bad
    assert fleet.rows() == before
