"""Revocation reaches the edge: a revoked device is refused by the control plane at once
and by a real `edgefleet hub` process from its next pull of the fleet's CRL (an X.509
CRL the fleet CA signs), and, with the control plane gone, still after the hub restarts.
A list the fleet CA did not sign, or an older one replayed, changes nothing."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from edgefleet.cli.app import app
from edgefleet.credentials import Role
from edgefleet.errors import InvalidRequest
from edgefleet.hub.revocations import RevocationKeeper
from edgefleet.pki import create_ca
from edgefleet.pki.crl import Revoked, sign_crl, verify_crl
from tests.cli_helpers import server_args
from tests.conftest import Device, Fleet, start_fleet
from tests.test_telemetry_hub import HubProcess

NOW = datetime(2026, 12, 7, tzinfo=UTC)


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Fleet]:
    fleet = start_fleet(tmp_path / "plane", None)
    yield fleet
    fleet.close()


def ship(hub: HubProcess, plane: Fleet, device: Device, site: str, seq: int) -> httpx.Response:
    context = ssl.create_default_context(cafile=str(plane.settings.pki.ca_cert))
    context.load_cert_chain(str(device.directory / "cert.pem"), str(device.directory / "key.pem"))
    with httpx.Client(base_url=hub.url, verify=context, timeout=10) as client:
        return client.post(f"/api/v1/devices/{device.id}/telemetry", json={
            "batch_id": f"{device.id}:{seq}", "first_seq": seq, "at_ms": 1_795_000_000_000, "site": site,
            "records": [{"kind": "metric", "dt_ms": 0, "body": {"name": "edge_temp_celsius", "value": 21}}]})


def refused_for(answer: httpx.Response) -> tuple[int, str | None]:
    return answer.status_code, answer.json().get("error", {}).get("code") if answer.status_code >= 400 else None


def wait_for(condition: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_revoked_device_is_refused_by_the_server_and_a_running_hub_and_after_the_hub_restarts_offline(
        plane: Fleet, tmp_path: Path) -> None:
    hub = HubProcess(plane, tmp_path / "hub")
    hub.env["EDGEFLEET_HUB_REVOCATION_SYNC_SECONDS"] = "0.5"
    stolen, kept = plane.enroll(site="store-berlin"), plane.enroll(site="store-berlin")
    hub.start()
    try:
        assert refused_for(ship(hub, plane, stolen, "store-berlin", 1)) == (200, None)
        revoked = CliRunner().invoke(app, ["devices", "revoke", stolen.id, "--reason", "stolen from the store",
                                           "--yes", *server_args(plane)])
        assert revoked.exit_code == 0, revoked.output
        # The control plane refuses it at once.
        answer = stolen.client.get(f"/api/v1/devices/{stolen.id}/desired")
        assert refused_for(answer) == (401, "certificate_revoked")
        assert kept.client.get(f"/api/v1/devices/{kept.id}/desired").status_code in (200, 204)
        # The hub from its next sync.
        wait_for(lambda: refused_for(ship(hub, plane, stolen, "store-berlin", 2)) == (401, "certificate_revoked"),
                 "the hub to refuse the revoked device")
        assert refused_for(ship(hub, plane, kept, "store-berlin", 1)) == (200, None)
        shown = plane.client(role=Role.VIEWER).get(f"/api/v1/admin/devices/{stolen.id}").json()
        assert (shown["revoked"]["reason"], shown["revoked"]["revoked_by"]) == ("stolen from the store", "test-admin")
        hub.stop()
        plane.server.stop()  # the control plane is gone: the restarted hub cannot sync
        hub.start()
        assert refused_for(ship(hub, plane, stolen, "store-berlin", 3)) == (401, "certificate_revoked")
        assert refused_for(ship(hub, plane, kept, "store-berlin", 2)) == (200, None)
        wait_for(lambda: "revocation list not synced" in hub.logs[-1].read_text(), "the failed sync's log line")
        with httpx.Client(base_url=hub.url, verify=plane.tls(), timeout=10) as client:
            metrics = client.get("/metrics").text
        assert 'edgefleet_hub_refused_batches_total{reason="revoked"} 1.0' in metrics
        assert "edgefleet_hub_revocation_list_number 1.0" in metrics
    finally:
        hub.stop()


def test_the_fleet_crl_lists_revoked_and_decommissioned_certificates_and_its_number_grows(plane: Fleet) -> None:
    first, second = plane.enroll(), plane.enroll()

    def crl() -> tuple[int, list[str]]:
        answer = plane.client().get("/api/v1/revocations.crl")
        assert (answer.status_code, answer.headers["content-type"]) == (200, "application/pkix-crl")
        listed = verify_crl(plane.settings.pki.ca_cert.read_bytes(), answer.content)  # the fleet CA signed it
        return listed.number, sorted(listed.serials)

    assert crl() == (0, [])
    admin = plane.client(role=Role.ADMIN)
    serial = admin.post(f"/api/v1/admin/devices/{first.id}/revoke", json={"reason": "returned"}).json()["serial"]
    number, serials = crl()
    assert serials == [serial]
    assert admin.post(f"/api/v1/admin/devices/{first.id}/revoke", json={}).status_code == 200  # again: no change
    assert crl() == (number, serials)
    assert admin.delete(f"/api/v1/admin/devices/{second.id}").status_code == 204
    grown, both = crl()
    assert grown > number
    assert len(both) == 2
    assert refused_for(second.client.get(f"/api/v1/devices/{second.id}/desired"))[0] == 401
    bad = admin.post(f"/api/v1/admin/devices/{first.id}/revoke", json={"reason": "two\nlines"})
    assert bad.status_code == 422  # a reason is one printable line: it goes into logs
    assert admin.post("/api/v1/admin/devices/dev-nobody/revoke", json={}).status_code == 404


def test_an_admin_revokes_from_the_dashboard_and_the_device_page_says_so(plane: Fleet) -> None:
    device = plane.enroll()
    with httpx.Client(base_url=plane.url, verify=plane.tls(), timeout=10) as browser:
        assert browser.post("/ui/login", data={"token": plane.tokens[Role.OPERATOR]}).status_code == 303
        assert browser.post(f"/ui/devices/{device.id}/revoke").status_code == 403  # an admin's verb
        assert 'id="revoke"' not in browser.get(f"/ui/devices/{device.id}").text
        assert browser.post("/ui/login", data={"token": plane.tokens[Role.ADMIN]}).status_code == 303
        assert 'id="revoke"' in browser.get(f"/ui/devices/{device.id}").text
        assert browser.post(f"/ui/devices/{device.id}/revoke").status_code == 303
        page = browser.get(f"/ui/devices/{device.id}").text
    assert 'id="revoked"' in page
    assert "by test-admin: revoked from the dashboard" in page
    assert 'id="revoke"' not in page  # once is enough
    assert refused_for(device.client.get(f"/api/v1/devices/{device.id}/desired")) == (401, "certificate_revoked")


def test_a_list_another_ca_signed_an_older_list_or_a_truncated_one_changes_nothing(tmp_path: Path) -> None:
    fleet, other = create_ca("fleet", NOW), create_ca("fleet", NOW)  # the same name: only the key tells them apart
    (tmp_path / "ca.pem").write_bytes(fleet.cert_pem)
    keeper = RevocationKeeper(tmp_path / "revocations.crl", tmp_path / "ca.pem")
    newer = sign_crl(fleet, 2, [Revoked("1a2b", NOW), Revoked("3c4d", NOW)], NOW)
    assert keeper.accept(newer)
    assert keeper.is_revoked("1a2b")
    assert not keeper.is_revoked("5e6f")
    for forged, code in ((sign_crl(other, 9, [], NOW), "bad_crl"),
                         (sign_crl(fleet, 1, [], NOW), "crl_rollback"),
                         (newer[:-10], "bad_crl"),
                         (b"\x00" * (5 << 20), "bad_crl")):
        with pytest.raises(InvalidRequest) as refused:
            keeper.accept(forged)
        assert refused.value.code == code
        assert (tmp_path / "revocations.crl").read_bytes() == newer
        assert keeper.number == 2
    assert not keeper.accept(sign_crl(fleet, 2, [], NOW))  # the same number: nothing new
    restarted = RevocationKeeper(tmp_path / "revocations.crl", tmp_path / "ca.pem")
    assert restarted.number == 2
    assert restarted.is_revoked("3c4d")
