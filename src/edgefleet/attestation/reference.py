"""Reference values: the measurements a device must show, event by event, after booting a
release on a hardware model. Pure: JSON in, comparisons out.

The published form is a JSON document whose records follow TCG's Canonical Event Log
(CEL-JSON) layout, as systemd-pcrlock and virt-fw-measure write them; its schema ships
beside this module (``reference-values.schema.json``)::

    {"format": "edgefleet-reference-values/1", "bank": "sha256",
     "records": [{"recnum": 0, "pcr": 4, "digests": [{"hashAlg": "sha256", "digest": "<hex>"}],
                  "content_type": "pcclient_std",
                  "content": {"event_type": "EV_EFI_BOOT_SERVICES_APPLICATION",
                              "description": "UKI uki.efi"},
                  "source": "uki"}, ...],
     "pcrs": {"4": "<hex>", ...}}

``pcrs`` is what the records replay to (a verifier that only compares final values reads
just that). A record's ``source`` says where the prediction came from: ``firmware``,
``bootloader``, ``uki``, ``kernel``, ``initrd``, ``secureboot`` (predicted from the
artifacts), or ``golden`` (recorded from a device known to be good).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from importlib.resources import files
from typing import Any

from edgefleet.attestation import eventlog
from edgefleet.errors import InvalidRequest

FORMAT = "edgefleet-reference-values/1"
MAX_RECORDS = 4096

EVENT_TYPES = {
    0x00000001: "EV_POST_CODE", 0x00000003: "EV_NO_ACTION", 0x00000004: "EV_SEPARATOR", 0x00000005: "EV_ACTION",
    0x00000006: "EV_EVENT_TAG", 0x00000007: "EV_S_CRTM_CONTENTS", 0x00000008: "EV_S_CRTM_VERSION",
    0x0000000A: "EV_NONHOST_INFO", 0x0000000D: "EV_IPL", 0x00000012: "EV_TABLE_OF_DEVICES",
    0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG", 0x80000002: "EV_EFI_VARIABLE_BOOT",
    0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION", 0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER",
    0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER", 0x80000006: "EV_EFI_GPT_EVENT", 0x80000007: "EV_EFI_ACTION",
    0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB", 0x80000009: "EV_EFI_HANDOFF_TABLES",
    0x8000000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2", 0x8000000B: "EV_EFI_HANDOFF_TABLES2",
    0x800000E0: "EV_EFI_VARIABLE_AUTHORITY", 0x800000E1: "EV_EFI_SPDM_FIRMWARE_BLOB",
    0x800000E2: "EV_EFI_SPDM_FIRMWARE_CONFIG", 0x80000010: "EV_EFI_HCRTM_EVENT",
    0x80000011: "EV_EFI_VARIABLE_BOOT2",
}
TYPE_IDS = {name: value for value, name in EVENT_TYPES.items()}


def type_name(event_type: int) -> str:
    return EVENT_TYPES.get(event_type, f"{event_type:#010x}")


@dataclass(frozen=True)
class ReferenceEvent:
    pcr: int
    event_type: int
    digest: bytes  # in the document's bank
    description: str = ""
    source: str = ""

    def label(self) -> str:
        what = f" {self.description!r}" if self.description else ""
        return f"{type_name(self.event_type)}{what} ({self.source or 'reference'})"


@dataclass(frozen=True)
class ReferenceValues:
    """Expected events of some PCRs, in order, in one bank."""

    events: tuple[ReferenceEvent, ...]
    bank: str = "sha256"

    @cached_property
    def pcrs(self) -> tuple[int, ...]:
        return tuple(sorted({event.pcr for event in self.events}))

    @cached_property
    def digest(self) -> bytes:
        """Names this content (every field of every event): what a verdict remembered
        against these values is keyed on."""
        canonical = [self.bank, [[e.pcr, e.event_type, e.digest.hex(), e.description, e.source]
                                 for e in self.events]]
        return hashlib.sha256(json.dumps(canonical).encode()).digest()

    def values(self) -> dict[int, bytes]:
        """What the events replay to (TPM2_PCR_Extend from zeros)."""
        size = eventlog.DIGEST_SIZES[eventlog.BANKS[self.bank]]
        values = {pcr: b"\0" * size for pcr in self.pcrs}
        for event in self.events:
            values[event.pcr] = hashlib.new(self.bank, values[event.pcr] + event.digest).digest()
        return values

    def merged(self, other: ReferenceValues) -> ReferenceValues:
        """These events plus ``other``'s for the PCRs these do not cover."""
        if other.bank != self.bank:
            raise InvalidRequest(f"reference values in {other.bank} and {self.bank} do not combine",
                                 code="invalid_reference_values")
        covered = set(self.pcrs)
        return ReferenceValues(self.events + tuple(e for e in other.events if e.pcr not in covered), self.bank)

    def only(self, pcrs: Iterable[int]) -> ReferenceValues:
        wanted = set(pcrs)
        return ReferenceValues(tuple(e for e in self.events if e.pcr in wanted), self.bank)

    def to_document(self) -> dict[str, Any]:
        records = [{
            "recnum": number, "pcr": event.pcr,
            "digests": [{"hashAlg": self.bank, "digest": event.digest.hex()}],
            "content_type": "pcclient_std",
            "content": {"event_type": type_name(event.event_type), "description": event.description},
            "source": event.source,
        } for number, event in enumerate(self.events)]
        return {"format": FORMAT, "bank": self.bank, "records": records,
                "pcrs": {str(pcr): value.hex() for pcr, value in sorted(self.values().items())}}


