"""The fleet's X.509 material: the fleet CA, the server's TLS certificate, device certificates.

``certs`` is pure (bytes and time in, certificates out); ``files`` keeps them on disk.
"""

from edgefleet.pki.certs import (
    DeviceCertificate,
    IssuedCertificate,
    create_ca,
    device_identity_from_pem,
    issue_device_certificate,
    issue_server_certificate,
    make_csr,
    new_device_key,
    verify_device_certificate,
)
from edgefleet.pki.files import FleetPki

__all__ = [
    "DeviceCertificate",
    "FleetPki",
    "IssuedCertificate",
    "create_ca",
    "device_identity_from_pem",
    "issue_device_certificate",
    "issue_server_certificate",
    "make_csr",
    "new_device_key",
    "verify_device_certificate",
]
