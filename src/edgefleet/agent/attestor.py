"""The device's side of attestation: bind the TPM identity once (EK, AK, credential
activation), then quote on request and keep a fresh workload token for local workloads.

TPM commands are blocking (tpm2-tss), so they run in a worker thread. The workload token is
written atomically to a file only the agent's user and group can read (0640)."""

from __future__ import annotations

import asyncio
import base64
import logging
import random
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from edgefleet.errors import BadAnswer, ServerRefused
from edgefleet.protocol.v1 import AttestationIdentityRequest, CredentialActivation, NonceIssuedView, QuoteSubmission
from edgefleet.web.device_client import DeviceTransport

log = logging.getLogger("edgefleet.agent")


class AttestingTpm(Protocol):
    def endorsement_key(self) -> bytes: ...

    def ek_certificate(self) -> bytes | None: ...

    def attestation_key(self) -> bytes: ...

    def activate_credential(self, id_object: bytes, encrypted_secret: bytes) -> bytes: ...

    def quote(self, nonce: bytes, bank: str, pcrs: list[int]) -> tuple[bytes, bytes, dict[int, bytes]]: ...


REATTEST_SLACK_SECONDS = 30.0  # re-attest this much earlier than the next report and check-in need


def reattest_margin(reach_seconds: float, rng: random.Random) -> float:
    """How long before the server's freshness runs out to quote again: longer than the time
    to the next status report and check-in (``reach_seconds``), with jitter, so that no
    check-in meets the 403 and the fleet's devices do not all come back at the same second."""
    return (reach_seconds + REATTEST_SLACK_SECONDS) * rng.uniform(1.0, 1.5)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Attestor:
    def __init__(self, tpm: AttestingTpm, event_log: Path, ek_certificate_file: Path | None = None) -> None:
        self.tpm = tpm
        self.event_log = event_log
        self.ek_certificate_file = ek_certificate_file
        self._offered: NonceIssuedView | None = None

    async def enroll(self, transport: DeviceTransport, device_id: str) -> None:
        """Present EK and AK; activate the credential the server sends back (once: a
        rebooted TPM re-derives the same keys and the server answers 204)."""
        ek, ak = await asyncio.to_thread(self.tpm.endorsement_key), await asyncio.to_thread(self.tpm.attestation_key)
        certificate = (await asyncio.to_thread(self.ek_certificate_file.read_bytes) if self.ek_certificate_file
                       else await asyncio.to_thread(self.tpm.ek_certificate))
        identity = AttestationIdentityRequest(ek_public=_b64(ek), ak_public=_b64(ak),
                                              ek_certificate=_b64(certificate) if certificate else None)
        challenge = await transport.bind_identity(device_id, identity)
        if challenge is None:
            return
        credential = await asyncio.to_thread(self.tpm.activate_credential, _decode(challenge.id_object),
                                             _decode(challenge.encrypted_secret))
        await transport.activate_credential(device_id, CredentialActivation(credential=_b64(credential)))
        log.info("TPM identity bound to %s", device_id)

    def offer(self, challenge: NonceIssuedView | None) -> None:
        """The challenge a status report's answer brought (the report before an update's
        quote asks for it): the next ``attest`` quotes it rather than asking for a nonce."""
        self._offered = challenge

    async def attest(self, transport: DeviceTransport, device_id: str) -> bool:
        """Quote the PCRs the server asks for, with the boot event log; True if it passed."""
        offered, self._offered = self._offered, None
        if offered is not None:
            try:
                return await self._quote(transport, device_id, offered)
            except ServerRefused as exc:
                if exc.code != "nonce_refused":
                    raise
                log.info("the challenge offered with the last report was refused (%s): asking for a nonce", exc)
        return await self._quote(transport, device_id, await transport.attestation_nonce(device_id))

    async def _quote(self, transport: DeviceTransport, device_id: str, issued: NonceIssuedView) -> bool:
        try:
            nonce = bytes.fromhex(issued.nonce)
        except ValueError as exc:
            raise BadAnswer(f"unexpected nonce answer: {exc}") from exc
        attest, signature, values = await asyncio.to_thread(self.tpm.quote, nonce, issued.bank, issued.pcrs)
        try:
            log_bytes = await asyncio.to_thread(self.event_log.read_bytes)
        except OSError as exc:
            # The quote goes without it: the server refuses what it cannot check, and says
            # why, rather than this device never attesting at all.
            log.warning("no boot event log (%s: %s): the quote goes without one and cannot pass (set event_log "
                        "if the firmware's log is elsewhere)", self.event_log, exc.strerror)
            log_bytes = b""
        try:
            quote = QuoteSubmission(nonce=nonce.hex(), attest=_b64(attest), signature=_b64(signature),
                                    pcr_values={str(k): v.hex() for k, v in values.items()},
                                    event_log=_b64(log_bytes))
        except ValidationError as exc:  # what the server asked for, or this boot's log, is out of bounds
            raise BadAnswer(f"this quote cannot be submitted: {exc.error_count()} field(s) out of bounds: "
                            f"{', '.join('.'.join(map(str, e['loc'])) for e in exc.errors())}") from exc
        verdict = await transport.submit_quote(device_id, quote)
        if not verdict.passed:
            # The server's verdict, not a fault here: a warning (the server logs why).
            log.warning("attestation failed: this device is quarantined until an operator releases it")
        return verdict.passed


def _decode(value: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError as exc:
        raise BadAnswer(f"unexpected credential challenge: {exc}") from exc
