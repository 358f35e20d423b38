"""The device's side of attestation: bind the TPM identity once (EK, AK, credential
activation), then quote on request and keep a fresh workload token for local workloads.

TPM commands are blocking (tpm2-tss), so they run in a worker thread. The workload token is
written atomically to a file only the agent's user and group can read (0640)."""

from __future__ import annotations

import asyncio
import base64
import logging
from pathlib import Path
from typing import Any, Protocol

from edgefleet.errors import BadAnswer
from edgefleet.web.device_client import DeviceTransport

log = logging.getLogger("edgefleet.agent")


class AttestingTpm(Protocol):
    def endorsement_key(self) -> bytes: ...

    def ek_certificate(self) -> bytes | None: ...

    def attestation_key(self) -> bytes: ...

    def activate_credential(self, id_object: bytes, encrypted_secret: bytes) -> bytes: ...

    def quote(self, nonce: bytes, bank: str, pcrs: list[int]) -> tuple[bytes, bytes, dict[int, bytes]]: ...


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Attestor:
    def __init__(self, tpm: AttestingTpm, event_log: Path, ek_certificate_file: Path | None = None) -> None:
        self.tpm = tpm
        self.event_log = event_log
        self.ek_certificate_file = ek_certificate_file

    async def enroll(self, transport: DeviceTransport, device_id: str) -> None:
        """Present EK and AK; activate the credential the server sends back (once: a
        rebooted TPM re-derives the same keys and the server answers 204)."""
        ek, ak = await asyncio.to_thread(self.tpm.endorsement_key), await asyncio.to_thread(self.tpm.attestation_key)
        body = {"ek_public": _b64(ek), "ak_public": _b64(ak)}
        certificate = (await asyncio.to_thread(self.ek_certificate_file.read_bytes) if self.ek_certificate_file
                       else await asyncio.to_thread(self.tpm.ek_certificate))
        if certificate:
            body["ek_certificate"] = _b64(certificate)
        challenge = await transport.attestation(device_id, "identity", body)
        if challenge is None:
            return
        credential = await asyncio.to_thread(self.tpm.activate_credential, _decode(challenge, "id_object"),
                                             _decode(challenge, "encrypted_secret"))
        await transport.attestation(device_id, "activate", {"credential": _b64(credential)})
        log.info("TPM identity bound to %s", device_id)

    async def attest(self, transport: DeviceTransport, device_id: str) -> bool:
        """Quote the PCRs the server asks for, with the boot event log; True if it passed."""
        issued = await transport.attestation(device_id, "nonce", None) or {}
        try:
            nonce, pcrs, bank = bytes.fromhex(issued["nonce"]), [int(p) for p in issued["pcrs"]], str(issued["bank"])
        except (KeyError, ValueError, TypeError) as exc:
            raise BadAnswer(f"unexpected nonce answer: {exc}") from exc
        attest, signature, values = await asyncio.to_thread(self.tpm.quote, nonce, bank, pcrs)
        log_bytes = await asyncio.to_thread(self.event_log.read_bytes)
        verdict = await transport.attestation(device_id, "quote", {
            "nonce": nonce.hex(), "attest": _b64(attest), "signature": _b64(signature),
            "pcr_values": {str(k): v.hex() for k, v in values.items()}, "event_log": _b64(log_bytes),
        }) or {}
        passed = verdict.get("passed") is True
        if not passed:
            log.error("attestation failed: this device is quarantined until an operator releases it")
        return passed


def _decode(answer: dict[str, Any], key: str) -> bytes:
    try:
        return base64.b64decode(str(answer[key]), validate=True)
    except (KeyError, ValueError) as exc:
        raise BadAnswer(f"unexpected credential challenge: {exc}") from exc
