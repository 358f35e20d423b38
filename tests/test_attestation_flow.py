"""Attestation end to end with real TPMs (one swtpm per device): enroll the TPM identity,
activate the credential, quote, verify, get a workload token; a device that booted a
tampered image fails and is quarantined. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest

from edgefleet.agent.hardware.swtpm import Swtpm
from edgefleet.attestation import eventlog
from edgefleet.client import AdminClient
from edgefleet.credentials import Role
from edgefleet.releases.image import ReleaseInfo
from edgefleet.releases.keys import Keystore
from edgefleet.releases.publish import publish_workspace
from edgefleet.releases.workspace import Workspace, load_online_keys
from tests.cli_helpers import cli, server_args
from tests.conftest import Device, Fleet, database_url, start_fleet
from tests.tpm_world import boot_events, measured_boot, tpm2_or_skip

PCRS = [0, 1, 2, 3, 4, 5, 6, 7]
GOLDEN = eventlog.replay(eventlog.parse(eventlog.encode(boot_events())), "sha256", PCRS)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def attesting_plane(tmp_path: Path, database: str | None) -> Fleet:
    """A control plane that requires attestation, with release 2026.12.0 published."""
    tpm2_or_skip()
    fleet = start_fleet(tmp_path / "plane", database, attestation_required=True)
    Workspace(tmp_path / "ws").init(Keystore(tmp_path / "keys"), load_online_keys(
        fleet.settings.data_dir / "keys" / "online-keys.json"), datetime.now(UTC))
    publish_golden_release(fleet, tmp_path, "2026.12.0", 1)
    return fleet


def publish_golden_release(fleet: Fleet, tmp_path: Path, version: str, counter: int) -> None:
    """Publish ``version`` from the plane's release workspace, with the golden boot's
    reference measurements: what PCRs 0 and 4 must show after booting it."""
    keys, workspace = Keystore(tmp_path / "keys"), Workspace(tmp_path / "ws")
    image = tmp_path / f"{version}.img"
    image.write_bytes(version.encode())
    workspace.create_release(image, ReleaseInfo(version, counter, ("hw-x86",), {
        "0": GOLDEN[0].hex(), "4": GOLDEN[4].hex()}), datetime.now(UTC))
    workspace.sign_targets(keys.signer("targets-1"))
    with AdminClient(fleet.url, fleet.tokens[Role.ADMIN], fleet.settings.pki.ca_cert) as admin:
        publish_workspace(workspace, admin)


@pytest.fixture(params=["sqlite", "postgresql"])
def plane(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fleet]:
    fleet = attesting_plane(tmp_path, database_url(request.param, request, tmp_path))
    yield fleet
    fleet.close()


@dataclass
class TpmDevice:
    device: Device
    tpm: Any

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.device.client.post(f"/api/v1/devices/{self.device.id}/attestation/{path}", **kwargs)

    def enroll_identity(self) -> None:
        ek, ak = self.tpm.endorsement_key(), self.tpm.attestation_key()
        challenge = self.post("identity", json={"ek_public": b64(ek), "ak_public": b64(ak)})
        assert challenge.status_code == 200, challenge.text
        body = challenge.json()
        credential = self.tpm.activate_credential(base64.b64decode(body["id_object"]),
                                                  base64.b64decode(body["encrypted_secret"]))
        assert self.post("activate", json={"credential": b64(credential)}).status_code == 204

    def attest(self, log: bytes, nonce: str | None = None) -> Any:
        issued = nonce or self.post("nonce").json()["nonce"]
        attest, signature, values = self.tpm.quote(bytes.fromhex(issued), "sha256", PCRS)
        return self.post("quote", json={"nonce": issued, "attest": b64(attest), "signature": b64(signature),
                                        "pcr_values": {str(k): v.hex() for k, v in values.items()},
                                        "event_log": b64(log)})


def boot(plane: Fleet, emulator: Swtpm, kernel: bytes = b"vmlinuz 6.1 golden") -> tuple[TpmDevice, bytes]:
    device = plane.enroll(hardware_type="hw-x86")
    device.client.post(f"/api/v1/devices/{device.id}/status", json={"seq": 1, "running_version": "2026.12.0"})
    tpm = tpm2_or_skip()(emulator.tcti)
    return TpmDevice(device, tpm), measured_boot(tpm, boot_events(kernel))


def test_enrolled_tpm_attests_and_gets_a_workload_token(plane: Fleet, emulator: Swtpm) -> None:
    dev, log = boot(plane, emulator)
    gated = dev.device.client.get(f"/api/v1/devices/{dev.device.id}/desired")
    assert gated.status_code == 403  # no configuration before a passing attestation
    assert gated.json()["error"]["code"] == "attestation_required"
    dev.enroll_identity()
    assert dev.attest(log).json() == {"passed": True}
    token = dev.device.client.get(f"/api/v1/devices/{dev.device.id}/workload-token",
                                  params={"workload": "meter", "audience": "https://billing.example"}).json()["token"]
    jwks = plane.client().get("/.well-known/jwks.json").json()
    claims = jwt.decode(token, jwt.PyJWK(jwks["keys"][0]).key, algorithms=["ES256"], audience="https://billing.example")
    assert claims["sub"] == f"spiffe://edgefleet.local/site/store-1/device/{dev.device.id}/workload/meter"
    assert claims["release"] == "2026.12.0"
    assert claims["exp"] - claims["iat"] == 300
    record = plane.client(role=Role.VIEWER).get(f"/api/v1/admin/devices/{dev.device.id}").json()
    assert record["attestation"]["passed"] is True
    assert (record["attestation"]["state"], record["attestation"]["reason"]) == ("passed", None)
    assert dev.device.client.get(f"/api/v1/devices/{dev.device.id}/desired").status_code == 200
    # Releasing a device that is not quarantined (a mistaken click) takes nothing from it.
    released = plane.client(role=Role.ADMIN).post(f"/api/v1/admin/devices/{dev.device.id}/release-quarantine")
    assert released.status_code == 204
    assert plane.client(role=Role.VIEWER).get(f"/api/v1/admin/devices/{dev.device.id}").json()["attestation"] == \
        record["attestation"]
    assert dev.device.client.get(f"/api/v1/devices/{dev.device.id}/desired").status_code == 200
    # Past its freshness the verdict is stale, and says since when (amber, not green).
    plane.clock.advance(plane.settings.attestation_max_age_seconds + 1)
    stale = plane.client(role=Role.VIEWER).get(f"/api/v1/admin/devices/{dev.device.id}").json()["attestation"]
    assert stale["state"] == "stale"
    assert "a verdict counts for" in stale["reason"]


def test_a_report_asking_for_a_challenge_brings_a_nonce_that_a_quote_spends_once(plane: Fleet, emulator: Swtpm) -> None:
    dev, log = boot(plane, emulator)
    status = f"/api/v1/devices/{dev.device.id}/status"
    report = {"running_version": "2026.12.0", "challenge": True}
    assert dev.device.client.post(status, json={"seq": 2, **report}).json()["challenge"] is None  # no TPM identity yet
    dev.enroll_identity()
    challenge = dev.device.client.post(status, json={"seq": 3, **report}).json()["challenge"]
    assert (challenge["bank"], challenge["pcrs"]) == ("sha256", PCRS)
    assert challenge["expires_in_seconds"] == plane.settings.attestation_nonce_seconds
    assert dev.attest(log, challenge["nonce"]).json() == {"passed": True}
    again = dev.attest(log, challenge["nonce"])
    assert (again.status_code, again.json()["error"]["code"]) == (409, "nonce_refused")
    plain = dev.device.client.post(status, json={"seq": 4, "running_version": "2026.12.0"}).json()
    assert plain["challenge"] is None  # only when asked


def test_a_verdict_updates_this_servers_cache_of_the_device_and_the_change_feed_leaves_it(
        plane: Fleet, emulator: Swtpm) -> None:
    dev, log = boot(plane, emulator)
    dev.enroll_identity()
    assert dev.attest(log).json() == {"passed": True}
    time.sleep(3 * plane.settings.device_cache_sync_seconds)  # the feed has passed the verdict's change
    cached = plane.server.state.devices.get(dev.device.id)  # the next request needs no database read
    assert cached is not None
    assert cached.attested_at is not None
    assert not cached.quarantined


def test_device_that_booted_a_tampered_image_fails_and_is_quarantined(plane: Fleet, emulator: Swtpm) -> None:
    dev, log = boot(plane, emulator, kernel=b"vmlinuz 6.1 golden + implant")
    dev.enroll_identity()
    assert dev.attest(log).json() == {"passed": False}  # the device learns nothing more
    url = f"/api/v1/devices/{dev.device.id}"
    refused = dev.device.client.get(f"{url}/desired")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "quarantined"
    assert dev.device.client.get(f"{url}/workload-token", params={"workload": "w", "audience": "a"}).status_code == 403
    record = plane.client(role=Role.VIEWER).get(f"/api/v1/admin/devices/{dev.device.id}").json()
    assert record["attestation"]["quarantined"] is True
    assert any("PCR 4" in check for check in record["attestation"]["failed_checks"])
    assert record["attestation"]["state"] == "quarantined"  # one state, whatever a later quote says
    assert "PCR 4" in record["attestation"]["reason"]
    assert "release-quarantine" in record["attestation"]["reason"]
    audited = plane.client(role=Role.ADMIN).get("/api/v1/admin/audit", params={"device": dev.device.id}).json()
    quarantine = [e for e in audited["entries"] if e["action"] == "quarantine"]
    assert [e["actor"] for e in quarantine] == ["attestation"]  # a security decision, recorded with why
    assert any("PCR 4" in f for f in quarantine[0]["details"]["failures"])
    metrics = plane.client().get("/metrics").text
    assert "edgefleet_quarantines_total 1.0" in metrics
    assert 'edgefleet_attestations_total{result="failed"} 1.0' in metrics
    # An admin lifts the quarantine (from the CLI); the device must then attest afresh to get
    # configuration.
    cli("devices", "release-quarantine", dev.device.id, *server_args(plane))
    assert dev.device.client.get(f"{url}/desired").json()["error"]["code"] == "attestation_required"


@pytest.mark.parametrize("case", ["replayed", "expired", "other_device", "never_issued", "altered_expiry"])
def test_bad_nonces_are_refused_and_grant_nothing(plane: Fleet, emulator: Swtpm, tmp_path: Path, case: str) -> None:
    dev, log = boot(plane, emulator)
    dev.enroll_identity()
    nonce = dev.post("nonce").json()["nonce"]
    if case == "replayed":
        assert dev.attest(log, nonce).json() == {"passed": True}
    elif case == "expired":
        plane.clock.advance(61)
    elif case == "other_device":
        with Swtpm(tmp_path / "other") as other_tpm:
            other, _ = boot(plane, other_tpm)
            other.enroll_identity()
            nonce = other.post("nonce").json()["nonce"]
    elif case == "altered_expiry":  # pushed an hour later: the HMAC no longer matches
        raw = bytearray(bytes.fromhex(nonce))
        raw[12:16] = (int.from_bytes(raw[12:16], "big") + 3600).to_bytes(4, "big")
        plane.clock.advance(61)
        nonce = raw.hex()
    else:
        nonce = os.urandom(32).hex()
    before = plane.rows()
    refused = dev.attest(log, nonce)
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "nonce_refused"
    assert plane.rows() == before


def test_one_nonce_submitted_twice_at_once_is_spent_once(plane: Fleet, emulator: Swtpm) -> None:
    dev, log = boot(plane, emulator)
    dev.enroll_identity()
    issued = dev.post("nonce").json()["nonce"]
    attest, signature, values = dev.tpm.quote(bytes.fromhex(issued), "sha256", PCRS)
    body = {"nonce": issued, "attest": b64(attest), "signature": b64(signature),
            "pcr_values": {str(k): v.hex() for k, v in values.items()}, "event_log": b64(log)}
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: dev.post("quote", json=body), range(2)))
    assert sorted(a.status_code for a in answers) == [200, 409]
    assert next(a for a in answers if a.status_code == 409).json()["error"]["code"] == "nonce_refused"
    assert 'edgefleet_attestations_total{result="passed"} 1.0' in plane.client().get("/metrics").text


def test_reenrollment_with_another_tpm_is_refused(plane: Fleet, emulator: Swtpm, tmp_path: Path) -> None:
    dev, _ = boot(plane, emulator)
    dev.enroll_identity()
    with Swtpm(tmp_path / "swapped") as swapped:
        impostor = tpm2_or_skip()(swapped.tcti)
        refused = dev.post("identity", json={"ek_public": b64(impostor.endorsement_key()),
                                             "ak_public": b64(impostor.attestation_key())})
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "identity_mismatch"


def test_quote_without_reference_measurements_for_the_device_fails(plane: Fleet, emulator: Swtpm) -> None:
    device = plane.enroll(hardware_type="hw-x86")  # reports no release: nothing to compare with
    tpm = tpm2_or_skip()(emulator.tcti)
    dev = TpmDevice(device, tpm)
    log = measured_boot(tpm, boot_events())
    dev.enroll_identity()
    assert dev.attest(log).json() == {"passed": False}
    record = plane.client(role=Role.VIEWER).get(f"/api/v1/admin/devices/{device.id}").json()
    assert any("no reference measurements" in c for c in record["attestation"]["failed_checks"])


def test_a_release_published_after_a_quote_was_judged_without_it_is_the_yardstick_of_the_next_quote(
        plane: Fleet, emulator: Swtpm, tmp_path: Path) -> None:
    # The server prepares one policy per release and hardware model; publishing must not
    # leave a device judged by the policy prepared before its release existed.
    device = plane.enroll(hardware_type="hw-x86")
    device.client.post(f"/api/v1/devices/{device.id}/status", json={"seq": 1, "running_version": "2026.12.1"})
    tpm = tpm2_or_skip()(emulator.tcti)
    dev = TpmDevice(device, tpm)
    log = measured_boot(tpm, boot_events())
    dev.enroll_identity()
    assert dev.attest(log).json() == {"passed": False}  # 2026.12.1 is not published yet
    publish_golden_release(plane, tmp_path, "2026.12.1", 2)
    cli("devices", "release-quarantine", device.id, *server_args(plane))
    assert dev.attest(log).json() == {"passed": True}


def test_activation_with_a_wrong_credential_is_refused(plane: Fleet, emulator: Swtpm) -> None:
    dev, _ = boot(plane, emulator)
    tpm = dev.tpm
    challenge = dev.post("identity", json={"ek_public": b64(tpm.endorsement_key()),
                                           "ak_public": b64(tpm.attestation_key())})
    assert challenge.status_code == 200
    assert dev.post("activate", json={"credential": b64(os.urandom(32))}).status_code == 401
    assert dev.post("nonce").status_code == 409  # still not enrolled: no nonces, no quotes
