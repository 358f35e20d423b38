"""EK certificates: the TPM manufacturer's statement that an endorsement key belongs to a
genuine TPM. Checked against the vendor roots (and intermediates) the operator trusts."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edgefleet.attestation.structures import PublicKey
from edgefleet.errors import ConfigError, Forbidden

MAX_CHAIN = 4


def load_vendor_pool(directory: Path) -> list[x509.Certificate]:
    """Every certificate (PEM or DER) in ``directory``: vendor roots and intermediates."""
    pool = []
    try:
        paths = sorted(p for p in directory.iterdir() if p.is_file())
    except OSError as exc:
        raise ConfigError(f"cannot read TPM vendor roots in {directory}: {exc}") from exc
    for path in paths:
        data = path.read_bytes()
        try:
            pool.extend(x509.load_pem_x509_certificates(data) if b"-----BEGIN" in data
                        else [x509.load_der_x509_certificate(data)])
        except ValueError as exc:
            raise ConfigError(f"{path} is not a certificate: {exc}") from exc
    return pool


def _same_key(cert: x509.Certificate, ek: PublicKey) -> bool:
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey) and isinstance(ek.key, rsa.RSAPublicKey):
        return key.public_numbers() == ek.key.public_numbers()
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(ek.key, ec.EllipticCurvePublicKey):
        return key.public_numbers() == ek.key.public_numbers()
    return False


def verify_ek_certificate(data: bytes, ek: PublicKey, pool: list[x509.Certificate], now: datetime) -> None:
    """Raises Forbidden unless ``data`` certifies exactly ``ek`` and chains to a self-signed
    certificate in ``pool``, every link valid at ``now``."""
    try:
        cert = x509.load_der_x509_certificate(data) if not data.startswith(b"-----") \
            else x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise Forbidden("EK certificate unreadable", code="ek_not_trusted") from exc
    if not _same_key(cert, ek):
        raise Forbidden("EK certificate is for another key", code="ek_not_trusted")
    current = cert
    for _ in range(MAX_CHAIN):
        if not current.not_valid_before_utc <= now <= current.not_valid_after_utc:
            raise Forbidden(f"certificate {current.subject.rfc4514_string()} is not valid now", code="ek_not_trusted")
        issuers = [c for c in pool if c.subject == current.issuer]
        for issuer in issuers:
            try:
                current.verify_directly_issued_by(issuer)
            except (InvalidSignature, ValueError, TypeError):
                continue
            if issuer.subject == issuer.issuer:  # reached a trusted root
                if not issuer.not_valid_before_utc <= now <= issuer.not_valid_after_utc:
                    raise Forbidden("TPM vendor root expired", code="ek_not_trusted")
                return
            current = issuer
            break
        else:
            raise Forbidden("EK certificate does not chain to a trusted TPM vendor root", code="ek_not_trusted")
    raise Forbidden("EK certificate chain too long", code="ek_not_trusted")
