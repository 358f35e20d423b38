"""Device certificates are short-lived (30 days by default) and renew themselves over the
device's mTLS channel, only while the fleet trusts the device (not quarantined, freshly
attested when it has a TPM identity). The old certificate works until the new one is
presented, then never again (here, and at hubs through the CRL). An agent does it by
itself, and a stop between any two of its file steps is finished at the next start."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509

from edgefleet.agent.hardware.swtpm import Swtpm
from edgefleet.agent.state import StateDir
from edgefleet.credentials import Role
from edgefleet.pki import make_csr, new_device_key
from edgefleet.pki.crl import verify_crl
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
