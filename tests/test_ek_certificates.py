"""With ``ek_trust = "vendor"`` only TPMs whose EK certificate chains to a configured TPM
vendor root may bind an identity."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from edgefleet.attestation.structures import parse_public
from tests.conftest import Fleet, start_fleet
from tests.tpm_world import tpm2_or_skip


def issue(subject: str, key: Any, issuer: tuple[x509.Name, Any] | None, ca: bool) -> tuple[x509.Certificate, Any]:
    signing_key = ec.generate_private_key(ec.SECP256R1()) if key is None else None
    public = key if key is not None else signing_key.public_key()  # type: ignore[union-attr]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer if issuer else (name, signing_key)
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name).public_key(public)
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256()))
    return cert, signing_key


def vendor(name: str) -> tuple[x509.Certificate, Any, x509.Certificate, Any]:
    root, root_key = issue(f"{name} TPM root", None, None, True)
    intermediate, intermediate_key = issue(f"{name} TPM EK CA", None, (root.subject, root_key), True)
    return root, root_key, intermediate, intermediate_key


@pytest.fixture
def vendor_plane(tmp_path: Path) -> Iterator[tuple[Fleet, Any]]:
    tpm2_or_skip()
    roots = tmp_path / "tpm-vendor-roots"
    roots.mkdir()
    trusted = vendor("Trusted")
    (roots / "root.pem").write_bytes(trusted[0].public_bytes(serialization.Encoding.PEM))
    (roots / "intermediate.pem").write_bytes(trusted[2].public_bytes(serialization.Encoding.PEM))
    plane = start_fleet(tmp_path / "plane", None, ek_trust="vendor", tpm_vendor_roots=roots)
    yield plane, trusted
    plane.close()


def present(plane: Fleet, emulator: Any, cert: x509.Certificate | None, *, other_key: bool = False) -> Any:
    tpm = tpm2_or_skip()(emulator.tcti)
    device = plane.enroll(hardware_type="hw-x86")
    body = {"ek_public": base64.b64encode(tpm.endorsement_key()).decode(),
            "ak_public": base64.b64encode(tpm.attestation_key()).decode()}
    if cert is not None:
        body["ek_certificate"] = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    return device.client.post(f"/api/v1/devices/{device.id}/attestation/identity", json=body)


def ek_cert(emulator: Any, issuer: tuple[x509.Certificate, Any], key: Any = None) -> x509.Certificate:
    ek = parse_public(tpm2_or_skip()(emulator.tcti).endorsement_key())
    cert, _ = issue("TPM EK", key or ek.key, (issuer[0].subject, issuer[1]), False)
    return cert


def test_ek_certified_by_a_trusted_vendor_may_bind_an_identity(vendor_plane: Any, emulator: Any) -> None:
    plane, (_, _, intermediate, intermediate_key) = vendor_plane
    response = present(plane, emulator, ek_cert(emulator, (intermediate, intermediate_key)))
    assert response.status_code == 200, response.text


def test_ek_certificate_not_chaining_to_a_trusted_root_is_refused(vendor_plane: Any, emulator: Any) -> None:
    plane, _ = vendor_plane
    _, _, rogue_intermediate, rogue_key = vendor("Rogue")
    response = present(plane, emulator, ek_cert(emulator, (rogue_intermediate, rogue_key)))
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "ek_not_trusted"
    assert plane.rows()["attestation_identities"] == []  # no identity, not even a pending one


def test_ek_certificate_for_another_key_is_refused(vendor_plane: Any, emulator: Any) -> None:
    plane, (_, _, intermediate, intermediate_key) = vendor_plane
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    response = present(plane, emulator, ek_cert(emulator, (intermediate, intermediate_key), key=stranger))
    assert response.status_code == 403


def test_missing_ek_certificate_is_refused_in_vendor_mode(vendor_plane: Any, emulator: Any) -> None:
    plane, _ = vendor_plane
    response = present(plane, emulator, None)
    assert response.status_code == 403


def provision_ek_certificate(tcti: str, der: bytes) -> None:
    """What a TPM manufacturer does: store the EK certificate in NV index 0x01C00002."""
    from tpm2_pytss import ESAPI, TCTILdr
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPMA_NV
    from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC

    name, _, config = tcti.partition(":")
    with ESAPI(TCTILdr(name, config)) as ectx:
        public = TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
            nvIndex=0x01C00002, nameAlg=TPM2_ALG.SHA256, dataSize=len(der),
            attributes=TPMA_NV.OWNERWRITE | TPMA_NV.AUTHREAD | TPMA_NV.OWNERREAD | TPMA_NV.NO_DA))
        index = ectx.nv_define_space(b"", public)
        for offset in range(0, len(der), 512):
            ectx.nv_write(index, der[offset:offset + 512], offset, auth_handle=ESYS_TR.OWNER)


def swtpm_agent(plane: Fleet, emulator: Any, tmp_path: Path, hardware_id: str) -> Any:
    """An agent on an emulated device of store-1 whose TPM is ``emulator``, booted (its
    PCRs and event log measured), with a bootstrap token and quick retries."""
    from edgefleet.agent import Agent, AgentSettings
    from edgefleet.agent.hardware import VirtualDevice
    from edgefleet.agent.hardware.firmware import measured_boot

    tpm = tpm2_or_skip()(emulator.tcti)
    device = VirtualDevice.create(tmp_path / "vdev", hardware_id=hardware_id, site="store-1", hardware_type="hw-x86")
    measured_boot(tpm, device.slot_image("a"), device.event_log(), power_cycle=emulator.power_cycle)
    settings = AgentSettings(server_url=plane.url, ca_file=plane.settings.pki.ca_cert, state_dir=device.agent_dir,
                             bootstrap_token=plane.bootstrap_token("store-1"), checkin_interval_seconds=0.1,
                             backoff_initial_seconds=0.05, backoff_max_seconds=0.2)
    return Agent(settings, device, site="store-1", tpm=tpm)


def test_agent_reads_its_ek_certificate_from_the_tpm_and_binds_its_identity(vendor_plane: Any, emulator: Any,
                                                                           tmp_path: Path) -> None:
    import asyncio


    plane, (_, _, intermediate, intermediate_key) = vendor_plane
    tpm = tpm2_or_skip()(emulator.tcti)
    provision_ek_certificate(emulator.tcti, ek_cert(emulator, (intermediate, intermediate_key))
                             .public_bytes(serialization.Encoding.DER))
    assert tpm.ek_certificate() is not None
    agent = swtpm_agent(plane, emulator, tmp_path, "hw-vendor-1")

    async def until_attested() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        for _ in range(400):
            if agent.attested is not None:
                break
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 20)

    asyncio.run(until_attested())
    identities = plane.rows()["attestation_identities"]
    assert [row["state"] for row in identities] == ["active"]  # the vendor-certified TPM bound its identity
