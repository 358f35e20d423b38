"""The TCG PC Client crypto-agile boot event log (TCG PC Client Platform Firmware Profile,
section 10): little-endian, a SHA-1-format header event whose data is the "Spec ID Event03"
listing the digest algorithms, then TCG_PCR_EVENT2 records with one digest per algorithm.

Parsing is strict and bounded: every size is checked against what remains, unknown
algorithms and trailing bytes are refused, and the count of events is capped.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from edgefleet.attestation._wire import Reader
from edgefleet.errors import InvalidRequest

ALG_SHA1, ALG_SHA256, ALG_SHA384, ALG_SHA512 = 0x0004, 0x000B, 0x000C, 0x000D
DIGEST_SIZES = {ALG_SHA1: 20, ALG_SHA256: 32, ALG_SHA384: 48, ALG_SHA512: 64}
HASH_NAMES = {ALG_SHA1: "sha1", ALG_SHA256: "sha256", ALG_SHA384: "sha384", ALG_SHA512: "sha512"}
BANKS = {name: alg for alg, name in HASH_NAMES.items()}
HASH_FUNCTIONS: dict[int, Callable[[bytes], Any]] = {  # algorithm id -> hashlib constructor
    ALG_SHA1: hashlib.sha1, ALG_SHA256: hashlib.sha256, ALG_SHA384: hashlib.sha384, ALG_SHA512: hashlib.sha512,
}

EV_NO_ACTION = 0x00000003
EV_SEPARATOR = 0x00000004
EV_POST_CODE = 0x00000001
EV_IPL = 0x0000000D
EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
SPEC_ID_SIGNATURE = b"Spec ID Event03\0"
STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\0"

MAX_LOG_BYTES = 4 * 1024 * 1024
MAX_EVENTS = 10_000
MAX_EVENT_DATA = 1024 * 1024
PCR_COUNT = 24


class Event(NamedTuple):
    """One measurement (a NamedTuple: a verifier builds ~100 per quote, and it is cheap)."""

    pcr: int
    event_type: int
    digests: dict[int, bytes]  # algorithm id -> digest
    data: bytes


@dataclass(frozen=True)
class EventLog:
    algorithms: tuple[int, ...]
    events: tuple[Event, ...]
    startup_locality: int = 0
    header_data: bytes = field(default=b"", compare=False)


def _err(message: str) -> InvalidRequest:
    return InvalidRequest(f"event log: {message}", code="bad_event_log")


def _reader(data: bytes) -> Reader:
    return Reader(data, "event log", little_endian=True, limit=MAX_LOG_BYTES, code="bad_event_log")


def _spec_id(data: bytes) -> tuple[int, ...]:
    r = _reader(data)
    if r.take(16) != SPEC_ID_SIGNATURE:
        raise _err("first event is not a Spec ID Event03 (not a crypto-agile log)")
    r.u32()  # platformClass
    r.take(3)  # specVersionMinor, specVersionMajor, specErrata
    r.u8()  # uintnSize
    count = r.u32()
    if not 1 <= count <= 8:
        raise _err(f"{count} digest algorithms")
    algorithms = []
    for _ in range(count):
        alg, size = r.u16(), r.u16()
        if DIGEST_SIZES.get(alg) != size:
            raise _err(f"unknown digest algorithm {alg:#06x} of size {size}")
        algorithms.append(alg)
    vendor = r.u8()
    r.take(vendor)
    if not r.done:
        raise _err("trailing bytes in the Spec ID event")
    return tuple(algorithms)


def _header(data: bytes) -> tuple[tuple[int, ...], int, bytes]:
    """(declared algorithms, offset of the first TCG_PCR_EVENT2, header event data)."""
    r = _reader(data)  # refuses logs over MAX_LOG_BYTES
    # header: TCG_PCR_EVENT (SHA-1 format)
    pcr, event_type = r.u32(), r.u32()
    r.take(20)
    size = r.u32()
    if pcr != 0 or event_type != EV_NO_ACTION or size > 4096:
        raise _err("missing the EV_NO_ACTION header event")
    header = r.take(size)
    return _spec_id(header), r.at, header


_EVENT_HEAD = struct.Struct("<III")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
# (pcr, event type, {algorithm: digest}, data start, data end): plain tuples, because a
# verifier scans ~100 events per quote and object construction dominated the cost.
Scanned = tuple[int, int, dict[int, bytes], int, int]


def _scan(data: bytes, at: int, algorithms: tuple[int, ...]) -> tuple[list[Scanned], int]:
    head, u16, u32 = _EVENT_HEAD.unpack_from, _U16.unpack_from, _U32.unpack_from
    end = len(data)
    sizes = {alg: DIGEST_SIZES[alg] for alg in algorithms}
    declared = len(algorithms)
    events: list[Scanned] = []
    locality = 0
    while at < end:
        index = len(events)
        if index >= MAX_EVENTS:
            raise _err(f"more than {MAX_EVENTS} events")
        if at + 12 > end:
            raise _err(f"truncated at byte {at} (event {index} header)")
        pcr, event_type, count = head(data, at)
        at += 12
        if pcr >= PCR_COUNT:
            raise _err(f"event {index} names PCR {pcr}")
        if count != declared:
            raise _err(f"event {index} has {count} digests, the log declares {declared}")
        digests: dict[int, bytes] = {}
        for _ in range(count):
            if at + 2 > end:
                raise _err(f"truncated at byte {at} (event {index} digest)")
            alg = u16(data, at)[0]
            size = sizes.get(alg)
            if size is None or alg in digests:
                raise _err(f"event {index} has an undeclared or repeated algorithm {alg:#06x}")
            at += 2
            if at + size > end:
                raise _err(f"truncated at byte {at} (event {index} digest)")
            digests[alg] = data[at:at + size]
            at += size
        if at + 4 > end:
            raise _err(f"truncated at byte {at} (event {index} size)")
        size = u32(data, at)[0]
        at += 4
        if size > MAX_EVENT_DATA or at + size > end:
            raise _err(f"truncated or oversized data of event {index} ({size} bytes)")
        if event_type == EV_NO_ACTION and pcr == 0 and data.startswith(STARTUP_LOCALITY_SIGNATURE, at):
            locality = data[at + 16] if size > 16 else 0
        events.append((pcr, event_type, digests, at, at + size))
        at += size
    return events, locality


def parse(data: bytes) -> EventLog:
    """Raises InvalidRequest (code ``bad_event_log``) for anything malformed or oversized."""
    algorithms, at, header = _header(data)
    scanned, locality = _scan(data, at, algorithms)
    events = tuple(Event(pcr, kind, digests, data[start:stop]) for pcr, kind, digests, start, stop in scanned)
    return EventLog(algorithms, events, locality, header)


def _extend(events: Iterable[Scanned | Event], algorithms: tuple[int, ...], locality: int, bank: str,
            pcrs: Iterable[int] | None) -> dict[int, bytes]:
    # TPM2_PCR_Extend semantics: new = H(old || digest), starting from zeros (PCR 0 from
    # the startup locality); EV_NO_ACTION events are not extended.
    alg = BANKS[bank]
    if alg not in algorithms:
        raise _err(f"the log has no {bank} digests")
    size = DIGEST_SIZES[alg]
    extend = HASH_FUNCTIONS[alg]
    values = {i: b"\0" * size for i in (pcrs if pcrs is not None else range(PCR_COUNT))}
    if 0 in values and locality:
        values[0] = b"\0" * (size - 1) + bytes([locality])
    for event in events:
        pcr = event[0]
        if event[1] == EV_NO_ACTION or pcr not in values:
            continue
        values[pcr] = extend(values[pcr] + event[2][alg]).digest()
    return values


def replay(log: EventLog, bank: str = "sha256", pcrs: Iterable[int] | None = None) -> dict[int, bytes]:
    """The PCR values the log's events produce in ``bank``."""
    return _extend(log.events, log.algorithms, log.startup_locality, bank, pcrs)


