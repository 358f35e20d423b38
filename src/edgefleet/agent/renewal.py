"""The device renews its certificate before it ends: a new key, a CSR over the mTLS
channel, the answer checked (our key, our device id), then the files swapped by renames
that a power cut cannot leave half done (``StateDir.recover_renewal``), and every TLS
context presenting the old certificate reloaded. The server accepts the old certificate
until the new one is presented, and renews only while the device is trusted (not
quarantined, freshly attested)."""

from __future__ import annotations

import asyncio
import base64
import logging
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edgefleet.agent.state import StateDir
from edgefleet.clock import Clock
from edgefleet.errors import BadAnswer, ServerRefused, Unauthenticated
from edgefleet.pki import device_identity_from_pem, make_csr, new_device_key
from edgefleet.pki.certs import sign_possession
from edgefleet.protocol.v1 import Reenroll, RenewCertificate
from edgefleet.util.atomic import atomic_write_bytes
from edgefleet.web.device_client import DeviceTransport
from edgefleet.web.tls import reload_presented

log = logging.getLogger("edgefleet.agent")
REFUSED_RETRY_SECONDS = 600.0  # a refused renewal (quarantined, not attested) is asked again this much later
CHECK_AT_MOST_SECONDS = 3600.0  # when it is not due, look again within this


class CertificateRenewer:
    def __init__(self, state_dir: StateDir, clock: Clock, renew_before_seconds: float | None) -> None:
        self.dir, self.clock, self.renew_before = state_dir, clock, renew_before_seconds
        self._next_look = 0.0
        self.renewed = 0

    def due(self) -> bool:
        """Whether the certificate should be renewed now (read from its file)."""
        if self.clock.monotonic() < self._next_look:
            return False
        cert = self._certificate()
        before = self.renew_before or (cert.not_valid_after_utc - cert.not_valid_before_utc).total_seconds() / 3
        wait = (cert.not_valid_after_utc - self.clock.now()).total_seconds() - before
        if wait > 0:
            self._next_look = self.clock.monotonic() + min(wait, CHECK_AT_MOST_SECONDS)
            return False
        return True

    def refused(self, exc: ServerRefused) -> None:
        self._next_look = self.clock.monotonic() + REFUSED_RETRY_SECONDS
        log.warning("certificate not renewed, asking again in %.0f s: %s", REFUSED_RETRY_SECONDS, exc)

    async def renew(self, device_id: str, transports: list[DeviceTransport]) -> datetime:
        """Renew through ``transports[0]``; each then reconnects with the new certificate.
        Returns its end. Raises ServerRefused, TransportError (BadAnswer: not a certificate
        for our key and device)."""
        key_pem = new_device_key()
        await asyncio.to_thread(self.dir.save_next_key, key_pem)
        answer = await transports[0].renew_certificate(device_id, RenewCertificate(
            csr_pem=make_csr(key_pem, device_id).decode()))
        await self._commit(answer.certificate_pem, key_pem, device_id)
        reloaded = reload_presented(self.dir.cert, self.dir.key)
        for transport in transports:
            await transport.reconnect()
        self.renewed += 1
        # A wall clock far off (a skewed device) would find the new one due at once as well.
        self._next_look = self.clock.monotonic() + CHECK_AT_MOST_SECONDS
        log.info("certificate renewed until %s (%d TLS contexts reloaded)", answer.not_after.isoformat(), reloaded)
        return answer.not_after


    def expired(self) -> bool:
        """Whether the certificate has ended (by this device's clock): mTLS cannot work."""
        return self._certificate().not_valid_after_utc <= self.clock.now()

    def _certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.dir.cert.read_bytes())

    async def reenroll(self, device_id: str, transport: DeviceTransport) -> bool:
        """Ask once to re-enroll (``transport`` without a client certificate); True when the
        new certificate is in place, False while an operator has not approved it. The new
        key is kept across tries: it is the one the operator approves.
        Raises ServerRefused (rejected, revoked, decommissioned) or TransportError."""
        if not self.dir.reenroll_key.exists():
            await asyncio.to_thread(atomic_write_bytes, self.dir.reenroll_key, new_device_key(), mode=0o600)
        key_pem = self.dir.reenroll_key.read_bytes()
        csr = make_csr(key_pem, device_id)
        answer = await transport.reenroll(device_id, Reenroll(
            certificate_pem=self.dir.cert.read_text(), csr_pem=csr.decode(),
            signature=base64.b64encode(sign_possession(self.dir.key.read_bytes(), csr)).decode()))
        if answer.certificate is None:
            return False
        await asyncio.to_thread(self.dir.save_next_key, key_pem)
        await self._commit(answer.certificate.certificate_pem, key_pem, device_id)
        self.dir.reenroll_key.unlink(missing_ok=True)
        self._next_look = 0.0
        log.info("re-enrolled: certificate valid until %s", answer.certificate.not_after.isoformat())
        return True

    async def _commit(self, cert_pem: str, key_pem: bytes, device_id: str) -> None:
        _check(cert_pem, key_pem, device_id)
        await asyncio.to_thread(self.dir.commit_renewal, cert_pem.encode())


def _check(cert_pem: str, key_pem: bytes, device_id: str) -> None:
    try:
        named = device_identity_from_pem(cert_pem).device_id
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except (Unauthenticated, ValueError) as exc:
        raise BadAnswer(f"the renewed certificate is unreadable: {exc}") from exc
    if named != device_id or serialization.load_pem_private_key(key_pem, password=None).public_key() != \
            cert.public_key():
        raise BadAnswer(f"the renewed certificate is not for this device's new key ({named})")
