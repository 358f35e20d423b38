"""The fleet's deny list as a real X.509 CRL, signed by the fleet CA (pure: ``now`` is
passed in). Hubs and every other holder of the fleet CA certificate can check it; its CRL
number only grows, so a replayed older list is told apart from the newest one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edgefleet.errors import InvalidRequest
from edgefleet.pki.certs import IssuedCertificate, load_ca

MAX_CRL_BYTES = 4 << 20
CRL_VALID_FOR = timedelta(days=7)  # nextUpdate; a hub keeps honouring an older list offline


@dataclass(frozen=True)
class Revoked:
    serial: str  # lower-case hex, as in DeviceCertificate
    revoked_at: datetime


@dataclass(frozen=True)
class RevocationList:
    number: int
    serials: frozenset[str]
    this_update: datetime
    der: bytes


def sign_crl(ca: IssuedCertificate, number: int, revoked: list[Revoked], now: datetime) -> bytes:
    """The DER of CRL ``number`` listing ``revoked``, valid ``CRL_VALID_FOR`` from ``now``."""
    ca_cert, ca_key = load_ca(ca)
    builder = (x509.CertificateRevocationListBuilder()
               .issuer_name(ca_cert.subject).last_update(now).next_update(now + CRL_VALID_FOR)
               .add_extension(x509.CRLNumber(number), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                              critical=False))
    for entry in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(int(entry.serial, 16))
            .revocation_date(entry.revoked_at).build())
    return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


def verify_crl(ca_cert_pem: bytes, der: bytes) -> RevocationList:
    """A CRL the fleet CA signed, read.

    Raises:
        InvalidRequest (code ``bad_crl``): oversized, unreadable, another issuer, a bad
            signature or no CRL number.
    """
    if len(der) > MAX_CRL_BYTES:
        raise InvalidRequest(f"revocation list of {len(der)} bytes exceeds {MAX_CRL_BYTES}", code="bad_crl")
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    public_key = ca_cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    try:
        crl = x509.load_der_x509_crl(der)
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except (ValueError, x509.ExtensionNotFound) as exc:
        raise InvalidRequest(f"unreadable revocation list: {exc}", code="bad_crl") from exc
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(public_key):
        raise InvalidRequest("revocation list not signed by the fleet CA", code="bad_crl")
    return RevocationList(number, frozenset(format(entry.serial_number, "x") for entry in crl),
                          crl.last_update_utc, der)
