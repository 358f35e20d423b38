"""A device renews its certificate over its mTLS channel, only while the fleet trusts it:
not quarantined, and freshly attested when it has a TPM identity or the fleet requires
attestation. The new certificate replaces the old one when the device first presents it
(``auth._promote``): until then both work, so a device that loses the answer (power cut,
dropped link) keeps its old identity and asks again."""

from __future__ import annotations

import asyncio
import logging

from edgefleet.errors import Forbidden
from edgefleet.pki import issue_device_certificate
from edgefleet.protocol.v1 import CertificateRenewed
from edgefleet.server.auth import AuthenticatedDevice
from edgefleet.server.state import ServerState
from edgefleet.store.devices import set_next_certificate

log = logging.getLogger("edgefleet.server")


async def renew_certificate(state: ServerState, device: AuthenticatedDevice, csr_pem: str) -> CertificateRenewed:
    """Raises Forbidden (``quarantined``, ``attestation_required``) or InvalidRequest (bad CSR)."""
    auth = device.auth
    if auth.quarantined:
        raise Forbidden(f"{device.id} is quarantined: it cannot renew its certificate", code="quarantined")
    if (state.settings.attestation_required or auth.tpm_identity) and not state.attestation.fresh(auth):
        raise Forbidden(f"{device.id} must attest freshly before it renews its certificate",
                        code="attestation_required")
    now = state.clock.now()
    cert_pem, cert = await asyncio.to_thread(issue_device_certificate, state.ca, csr_pem, device.id, now,
                                             state.settings.device_cert_days, site=device.site)
    async with state.db.transaction() as conn:
        await set_next_certificate(conn, device.id, cert.serial, cert.not_after, now)
    state.devices.forget(device.id)
    log.info("%s renewed its certificate: %s, valid until %s", device.id, cert.serial, cert.not_after.isoformat())
    await state.audit.record("device", "certificate renewed", subject=device.id,
                             details={"serial": cert.serial, "not_after": cert.not_after.isoformat()})
    return CertificateRenewed(certificate_pem=cert_pem.decode(), not_after=cert.not_after)
