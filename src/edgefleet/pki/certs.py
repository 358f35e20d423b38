"""Pure certificate operations (no files, no clock reads: ``now`` is passed in)."""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgefleet.errors import InvalidRequest, Unauthenticated

MAX_CSR_BYTES = 8192
DEVICE_URI_PREFIX = "urn:edgefleet:device:"
SITE_URI_PREFIX = "urn:edgefleet:site:"  # the site the device enrolled at, as the CA signed it


@dataclass(frozen=True)
class IssuedCertificate:
    key_pem: bytes
    cert_pem: bytes


@dataclass(frozen=True)
class DeviceCertificate:
    """What a verified device certificate says about its holder."""

    device_id: str
    serial: str  # lower-case hex, as stored in the devices table
    not_after: datetime
    site: str | None = None  # None in a certificate issued before sites were signed into it


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def create_ca(name: str, now: datetime, days: int = 3650) -> IssuedCertificate:
    """Create a self-signed fleet CA (EC P-256) that may sign end-entity certs only."""
    key = _new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return IssuedCertificate(_key_pem(key), _cert_pem(cert))


def load_ca(ca: IssuedCertificate) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert = x509.load_pem_x509_certificate(ca.cert_pem)
    key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError("the fleet CA key must be an EC key")
    return cert, key


def _leaf_builder(
    ca_cert: x509.Certificate, subject: x509.Name, public_key: ec.EllipticCurvePublicKey |
    rsa.RSAPublicKey, now: datetime, days: int, eku: x509.ObjectIdentifier
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )


def issue_server_certificate(
    ca: IssuedCertificate, names: list[str], now: datetime, days: int = 825
) -> IssuedCertificate:
    """Issue the control plane's TLS certificate for DNS names and IP addresses in ``names``."""
    ca_cert, ca_key = load_ca(ca)
    key = _new_key()
    alt: list[x509.GeneralName] = []
    for name in names:
        try:
            alt.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    cert = (
        _leaf_builder(ca_cert, subject, key.public_key(), now, days, ExtendedKeyUsageOID.SERVER_AUTH)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return IssuedCertificate(_key_pem(key), _cert_pem(cert))


def new_device_key() -> bytes:
    """A fresh device key (EC P-256), PEM."""
    return _key_pem(_new_key())


def make_csr(key_pem: bytes, common_name: str) -> bytes:
    """A CSR for ``key_pem``. The server ignores its subject and names the device itself."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError("device keys are EC keys")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.PEM)


def _parse_csr(csr_pem: str) -> x509.CertificateSigningRequest:
    if len(csr_pem) > MAX_CSR_BYTES:
        raise InvalidRequest("CSR is larger than 8 KiB", code="invalid_csr")
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as exc:
        raise InvalidRequest("CSR is not a PEM certificate signing request", code="invalid_csr") from exc
    if not csr.is_signature_valid:
        raise InvalidRequest("CSR signature does not verify", code="invalid_csr")
    key = csr.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise InvalidRequest(f"EC curve {key.curve.name} is not accepted", code="invalid_csr")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise InvalidRequest("RSA keys must be at least 2048 bits", code="invalid_csr")
    else:
        raise InvalidRequest("device keys must be EC P-256/P-384 or RSA", code="invalid_csr")
    return csr


def csr_key_fingerprint(csr_pem: str) -> str:
    """sha256 (hex) of the SubjectPublicKeyInfo a valid CSR asks a certificate for.
    Raises InvalidRequest like ``issue_device_certificate``."""
    key = _parse_csr(csr_pem).public_key()
    der = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def issue_device_certificate(
    ca: IssuedCertificate, csr_pem: str, device_id: str, now: datetime, days: int, site: str | None = None
) -> tuple[bytes, DeviceCertificate]:
    """Sign a device's CSR. The subject is ours (CN and URI SAN = device id; a second URI
    SAN names its ``site``, which hubs take from it), not the CSR's.

    Raises:
        InvalidRequest: the CSR is malformed, oversized, badly signed or uses a weak key.
    """
    csr = _parse_csr(csr_pem)
    ca_cert, ca_key = load_ca(ca)
    public_key = csr.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    cert = (
        _leaf_builder(ca_cert, subject, public_key, now, days, ExtendedKeyUsageOID.CLIENT_AUTH)
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(DEVICE_URI_PREFIX + device_id)]
                                        + ([x509.UniformResourceIdentifier(SITE_URI_PREFIX + site)] if site else [])),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return _cert_pem(cert), DeviceCertificate(
        device_id=device_id, serial=format(cert.serial_number, "x"), not_after=cert.not_valid_after_utc, site=site
    )


def _identity(cert: x509.Certificate) -> DeviceCertificate:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise Unauthenticated("certificate names no device", code="bad_client_cert") from exc
    named = san.get_values_for_type(x509.UniformResourceIdentifier)
    uris = [u for u in named if u.startswith(DEVICE_URI_PREFIX)]
    sites = [u for u in named if u.startswith(SITE_URI_PREFIX)]
    if len(uris) != 1 or len(sites) > 1:
        raise Unauthenticated("certificate names no device", code="bad_client_cert")
    return DeviceCertificate(
        device_id=uris[0][len(DEVICE_URI_PREFIX):],
        serial=format(cert.serial_number, "x"),
        not_after=cert.not_valid_after_utc,
        site=sites[0][len(SITE_URI_PREFIX):] if sites else None,
    )


def device_identity_from_pem(cert_pem: str) -> DeviceCertificate:
    """Read the device identity from a certificate that TLS has already verified.

    Raises:
        Unauthenticated: the certificate is not a device certificate.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError as exc:
        raise Unauthenticated("unreadable client certificate", code="bad_client_cert") from exc
    return _identity(cert)


def verify_device_certificate(ca_cert_pem: bytes, cert_pem: str, now: datetime | None) -> DeviceCertificate:
    """Fully verify a device certificate that did not come through our own TLS handshake
    (a trusted reverse proxy forwarded it): issuer signature, validity period at ``now``
    (None: whatever its period, as for an expired device asking to re-enroll), client EKU.

    Raises:
        Unauthenticated: any check fails.
    """
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise Unauthenticated("client certificate not issued by the fleet CA", code="bad_client_cert") from exc
    if now is not None and not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
        raise Unauthenticated("client certificate is outside its validity period", code="bad_client_cert")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound as exc:
        raise Unauthenticated("client certificate has no client EKU", code="bad_client_cert") from exc
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise Unauthenticated("client certificate has no client EKU", code="bad_client_cert")
    return _identity(cert)


def verify_possession(cert_pem: str, data: bytes, signature: bytes) -> None:
    """``signature`` is the certificate's key signing ``data`` (ECDSA or RSA PKCS#1 v1.5,
    SHA-256). Raises Unauthenticated otherwise."""
    public_key = x509.load_pem_x509_certificate(cert_pem.encode()).public_key()
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            raise InvalidSignature
    except InvalidSignature as exc:
        raise Unauthenticated("the request is not signed by the certificate's key", code="bad_proof") from exc


def sign_possession(key_pem: bytes, data: bytes) -> bytes:
    """What ``verify_possession`` checks: ``data`` signed with the device's key."""
    key = serialization.load_pem_private_key(key_pem, password=None)
    if isinstance(key, ec.EllipticCurvePrivateKey):
        return key.sign(data, ec.ECDSA(hashes.SHA256()))
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
    raise TypeError("device keys are EC or RSA")
