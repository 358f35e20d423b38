"""Software TPMs for benches that emulate thousands of devices, and the device protocol they
speak over one kept-alive mTLS connection (raw HTTP/1.1, as cheap for the load generator as
it can be, so that the machine's two cores go to the control plane).

Each device gets its own ``InsecureSoftwareTpm`` (the same TPM structures as a real TPM;
the real verifier checks them). Its keys are made once and cached under
``~/.cache/edgefleet-bench/tpms``: an RSA-2048 endorsement key takes about 60 ms to make.
A boot is measured from events computed once per image.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import multiprocessing
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkin import read_response
from edgefleet.agent.hardware.firmware import boot_events, image_digests
from edgefleet.agent.hardware.softtpm import InsecureSoftwareTpm
from edgefleet.attestation import eventlog

CACHE = Path.home() / ".cache" / "edgefleet-bench" / "tpms"


class Refused(ConnectionError):
    """The server answered something other than what the step needs (an overloaded server
    says 503): the device backs off and tries the step again."""


def _make(directory: str) -> None:
    logging.getLogger("edgefleet.agent").setLevel(logging.ERROR)
    InsecureSoftwareTpm(Path(directory))


def software_tpms(count: int) -> list[InsecureSoftwareTpm]:
    """``count`` software TPMs, their keys made (in parallel) only the first time."""
    logging.getLogger("edgefleet.agent").setLevel(logging.ERROR)  # each one warns it is insecure
    directories = [CACHE / f"{i:05d}" for i in range(count)]
    missing = [str(d) for d in directories if not (d / "ak.key").exists()]
    if missing:
        print(f"making the keys of {len(missing)} software TPMs (once: cached in {CACHE})", file=sys.stderr,
              flush=True)
        with multiprocessing.get_context("spawn").Pool() as pool:
            pool.map(_make, missing, chunksize=64)
    return [InsecureSoftwareTpm(d) for d in directories]


@dataclass(frozen=True)
class BootImage:
    """What the emulated firmware measures when it boots a release's image."""

    release: str
    events: Sequence[eventlog.Event]
    log: bytes

    @staticmethod
    def of(release: str, image: Path) -> BootImage:
        events = boot_events(image_digests(image))
        return BootImage(release, events, eventlog.encode(events))

    def boot(self, tpm: InsecureSoftwareTpm) -> None:
        tpm.startup()
        for event in self.events:
            tpm.extend_pcr(event.pcr, "sha256", event.digests[eventlog.ALG_SHA256])
            tpm.extend_pcr(event.pcr, "sha1", event.digests[eventlog.ALG_SHA1])


# A token as the agent asks for one: for one of its workloads, to show one service.
WORKLOAD_TOKEN = "/workload-token?workload=telemetry&audience=metrics.example"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Connection:
    """One device's kept-alive connection: a request at a time, answers read in full."""

    def __init__(self, device_id: str, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.device_id = device_id
        self.host = f"Host: 127.0.0.1:{port}\r\n"
        self.reader, self.writer = reader, writer

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None,
                   expect: tuple[int, ...] = (200,)) -> tuple[int, Any]:
        """``path`` is under the device's own ``/api/v1/devices/<id>``."""
        head = f"{method} /api/v1/devices/{self.device_id}{path} HTTP/1.1\r\n{self.host}"
        if body is None:
            payload = b""
            head += "content-length: 0\r\n\r\n" if method == "POST" else "\r\n"
        else:
            payload = json.dumps(body).encode()
            head += f"content-type: application/json\r\ncontent-length: {len(payload)}\r\n\r\n"
        self.writer.write(head.encode() + payload)
        status, answer = await read_response(self.reader)
        if status not in expect:
            raise Refused(f"{method} {path} answered {status}")
        return status, json.loads(answer) if answer else None

    async def report(self, seq: int, release: str, phase: str, reason: str | None = None,
                     failing: Sequence[str] = (), challenge: bool = False) -> dict[str, Any]:
        """A status report as the agent sends it, with its health verdict: unhealthy, naming
        them, when required checks in ``failing`` fail, else healthy. With ``challenge`` (the
        report before an update's quote), the answer brings the quote's nonce. The answer."""
        update: dict[str, Any] = {"phase": phase, "release": release, **({"reason": reason} if reason else {})}
        findings = [{"name": name, "required": True, "detail": "exit status 1"} for name in failing]
        ack: dict[str, Any] = (await self.call("POST", "/status", {
            "seq": seq, "running_version": release, "update_state": phase,
            "health": "unhealthy" if findings else "healthy", "health_findings": findings, "update": update,
            **({"challenge": True} if challenge else {})}))[1]
        return ack

    async def enroll_tpm(self, tpm: InsecureSoftwareTpm) -> None:
        """Bind the TPM's identity: present EK and AK, activate the credential."""
        status, challenge = await self.call("POST", "/attestation/identity", {
            "ek_public": _b64(tpm.endorsement_key()), "ak_public": _b64(tpm.attestation_key())}, expect=(200, 204))
        if status == 204:
            return  # already bound (an earlier attempt got this far)
        credential = tpm.activate_credential(base64.b64decode(challenge["id_object"]),
                                             base64.b64decode(challenge["encrypted_secret"]))
        await self.call("POST", "/attestation/activate", {"credential": _b64(credential)}, expect=(204,))

    async def attest(self, tpm: InsecureSoftwareTpm, booted: BootImage,
                     challenge: dict[str, Any] | None = None) -> bool:
        """Quote what the server asks for with the boot's event log, on ``challenge`` (a
        report's answer brought it) or on a nonce asked for; after a pass, fetch a workload
        token, as the agent does. True if it passed."""
        issued = challenge or (await self.call("POST", "/attestation/nonce"))[1]
        attest, signature, values = tpm.quote(bytes.fromhex(issued["nonce"]), issued["bank"],
                                              [int(p) for p in issued["pcrs"]])
        verdict = (await self.call("POST", "/attestation/quote", {
            "nonce": issued["nonce"], "attest": _b64(attest), "signature": _b64(signature),
            "pcr_values": {str(k): v.hex() for k, v in values.items()}, "event_log": _b64(booted.log)}))[1]
        if verdict.get("passed") is not True:
            return False
        await self.call("GET", WORKLOAD_TOKEN)
        return True

    async def director_metadata(self, held_snapshot: int) -> int:
        """The device's own Uptane director metadata, as the agent reads it before an update:
        in one answer, all it lacks of what the timestamp names, given the snapshot version
        it holds (0: none); returns the snapshot version it holds now."""
        files = (await self.call("GET", f"/director?root=1&snapshot={held_snapshot}"))[1]["files"]
        version: int = json.loads(files["timestamp.json"])["signed"]["meta"]["snapshot.json"]["version"]
        assert version == held_snapshot or f"{version}.targets.json" in files, "the bundle lacks the new targets"
        return version