def replay_bytes(data: bytes, bank: str, pcrs: Iterable[int]) -> dict[int, bytes]:
    """Parse (strictly, as ``parse``) and replay in one pass without building Event objects:
    the verifier's path. Raises InvalidRequest like ``parse``."""
    algorithms, at, _ = _header(data)
    scanned, locality = _scan(data, at, algorithms)
    return _extend(scanned, algorithms, locality, bank, pcrs)


def _spec_id_event(algorithms: tuple[int, ...]) -> bytes:
    body = SPEC_ID_SIGNATURE + struct.pack("<I3BB", 0, 0, 2, 0, 2) + struct.pack("<I", len(algorithms))
    for alg in algorithms:
        body += struct.pack("<HH", alg, DIGEST_SIZES[alg])
    return body + b"\0"


def encode(events: Iterable[Event], algorithms: tuple[int, ...] = (ALG_SHA1, ALG_SHA256)) -> bytes:
    """Write a crypto-agile log (what the emulated firmware produces)."""
    header = _spec_id_event(algorithms)
    out = bytearray(struct.pack("<II", 0, EV_NO_ACTION) + b"\0" * 20 + struct.pack("<I", len(header)) + header)
    for event in events:
        out += struct.pack("<III", event.pcr, event.event_type, len(algorithms))
        for alg in algorithms:
            out += struct.pack("<H", alg) + event.digests[alg]
        out += struct.pack("<I", len(event.data)) + event.data
    return bytes(out)


def uefi_image_load(length: int, location: int = 0x7E000000) -> bytes:
    """UEFI_IMAGE_LOAD_EVENT (UEFI spec / TCG PFP 10.2.3), the data of an
    EV_EFI_BOOT_SERVICES_APPLICATION event: location, length, link address, and an empty
    device path."""
    return struct.pack("<QQQQ", location, length, 0, 0)


def measure(pcr: int, event_type: int, data: bytes, content: bytes | None = None,
            algorithms: tuple[int, ...] = (ALG_SHA1, ALG_SHA256)) -> Event:
    """An event whose digests are the hashes of ``content`` (or of ``data`` itself)."""
    measured = data if content is None else content
    return Event(pcr, event_type, {alg: hashlib.new(HASH_NAMES[alg], measured).digest() for alg in algorithms}, data)