def _fail(message: str) -> InvalidRequest:
    return InvalidRequest(f"reference values: {message}", code="invalid_reference_values")


def from_document(document: Any) -> ReferenceValues:
    """Parse and check a published document (every record, and ``pcrs`` against the replay).

    Raises InvalidRequest (code ``invalid_reference_values``).
    """
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise _fail(f"not a {FORMAT} document")
    bank = document.get("bank")
    if bank not in eventlog.BANKS:
        raise _fail(f"unknown bank {bank!r}")
    size = eventlog.DIGEST_SIZES[eventlog.BANKS[bank]]
    records = document.get("records")
    if not isinstance(records, list) or not 0 < len(records) <= MAX_RECORDS:
        raise _fail(f"records must be a list of 1 to {MAX_RECORDS}")
    events = []
    for number, item in enumerate(records):
        try:
            pcr = item["pcr"]
            digests = {d["hashAlg"]: d["digest"] for d in item["digests"]}
            content = item.get("content", {})
            kind = content["event_type"]
            event_type = TYPE_IDS[kind] if kind in TYPE_IDS else int(kind, 16)
            digest = bytes.fromhex(digests[bank])
            description = str(content.get("description", ""))[:256]
            source = str(item.get("source", ""))[:64]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise _fail(f"record {number} is malformed ({exc!r})") from exc
        if not isinstance(pcr, int) or not 0 <= pcr < eventlog.PCR_COUNT or len(digest) != size:
            raise _fail(f"record {number} names PCR {pcr!r} or a digest of the wrong size")
        events.append(ReferenceEvent(pcr, event_type, digest, description, source))
    values = ReferenceValues(tuple(events), bank)
    stated = document.get("pcrs")
    if stated is not None:
        replayed = {str(pcr): value.hex() for pcr, value in values.values().items()}
        if stated != replayed:
            raise _fail("the pcrs stated do not equal what the records replay to")
    return values


def loads(text: str | bytes) -> ReferenceValues:
    """Raises InvalidRequest for anything but a valid document."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise _fail(f"not JSON ({exc})") from exc
    return from_document(document)


def schema() -> dict[str, Any]:
    """The published JSON Schema of the document."""
    value = json.loads(files("edgefleet.attestation").joinpath("reference-values.schema.json").read_text())
    assert isinstance(value, dict)
    return value


def from_log(log: eventlog.EventLog, pcrs: Iterable[int], bank: str = "sha256",
             source: str = "golden") -> ReferenceValues:
    """The events of ``pcrs`` in a known-good device's log, as reference values."""
    alg = eventlog.BANKS[bank]
    wanted = set(pcrs)
    return ReferenceValues(tuple(
        ReferenceEvent(e.pcr, e.event_type, e.digests[alg], "", source)
        for e in log.events if e.pcr in wanted and e.event_type != eventlog.EV_NO_ACTION), bank)


@dataclass(frozen=True)
class Mismatch:
    """A PCR whose events differ from the reference, and the first event that does."""

    pcr: int
    message: str

    def __str__(self) -> str:
        return self.message


def compare(log: eventlog.EventLog, reference: ReferenceValues) -> list[Mismatch]:
    """Every PCR of ``reference`` whose events in ``log`` differ, naming the first event
    that does (its position in the log, type, digest, and what was expected).

    Raises InvalidRequest when the log has no digests in the reference's bank."""
    alg = eventlog.BANKS[reference.bank]
    if alg not in log.algorithms:
        raise InvalidRequest(f"event log: the log has no {reference.bank} digests", code="bad_event_log")
    seen: dict[int, list[tuple[int, eventlog.Event]]] = {}
    for position, event in enumerate(log.events):
        if event.event_type != eventlog.EV_NO_ACTION:
            seen.setdefault(event.pcr, []).append((position, event))
    expected: dict[int, list[ReferenceEvent]] = {}
    for ref in reference.events:
        expected.setdefault(ref.pcr, []).append(ref)
    failures: list[Mismatch] = []
    for pcr in sorted(expected):
        actual, wanted = seen.get(pcr, []), expected[pcr]
        for index in range(max(len(actual), len(wanted))):
            if index >= len(actual):
                failures.append(Mismatch(pcr, f"policy: PCR {pcr} lacks event {index}, expected "
                                              f"{wanted[index].label()} {wanted[index].digest.hex()}"))
                break
            position, event = actual[index]
            got = event.digests[alg]
            if index >= len(wanted):
                failures.append(Mismatch(pcr, f"policy: PCR {pcr} has an unexpected event {index} (log event "
                                              f"{position}, {type_name(event.event_type)}, {got.hex()})"))
                break
            ref = wanted[index]
            if got != ref.digest or event.event_type != ref.event_type:
                failures.append(Mismatch(pcr, f"policy: PCR {pcr} event {index} (log event {position}, "
                                              f"{type_name(event.event_type)}) is {got.hex()}; expected "
                                              f"{ref.label()} {ref.digest.hex()}"))
                break
    return failures


def as_values(reference: ReferenceValues | None, fallback: Mapping[int, bytes]) -> dict[int, bytes]:
    """PCR values a device must show: the reference's replay over ``fallback``."""
    values = dict(fallback)
    if reference is not None:
        values.update(reference.values())
    return values
