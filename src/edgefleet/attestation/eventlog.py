"""The TCG PC Client crypto-agile boot event log (TCG PC Client Platform Firmware Profile,
section 10): little-endian, a SHA-1-format header event whose data is the "Spec ID Event03"
listing the digest algorithms, then TCG_PCR_EVENT2 records with one digest per algorithm.

Parsing is strict and bounded: every size is checked against what remains, unknown
algorithms and trailing bytes are refused, and the count of events is capped.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from edgefleet.errors import InvalidRequest

ALG_SHA1, ALG_SHA256, ALG_SHA384, ALG_SHA512 = 0x0004, 0x000B, 0x000C, 0x000D
DIGEST_SIZES = {ALG_SHA1: 20, ALG_SHA256: 32, ALG_SHA384: 48, ALG_SHA512: 64}
HASH_NAMES = {ALG_SHA1: "sha1", ALG_SHA256: "sha256", ALG_SHA384: "sha384", ALG_SHA512: "sha512"}
BANKS = {name: alg for alg, name in HASH_NAMES.items()}

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


@dataclass(frozen=True)
class Event:
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


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise _err(f"truncated at byte {self.at} (wanted {n} more)")
        chunk = self.data[self.at:self.at + n]
        self.at += n
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int(struct.unpack("<H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.take(4))[0])

    @property
    def done(self) -> bool:
        return self.at == len(self.data)


def _spec_id(data: bytes) -> tuple[int, ...]:
    r = _Reader(data)
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


def parse(data: bytes) -> EventLog:
    """Raises InvalidRequest (code ``bad_event_log``) for anything malformed or oversized."""
    if len(data) > MAX_LOG_BYTES:
        raise _err(f"{len(data)} bytes is over the {MAX_LOG_BYTES} byte bound")
    r = _Reader(data)
    # header: TCG_PCR_EVENT (SHA-1 format)
    pcr, event_type = r.u32(), r.u32()
    r.take(20)
    size = r.u32()
    if pcr != 0 or event_type != EV_NO_ACTION or size > 4096:
        raise _err("missing the EV_NO_ACTION header event")
    header = r.take(size)
    algorithms = _spec_id(header)
    events: list[Event] = []
    locality = 0
    while not r.done:
        if len(events) >= MAX_EVENTS:
            raise _err(f"more than {MAX_EVENTS} events")
        pcr, event_type = r.u32(), r.u32()
        if pcr >= PCR_COUNT:
            raise _err(f"event {len(events)} names PCR {pcr}")
        count = r.u32()
        if count != len(algorithms):
            raise _err(f"event {len(events)} has {count} digests, the log declares {len(algorithms)}")
        digests: dict[int, bytes] = {}
        for _ in range(count):
            alg = r.u16()
            if alg not in algorithms or alg in digests:
                raise _err(f"event {len(events)} has an undeclared or repeated algorithm {alg:#06x}")
            digests[alg] = r.take(DIGEST_SIZES[alg])
        size = r.u32()
        if size > MAX_EVENT_DATA:
            raise _err(f"event {len(events)} data of {size} bytes")
        event = Event(pcr, event_type, digests, r.take(size))
        if event_type == EV_NO_ACTION and event.data.startswith(STARTUP_LOCALITY_SIGNATURE) and pcr == 0:
            locality = event.data[len(STARTUP_LOCALITY_SIGNATURE)] if len(event.data) > 16 else 0
        events.append(event)
    return EventLog(algorithms, tuple(events), locality, header)


def replay(log: EventLog, bank: str = "sha256", pcrs: Iterable[int] | None = None) -> dict[int, bytes]:
    """The PCR values the log's events produce in ``bank`` (TPM2_PCR_Extend semantics:
    new = H(old || digest), starting from zeros; EV_NO_ACTION events are not extended)."""
    alg = BANKS[bank]
    if alg not in log.algorithms:
        raise _err(f"the log has no {bank} digests")
    size = DIGEST_SIZES[alg]
    values = {i: b"\0" * size for i in (pcrs if pcrs is not None else range(PCR_COUNT))}
    if 0 in values and log.startup_locality:
        values[0] = b"\0" * (size - 1) + bytes([log.startup_locality])
    for event in log.events:
        if event.event_type == EV_NO_ACTION or event.pcr not in values:
            continue
        values[event.pcr] = hashlib.new(HASH_NAMES[alg], values[event.pcr] + event.digests[alg]).digest()
    return values


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
