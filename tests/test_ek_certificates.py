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
