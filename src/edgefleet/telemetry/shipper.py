"""Shipping the durable buffer: batches by size and age, gzip-compressed, each with an id
naming its device and sequence numbers; sent until the receiver acknowledges them, with
jittered exponential backoff and no limit on retries. Records leave the buffer only once
the receiver says it has stored them, so the wire is at-least-once and, with the
receiver's de-duplication by sequence number, the whole path is exactly-once."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from edgefleet.errors import EdgefleetError, TransportError
from edgefleet.protocol.telemetry import MAX_RECORDS, TelemetryAck
from edgefleet.telemetry.buffer import Batch, DurableBuffer
from edgefleet.util.aio import any_set
from edgefleet.util.backoff import Backoff

log = logging.getLogger("edgefleet.telemetry")
MAX_WIRE_BYTES = 60 * 1024  # a compressed batch stays under the server's 64 KiB body limit
Send = Callable[[str, bytes], Awaitable[TelemetryAck]]  # device id, gzip body -> ack


def _body(raw: bytes) -> dict[str, Any]:
    """A record's JSON object; anything else a producer stored travels as ``{"raw": text}``
    (one unreadable record must not hold up the stream)."""
    text = raw.decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    return body if isinstance(body, dict) else {"raw": text}


def encode(device_id: str, batch: Batch, site: str | None = None) -> bytes:
    """The batch as the wire carries it (``TelemetryBatch``): JSON, gzip-compressed. The
    buffer gives consecutive records, so the first seq numbers them all."""
    if batch.last_seq - batch.first_seq + 1 != len(batch.records):
        raise ValueError("a telemetry batch must be consecutive records")
    times = [int(r.at * 1000) for r in batch.records]
    wire = {"batch_id": f"{device_id}:{batch.first_seq}-{batch.last_seq}", "dropped": batch.dropped,
            "first_seq": batch.first_seq, "at_ms": times[0],
            "records": [{"kind": r.kind, "dt_ms": at - before, "body": _body(r.body)}
                        for r, before, at in zip(batch.records, [times[0], *times], times, strict=False)]}
    if site is not None:
        wire["site"] = site
    return gzip.compress(json.dumps(wire, separators=(",", ":")).encode(), compresslevel=6)


@dataclass
class Shipper:
    buffer: DurableBuffer
    send: Send
    device_id: str
    site: str | None = None  # tells a regional hub which site's summaries the records join
    max_records: int = 1000
    max_age_seconds: float = 5.0  # a partial batch waits this long for company
    idle_seconds: float = 300.0  # with nothing queued, look again this often unless woken (``wake``)
    backoff_initial_seconds: float = 1.0
    backoff_max_seconds: float = 300.0
    rng: random.Random = field(default_factory=random.Random)
    last_success: float | None = None  # unix time of the last acknowledged batch
    _wake: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        """New records in the buffer: ship now if a batch is full, else when it is old enough."""
        self._wake.set()

    async def ship_once(self) -> int:
        """Send the oldest batch and remove what the receiver stored; returns how many
        records left the buffer (0 when it is empty). Raises TransportError (link down)
        or another EdgefleetError (the receiver refused)."""
        count = min(self.max_records, MAX_RECORDS)
        while True:
            batch = await asyncio.to_thread(self.buffer.batch, count, 4 * MAX_WIRE_BYTES)
            if batch is None:
                return 0
            body = await asyncio.to_thread(encode, self.device_id, batch, self.site)
            if len(body) <= MAX_WIRE_BYTES or len(batch.records) == 1:
                break
            count = max(1, len(batch.records) // 2)
        ack = await self.send(self.device_id, body)
        through = min(ack.stored_through, batch.last_seq)
        removed = await asyncio.to_thread(self.buffer.ack, through) if through >= batch.first_seq else 0
        self.last_success = time.time()
        return removed

    async def run(self, stop: asyncio.Event) -> None:
        """Ship until ``stop``: full batches at once, a partial one after ``max_age_seconds``,
        and after a failure again and again, backing off (never giving up)."""
        backoff = Backoff(self.backoff_initial_seconds, self.backoff_max_seconds, self.rng)
        while not stop.is_set():
            failed = False
            try:
                figures = await asyncio.to_thread(self.buffer.figures)
                full = figures.queued >= self.max_records
                old = figures.oldest_age_seconds is not None and figures.oldest_age_seconds >= self.max_age_seconds
                if full or old:
                    await self.ship_once()
                    backoff.reset()
                    continue
                delay = self.idle_seconds if figures.queued == 0 else max(
                    0.05, self.max_age_seconds - (figures.oldest_age_seconds or 0.0))
            except (TransportError, EdgefleetError) as exc:
                delay, failed = backoff.next_delay(), True
                log.warning("telemetry not shipped, retrying in %.1fs: %s", delay, exc)
            except Exception:  # a bug must not end shipping for good: log it, back off, go on
                delay, failed = backoff.next_delay(), True
                log.exception("telemetry shipping failed unexpectedly, retrying in %.1fs", delay)
            self._wake.clear()
            # New records do not cut a backoff short (they would, all through an outage).
            await any_set(stop, *([] if failed else [self._wake]), timeout=delay)
