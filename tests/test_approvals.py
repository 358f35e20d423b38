"""Enrollment approval, the production default (``ek_trust = "approval"``): a TPM whose EK
certificate chains to the configured vendor CA bundle binds its identity by itself; a
swtpm EK without one waits, with its fingerprint and the device's hardware facts, until an
operator approves or rejects it (CLI and API). Trust on first use is only ever set."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from edgefleet.attestation.structures import parse_public
from edgefleet.cli.app import app
from edgefleet.credentials import Role
from edgefleet.server.attestation import ek_fingerprint
from edgefleet.server.settings import ServerSettings
from tests.cli_helpers import server_args
from tests.conftest import Device, Fleet, start_fleet
from tests.test_ek_certificates import issue, swtpm_agent, vendor
from tests.tpm_world import tpm2_or_skip


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[tuple[Fleet, Any]]:
    tpm2_or_skip()
    default = ServerSettings(data_dir=tmp_path / "unused").ek_trust
    assert default == "approval"  # trust on first use is off unless someone sets it
    roots = tmp_path / "tpm-vendor-roots"
    roots.mkdir()
    trusted = vendor("Trusted")
    (roots / "root.pem").write_bytes(trusted[0].public_bytes(serialization.Encoding.PEM))
    (roots / "intermediate.pem").write_bytes(trusted[2].public_bytes(serialization.Encoding.PEM))
    fleet = start_fleet(tmp_path / "plane", None, ek_trust=default, tpm_vendor_roots=roots)
    yield fleet, trusted
    fleet.close()


def bind(device: Device, tpm: Any, certificate: bytes | None = None) -> httpx.Response:
    body = {"ek_public": base64.b64encode(tpm.endorsement_key()).decode(),
            "ak_public": base64.b64encode(tpm.attestation_key()).decode()}
    if certificate is not None:
        body["ek_certificate"] = base64.b64encode(certificate).decode()
    return device.client.post(f"/api/v1/devices/{device.id}/attestation/identity", json=body)


def code(answer: httpx.Response) -> tuple[int, str | None]:
    return answer.status_code, answer.json()["error"]["code"] if answer.status_code >= 400 else None


def cli(plane: Fleet, *words: str) -> Any:
    return CliRunner().invoke(app, [*words, *server_args(plane)])


def test_an_ek_the_vendor_bundle_certifies_binds_without_an_operator(plane: tuple[Fleet, Any],
                                                                     emulator: Any) -> None:
    fleet, (_, _, intermediate, intermediate_key) = plane
    tpm = tpm2_or_skip()(emulator.tcti)
    certificate, _ = issue("TPM EK", parse_public(tpm.endorsement_key()).key,
                           (intermediate.subject, intermediate_key), False)
    device = fleet.enroll(hardware_type="hw-x86")
    assert code(bind(device, tpm, certificate.public_bytes(serialization.Encoding.DER))) == (200, None)
    assert fleet.rows()["approvals"] == []  # nobody was asked


def test_a_swtpm_ek_waits_with_its_facts_until_an_operator_approves_it_from_the_cli(plane: tuple[Fleet, Any],
                                                                                   emulator: Any) -> None:
    fleet, _ = plane
    tpm = tpm2_or_skip()(emulator.tcti)
    device = fleet.enroll(site="store-9", hardware_type="hw-x86")
    fingerprint = ek_fingerprint(tpm.endorsement_key())
    for _ in range(2):  # asking again files nothing new
        waiting = bind(device, tpm)
        assert code(waiting) == (403, "ek_pending_approval")
    rows = fleet.rows()
    assert rows["attestation_identities"] == []  # no challenge was issued
    assert [(r["device_id"], r["fingerprint"], r["state"]) for r in rows["approvals"]] == [
        (device.id, fingerprint, "pending")]
    listed = cli(fleet, "devices", "pending", "--json")
    assert listed.exit_code == 0, listed.output
    assert '"reason": "the TPM sent no EK certificate"' in listed.output
    assert '"site": "store-9"' in listed.output
    assert '"hardware_type": "hw-x86"' in listed.output
    table = cli(fleet, "devices", "pending")
    assert device.id in table.output
    wrong = cli(fleet, "devices", "approve", device.id, "--fingerprint", "0" * 64)
    assert wrong.exit_code == 1
    assert "nothing of" in wrong.output
    assert "Traceback" not in wrong.output
    assert cli(fleet, "devices", "approve", device.id, "--fingerprint", fingerprint).exit_code == 0
    assert code(bind(device, tpm)) == (200, None)  # the credential challenge: it binds now
    assert [r["state"] for r in fleet.rows()["attestation_identities"]] == ["pending"]  # until it activates
    audit = fleet.client(role=Role.ADMIN).get("/api/v1/admin/audit", params={"device": device.id}).json()
    assert {(e["action"], e["outcome"]) for e in audit["entries"]} >= {
        ("ek approval requested", "pending"), ("POST /api/v1/admin/devices/{device_id}/approve", "ok")}


def test_another_device_presenting_an_ek_already_asked_for_changes_nothing(plane: tuple[Fleet, Any],
                                                                          emulator: Any) -> None:
    fleet, _ = plane
    tpm = tpm2_or_skip()(emulator.tcti)
    first, second = fleet.enroll(), fleet.enroll()
    assert code(bind(first, tpm)) == (403, "ek_pending_approval")
    assert fleet.client(role=Role.ADMIN).post(f"/api/v1/admin/devices/{first.id}/approve", json={}).status_code == 200
    before = fleet.rows()["approvals"]
    assert code(bind(second, tpm)) == (409, "ek_in_use")  # the same TPM's EK, from another enrolled device
    assert fleet.rows()["approvals"] == before  # the first device's approval stands
    assert code(bind(first, tpm)) == (200, None)


def test_a_rejected_ek_never_binds(plane: tuple[Fleet, Any], emulator: Any) -> None:
    fleet, _ = plane
    tpm = tpm2_or_skip()(emulator.tcti)
    device = fleet.enroll()
    assert code(bind(device, tpm)) == (403, "ek_pending_approval")
    admin = fleet.client(role=Role.ADMIN)
    assert fleet.client(role=Role.OPERATOR).post(f"/api/v1/admin/devices/{device.id}/reject",
                                                 json={}).status_code == 403  # an admin's decision
    rejected = admin.post(f"/api/v1/admin/devices/{device.id}/reject", json={})
    assert (rejected.status_code, rejected.json()["state"], rejected.json()["decided_by"]) == (
        200, "rejected", "test-admin")
    assert code(bind(device, tpm)) == (403, "ek_rejected")
    assert code(admin.post(f"/api/v1/admin/devices/{device.id}/approve", json={})) == (404, "not_found")
    assert fleet.rows()["attestation_identities"] == []


def test_an_agent_waits_for_approval_and_attests_once_approved(plane: tuple[Fleet, Any], emulator: Any,
                                                               tmp_path: Path) -> None:
    fleet, _ = plane
    agent = swtpm_agent(fleet, emulator, tmp_path, "hw-approve-1")
    admin = fleet.client(role=Role.ADMIN)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            await until(lambda: bool(fleet.rows()["approvals"]), "the request for approval")
            await until(lambda: "edgefleet devices approve" in (agent.last_error or ""), "the agent's hint")
            assert agent.attested is None
            device_id = (await asyncio.to_thread(fleet.rows))["approvals"][0]["device_id"]
            approved = await asyncio.to_thread(admin.post, f"/api/v1/admin/devices/{device_id}/approve", json={})
            assert approved.status_code == 200
            await until(lambda: agent.attested is not None, "the first attestation after the approval")
        finally:
            stop.set()
            await asyncio.wait_for(task, 30)

    asyncio.run(scenario())
    assert [r["state"] for r in fleet.rows()["attestation_identities"]] == ["active"]


async def until(condition: Any, what: str, timeout: float = 60) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(condition):
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def test_an_admin_approves_from_the_dashboard_the_tpm_whose_fingerprint_it_shows(plane: tuple[Fleet, Any],
                                                                                emulator: Any) -> None:
    fleet, _ = plane
    tpm = tpm2_or_skip()(emulator.tcti)
    device = fleet.enroll(site="store-4")
    fingerprint = ek_fingerprint(tpm.endorsement_key())
    assert code(bind(device, tpm)) == (403, "ek_pending_approval")
    with httpx.Client(base_url=fleet.url, verify=fleet.tls(), timeout=10) as browser:
        assert browser.post("/ui/login", data={"token": fleet.tokens[Role.VIEWER]}).status_code == 303
        page = browser.get("/ui/approvals").text
        assert fingerprint in page
        assert "store-4" in page
        assert 'class="approve"' not in page  # an admin's decision
        assert browser.post(f"/ui/approvals/{device.id}/approve", data={"fingerprint": fingerprint}).status_code == 403
        assert browser.post("/ui/login", data={"token": fleet.tokens[Role.ADMIN]}).status_code == 303
        assert 'class="approve"' in browser.get("/ui/approvals").text
        other = "f" * 64  # a fingerprint the admin did not see: nothing is decided
        assert browser.post(f"/ui/approvals/{device.id}/approve", data={"fingerprint": other}).status_code == 404
        assert browser.post(f"/ui/approvals/{device.id}/approve", data={"fingerprint": fingerprint}).status_code == 303
        assert "Nothing waits for approval." in browser.get("/ui/approvals").text
    assert code(bind(device, tpm)) == (200, None)
