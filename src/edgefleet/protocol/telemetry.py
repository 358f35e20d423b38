"""Telemetry on the wire: a device ships batches of its buffered records, numbered by the
device; the receiver stores each record once and acknowledges how far it has stored.

A batch is a run of consecutive records (the buffer only ever gives them so): the first
one's sequence number and time (unix milliseconds), then each record's kind, its time as
milliseconds after the record before it, and its JSON body as an object. No per-record
sequence number, no absolute times, no escaped JSON-in-JSON: after gzip a metric point
costs fewer bytes than the same point as OTLP protobuf + gzip (bench/telemetry.py)."""

from __future__ import annotations

import json
import zlib
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, ValidationError

from edgefleet.errors import InvalidRequest
from edgefleet.protocol.base import MAX_INT, Count, Strict

MAX_RECORDS = 5000
MAX_DECOMPRESSED = 4 << 20  # bytes a gzip batch may inflate to
MAX_SEQ = MAX_INT
Kind = Literal["log", "metric", "event"]


class TelemetryRecord(Strict):
    """A stored record, as operators read it back."""

    seq: Annotated[int, Field(ge=1, le=MAX_SEQ)]
    kind: Kind
    at: datetime
    body: str


class WireRecord(Strict):
    kind: Kind
    dt_ms: Annotated[int, Field(ge=-(2**40), le=2**40)]  # after the previous record (the clock may step back)
    body: dict[str, Any]


class TelemetryBatch(Strict):
    """One batch, sent gzip-compressed (``Content-Encoding: gzip``); ``batch_id`` names it
    (device, first and last seq) so a batch sent again is recognised."""

    batch_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
    dropped: Count = 0  # records the device's buffer dropped so far (cumulative)
    site: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,64}$")] | None = None  # the device's own
    first_seq: Annotated[int, Field(ge=1, le=MAX_SEQ - MAX_RECORDS)]
    at_ms: Annotated[int, Field(ge=0, le=2**45)]  # the first record's time; its own dt_ms is 0
    records: Annotated[list[WireRecord], Field(min_length=1, max_length=MAX_RECORDS)]

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.records) - 1

    def rows(self) -> list[dict[str, Any]]:
        """The records as a receiver stores them: seq, kind, at (UTC), body (JSON text)."""
        rows, at_ms = [], self.at_ms
        for n, record in enumerate(self.records):
            at_ms += record.dt_ms
            rows.append({"seq": self.first_seq + n, "kind": record.kind,
                         "at": datetime.fromtimestamp(at_ms / 1000, UTC),
                         "body": json.dumps(record.body, separators=(",", ":"))})
        return rows


class TelemetryAck(Strict):
    stored_through: int  # every record up to this seq is stored


class TelemetryPage(Strict):
    records: list[TelemetryRecord]
    stored_through: int
    dropped: int


def _inflate(data: bytes, encoding: str) -> bytes:
    if encoding in ("", "identity"):
        return data
    if encoding != "gzip":
        raise InvalidRequest(f"unsupported content-encoding {encoding!r} (gzip or none)", code="bad_encoding")
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(data, MAX_DECOMPRESSED)
    except zlib.error as exc:
        raise InvalidRequest(f"telemetry batch is not valid gzip: {exc}", code="bad_encoding") from exc
    if inflater.unconsumed_tail:
        raise InvalidRequest(f"telemetry batch inflates beyond {MAX_DECOMPRESSED} bytes", code="batch_too_large")
    if not inflater.eof:
        raise InvalidRequest("telemetry batch is truncated gzip", code="bad_encoding")
    return out


def parse_batch(body: bytes, content_encoding: str) -> TelemetryBatch:
    """A batch as a receiver (control plane or hub) gets it. Raises InvalidRequest: bad or
    unknown encoding, a gzip bomb (inflating beyond MAX_DECOMPRESSED), a malformed batch."""
    data = _inflate(body, content_encoding.strip().lower())
    try:
        return TelemetryBatch.model_validate_json(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise InvalidRequest(f"malformed telemetry batch: {'.'.join(map(str, first['loc']))}: {first['msg']}",
                             code="invalid_telemetry") from exc
