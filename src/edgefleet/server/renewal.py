"""A device renews its certificate over its mTLS channel, only while the fleet trusts it:
not quarantined, and freshly attested when it has a TPM identity or the fleet requires
attestation. The new certificate replaces the old one when the device first presents it
(``auth._promote``): until then both work, so a device that loses the answer (power cut,
dropped link) keeps its old identity and asks again."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging

from edgefleet.errors import Conflict, Forbidden, InvalidRequest, Unauthenticated
from edgefleet.pki import issue_device_certificate, verify_device_certificate
from edgefleet.pki.certs import csr_key_fingerprint, verify_possession
from edgefleet.protocol.v1 import CertificateRenewed, Reenroll, ReenrollAnswer
from edgefleet.server.auth import AuthenticatedDevice, current_or_refuse, fresh_device_auth
from edgefleet.server.state import ServerState
from edgefleet.store import approvals
from edgefleet.store.devices import get_device, set_next_certificate

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


async def reenroll(state: ServerState, device_id: str, request: Reenroll) -> ReenrollAnswer:
    """A device whose certificate expired (it can no longer speak mTLS) asks for a new one
    with its old certificate and a CSR signed by the old key. Never granted by itself: the
    first request is filed for an operator (``edgefleet devices approve``); once approved,
    the same request gets the certificate (for the key the operator approved).

    Raises Unauthenticated (not the fleet's certificate for this device, superseded,
    revoked, or not signed by its key), Conflict (``certificate_still_valid``: the
    device's clock is wrong, not its certificate), Forbidden (``reenroll_rejected``) or
    InvalidRequest (bad CSR or signature encoding).
    """
    identity = verify_device_certificate(state.ca.cert_pem, request.certificate_pem, None)
    if identity.device_id != device_id:
        raise Unauthenticated(f"certificate of {identity.device_id} cannot re-enroll {device_id}",
                              code="bad_client_cert")
    try:
        signature = base64.b64decode(request.signature, validate=True)
    except binascii.Error as exc:
        raise InvalidRequest("signature is not base64", code="invalid_signature") from exc
    verify_possession(request.certificate_pem, request.csr_pem.encode(), signature)
    fingerprint = csr_key_fingerprint(request.csr_pem)
    now = state.clock.now()
    if identity.not_after > now:  # a device whose own clock runs ahead: mTLS still works
        raise Conflict(f"certificate {identity.serial} of {device_id} is valid until "
                       f"{identity.not_after.isoformat(timespec='seconds')}: renew it instead",
                       code="certificate_still_valid")
    current_or_refuse(await fresh_device_auth(state, device_id), device_id, identity.serial)
    filed = issued = None
    async with state.db.transaction() as conn:
        device = await get_device(conn, device_id)
        if device is None:  # decommissioned since
            raise Unauthenticated(f"device {device_id} is not enrolled", code="unknown_device")
        held = await approvals.approval(conn, fingerprint)
        if held is None or held.device_id != device_id:
            facts = {"hardware_id": device.hardware_id, "site": device.site, "old_serial": identity.serial,
                     "hardware_type": str(device.inventory.get("hardware_type") or "")}
            why = f"certificate {identity.serial} ended {identity.not_after.isoformat(timespec='seconds')}"
            await approvals.request_approval(conn, "reenroll", fingerprint, device_id, reason=why, facts=facts,
                                             now=now)
            filed = why
        elif held.state == "rejected":
            raise Forbidden(f"re-enrollment of {device_id} was rejected by {held.decided_by}",
                            code="reenroll_rejected")
        elif held.state in ("approved", "used"):  # "used": the device lost the answer; same key, same device
            cert_pem, cert = issue_device_certificate(state.ca, request.csr_pem, device_id, now,
                                                      state.settings.device_cert_days, site=identity.site)
            await set_next_certificate(conn, device_id, cert.serial, cert.not_after, now)
            await approvals.mark_used(conn, fingerprint)
            issued = CertificateRenewed(certificate_pem=cert_pem.decode(), not_after=cert.not_after)
    if filed is not None:
        log.warning("%s asks to re-enroll (%s): edgefleet devices approve %s", device_id, filed, device_id)
        await state.audit.record("device", "re-enrollment requested", subject=device_id, outcome="pending",
                                 details={"fingerprint": fingerprint, "reason": filed})
    if issued is None:
        return ReenrollAnswer(state="pending")
    state.devices.forget(device_id)
    log.info("%s re-enrolled: certificate valid until %s", device_id, issued.not_after.isoformat())
    await state.audit.record("device", "re-enrolled", subject=device_id,
                             details={"fingerprint": fingerprint, "not_after": issued.not_after.isoformat()})
    return ReenrollAnswer(state="issued", certificate=issued)
