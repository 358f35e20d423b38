"""Telemetry on the wire: a device ships batches of its buffered records, numbered by the
device; the receiver stores each record once and acknowledges how far it has stored."""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, model_validator

from edgefleet.protocol.base import Strict

MAX_RECORDS = 5000
MAX_DECOMPRESSED = 4 << 20  # bytes a gzip batch may inflate to


class TelemetryRecord(Strict):
    seq: Annotated[int, Field(ge=1, le=2**62)]
    kind: Literal["log", "metric", "event"]
    at: datetime
    body: Annotated[str, StringConstraints(max_length=16384)]


class TelemetryBatch(Strict):
    """One batch, sent gzip-compressed (``Content-Encoding: gzip``); ``batch_id`` names it
    (device, first and last seq) so a batch sent again is recognised."""

    batch_id: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._:-]{1,128}$")]
    dropped: Annotated[int, Field(ge=0)] = 0  # records the device's buffer dropped so far (cumulative)
    records: Annotated[list[TelemetryRecord], Field(min_length=1, max_length=MAX_RECORDS)]

    @model_validator(mode="after")
    def _in_order(self) -> TelemetryBatch:
        seqs = [r.seq for r in self.records]
        if any(b <= a for a, b in itertools.pairwise(seqs)):
            raise ValueError("records must be in increasing seq order")
        return self


class TelemetryAck(Strict):
    stored_through: int  # every record up to this seq is stored


class TelemetryPage(Strict):
    records: list[TelemetryRecord]
    stored_through: int
    dropped: int
