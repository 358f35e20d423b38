"""Device certificates are short-lived (30 days by default) and renew themselves over the
device's mTLS channel, only while the fleet trusts the device (not quarantined, freshly
attested when it has a TPM identity). The old certificate works until the new one is
presented, then never again (here, and at hubs through the CRL). An agent does it by
itself, and a stop between any two of its file steps is finished at the next start."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import ssl
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from typer.testing import CliRunner

from edgefleet.agent.hardware.swtpm import Swtpm
from edgefleet.agent.state import StateDir
from edgefleet.cli.app import app
from edgefleet.credentials import Role
from edgefleet.pki import make_csr, new_device_key
from edgefleet.pki.certs import load_ca, sign_possession
from edgefleet.pki.crl import verify_crl
from tests.cli_helpers import server_args
from tests.conftest import Device, Fleet, start_fleet
from tests.test_agent import make_agent, run_until
from tests.test_attestation_flow import attesting_plane, boot


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Fleet]:
    fleet = attesting_plane(tmp_path, None)
    yield fleet
    fleet.close()


def renew(device: Device, key_pem: bytes) -> httpx.Response:
    return device.client.post(f"/api/v1/devices/{device.id}/certificate",
                              json={"csr_pem": make_csr(key_pem, device.id).decode()})


def client_with(plane: Fleet, directory: Path, cert_pem: str, key_pem: bytes) -> httpx.Client:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "cert.pem").write_text(cert_pem)
    (directory / "key.pem").write_bytes(key_pem)
    return plane.client(cert=directory / "cert.pem", key=directory / "key.pem")


def serial_of(cert_pem: str) -> str:
    return format(x509.load_pem_x509_certificate(cert_pem.encode()).serial_number, "x")


def crl_serials(plane: Fleet) -> frozenset[str]:
    return verify_crl(plane.settings.pki.ca_cert.read_bytes(), plane.client().get("/api/v1/revocations.crl").content
                      ).serials


def test_an_attested_device_renews_and_its_old_certificate_stops_once_the_new_one_is_used(
        plane: Fleet, emulator: Swtpm, tmp_path: Path) -> None:
    dev, log = boot(plane, emulator)
    dev.enroll_identity()
    assert dev.attest(log).json() == {"passed": True}
    device = dev.device
    old_serial = serial_of((device.directory / "cert.pem").read_text())
    key = new_device_key()
    renewed = renew(device, key)
    assert renewed.status_code == 200, renewed.text
    cert_pem = renewed.json()["certificate_pem"]
    lifetime = (x509.load_pem_x509_certificate(cert_pem.encode()).not_valid_after_utc - plane.clock.now())
    assert 29.9 < lifetime.total_seconds() / 86400 <= 30  # short-lived by default
    desired = f"/api/v1/devices/{device.id}/desired"
    assert device.client.get(desired).status_code == 200  # the old one works until the new one is presented
    fresh = client_with(plane, tmp_path / "renewed", cert_pem, key)
    assert fresh.get(desired).status_code == 200  # presented: it is the device's certificate now
    with httpx.Client(base_url=plane.url, verify=plane.tls(device.directory / "cert.pem",
                                                           device.directory / "key.pem"), timeout=10) as old:
        refused = old.get(desired)
    assert (refused.status_code, refused.json()["error"]["code"]) == (401, "stale_certificate")
    assert refused.headers["connection"] == "close"  # the client's next connection presents what it holds now
    assert old_serial in crl_serials(plane)  # hubs refuse the old one too
    shown = plane.client(role=Role.VIEWER).get(f"/api/v1/admin/devices/{device.id}").json()
    assert shown["cert_not_after"].startswith(renewed.json()["not_after"][:16])
    audit = plane.client(role=Role.ADMIN).get("/api/v1/admin/audit", params={"device": device.id}).json()
    assert any(e["action"] == "certificate renewed" for e in audit["entries"])


def test_a_quarantined_device_or_one_whose_attestation_went_stale_cannot_renew(
        plane: Fleet, emulator: Swtpm, tmp_path: Path) -> None:
    tampered, log = boot(plane, emulator, kernel=b"vmlinuz 6.1 golden + implant")
    tampered.enroll_identity()
    assert tampered.attest(log).json() == {"passed": False}
    refused = renew(tampered.device, new_device_key())
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "quarantined")
    with Swtpm(tmp_path / "swtpm-2") as second:
        aging, golden = boot(plane, second)
        never = plane.enroll(hardware_type="hw-x86")  # enrolled, never attested
        aging.enroll_identity()
        assert aging.attest(golden).json() == {"passed": True}
        before = plane.rows()["devices"]
        plane.clock.advance(plane.settings.attestation_max_age_seconds + 1)
        for device in (aging.device, never):
            refused = renew(device, new_device_key())
            assert (refused.status_code, refused.json()["error"]["code"]) == (403, "attestation_required")
        plane.clock.advance(-plane.settings.attestation_max_age_seconds - 1)
        garbled = aging.device.client.post(f"/api/v1/devices/{aging.device.id}/certificate",
                                           json={"csr_pem": "-----BEGIN CERTIFICATE REQUEST-----\nAAAA"})
        assert garbled.status_code == 422  # freshly attested again, but not a CSR
    assert plane.rows()["devices"] == before  # nothing was issued to anyone


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    plane = start_fleet(tmp_path / "plane", None)
    yield plane
    plane.close()


def test_the_agent_renews_ahead_of_expiry_and_carries_on_with_the_new_certificate(
        fleet: Fleet, tmp_path: Path) -> None:
    # Renew when less than 30 days minus 3 s are left: 3 s after it enrolled.
    agent = make_agent(fleet, tmp_path, certificate_renew_before_seconds=30 * 86400 - 3)
    files = StateDir(agent.settings.state_dir)
    first: dict[str, Any] = {}

    def enrolled() -> bool:
        if files.cert.exists() and "serial" not in first:
            first["serial"] = serial_of(files.cert.read_text())
        return agent.checkins >= 1

    asyncio.run(run_until(agent, enrolled))
    asyncio.run(run_until(agent, lambda: agent.renewer.renewed >= 1, timeout=60))
    checkins = agent.checkins
    asyncio.run(run_until(agent, lambda: agent.checkins >= checkins + 2))  # with the new certificate
    held = serial_of(files.cert.read_text())
    assert held != first["serial"]
    assert not files.next_key.exists()
    assert not files.next_cert.exists()
    row = next(d for d in fleet.rows()["devices"] if d["id"] == agent.device_id)
    assert (row["cert_serial"], row["next_cert_serial"]) == (held, None)  # presented, so promoted
    assert first["serial"] in crl_serials(fleet)
    context = ssl.create_default_context(cafile=str(fleet.settings.pki.ca_cert))
    context.load_cert_chain(str(files.cert), str(files.key))
    with httpx.Client(base_url=fleet.url, verify=context, timeout=10) as client:  # the key on disk is the new one's
        assert client.get(f"/api/v1/devices/{agent.device_id}").status_code == 200


def test_a_renewal_stopped_between_any_two_steps_is_finished_or_dropped_at_the_next_start(tmp_path: Path) -> None:
    old_key, new_key = b"old key", b"new key"
    for stopped_after in ("key saved", "certificate saved", "key moved"):
        files = StateDir(tmp_path / stopped_after.replace(" ", "-"))
        files.path.mkdir()
        files.save_key(old_key)
        files.cert.write_bytes(b"old cert")
        files.save_next_key(new_key)
        if stopped_after != "key saved":
            files.next_cert.write_bytes(b"new cert")
        if stopped_after == "key moved":
            files.next_key.replace(files.key)
        finished = files.recover_renewal()
        expected = (old_key, b"old cert") if stopped_after == "key saved" else (new_key, b"new cert")
        assert (files.key.read_bytes(), files.cert.read_bytes()) == expected, stopped_after
        assert finished == (stopped_after != "key saved")
        assert not files.next_key.exists()
        assert not files.next_cert.exists()
        assert files.recover_renewal() is False  # nothing left to do


def expire(fleet: Fleet, cert_file: Path) -> None:
    """The device was off for 40 days: its certificate (same serial, same key) ended 10
    days ago, as the fleet CA issued it."""
    current = x509.load_pem_x509_certificate(cert_file.read_bytes())
    ca_cert, ca_key = load_ca(fleet.settings.pki.load_ca())
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder().subject_name(current.subject).issuer_name(ca_cert.subject)
               .public_key(current.public_key()).serial_number(current.serial_number)
               .not_valid_before(now - timedelta(days=40)).not_valid_after(now - timedelta(days=10)))
    for extension in current.extensions:
        builder = builder.add_extension(extension.value, critical=extension.critical)
    cert_file.write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM))


def test_a_device_whose_certificate_ended_re_enrolls_only_once_an_operator_approves(
        fleet: Fleet, tmp_path: Path) -> None:
    agent = make_agent(fleet, tmp_path)
    asyncio.run(run_until(agent, lambda: agent.checkins >= 1))
    files, device_id = StateDir(agent.settings.state_dir), agent.device_id
    assert device_id is not None
    expire(fleet, files.cert)
    old_serial = serial_of(files.cert.read_text())
    asyncio.run(run_until(agent, lambda: "waits for an operator" in (agent.last_error or "")))
    pending = CliRunner().invoke(app, ["devices", "pending", "--json", *server_args(fleet)])
    assert pending.exit_code == 0, pending.output
    (request,) = json.loads(pending.output)["approvals"]
    assert (request["kind"], request["device_id"], request["state"]) == ("reenroll", device_id, "pending")
    assert old_serial in request["reason"]
    key = serialization.load_pem_private_key(files.reenroll_key.read_bytes(), password=None)
    assert request["fingerprint"] == hashlib.sha256(key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()
    approved = CliRunner().invoke(app, ["devices", "approve", device_id, "--fingerprint", request["fingerprint"],
                                        *server_args(fleet)])
    assert approved.exit_code == 0, approved.output
    checkins = agent.checkins
    asyncio.run(run_until(agent, lambda: agent.checkins > checkins, timeout=60))  # speaking mTLS again
    renewed = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert renewed.not_valid_after_utc > datetime.now(UTC) + timedelta(days=29)
    assert not files.reenroll_key.exists()
    row = next(d for d in fleet.rows()["devices"] if d["id"] == device_id)
    assert row["cert_serial"] == format(renewed.serial_number, "x")
    assert [r["state"] for r in fleet.rows()["approvals"]] == ["used"]  # one certificate per approval


def test_a_re_enrollment_without_the_old_key_or_for_a_revoked_device_is_refused(fleet: Fleet) -> None:
    device = fleet.enroll()
    valid = (device.directory / "cert.pem").read_text()
    expire(fleet, device.directory / "cert.pem")
    cert_pem = (device.directory / "cert.pem").read_text()
    csr = make_csr(new_device_key(), device.id)
    url = f"/api/v1/devices/{device.id}/reenroll"
    forged = fleet.client().post(url, json={"certificate_pem": cert_pem, "csr_pem": csr.decode(), "signature":
                                            base64.b64encode(sign_possession(new_device_key(), csr)).decode()})
    assert (forged.status_code, forged.json()["error"]["code"]) == (401, "bad_proof")
    signed = base64.b64encode(sign_possession((device.directory / "key.pem").read_bytes(), csr)).decode()
    body = {"certificate_pem": cert_pem, "csr_pem": csr.decode(), "signature": signed}
    other = fleet.enroll()
    assert fleet.client().post(f"/api/v1/devices/{other.id}/reenroll", json=body).status_code == 401  # not its own
    assert fleet.client().post(url, json=body).status_code == 202  # filed for an operator
    early = fleet.client().post(url, json={**body, "certificate_pem": valid, "signature": signed})
    assert (early.status_code, early.json()["error"]["code"]) == (409, "certificate_still_valid")  # a clock ahead
    assert fleet.client(role=Role.ADMIN).post(f"/api/v1/admin/devices/{device.id}/revoke", json={}).status_code == 200
    revoked = fleet.client().post(url, json=body)
    assert (revoked.status_code, revoked.json()["error"]["code"]) == (401, "certificate_revoked")
