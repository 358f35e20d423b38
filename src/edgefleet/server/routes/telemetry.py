"""Telemetry: devices ship gzip batches of their buffered records (stored once each, by
sequence number); operators read a device's records back."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Query, Request

from edgefleet.errors import NotFound
from edgefleet.protocol.base import MAX_INT
from edgefleet.protocol.telemetry import TelemetryAck, TelemetryPage, TelemetryRecord, parse_batch
from edgefleet.server.auth import CurrentDevice, ScopedViewer
from edgefleet.server.scoping import sees_device
from edgefleet.server.state import server_state
from edgefleet.store.telemetry import store_batch, telemetry_records, telemetry_stream

log = logging.getLogger("edgefleet.server.telemetry")
router = APIRouter(prefix="/api/v1", tags=["telemetry"])


@router.post("/devices/{device_id}/telemetry")
async def ship(device: CurrentDevice, request: Request) -> TelemetryAck:
    """Store a batch (records above what is stored already; a batch sent again adds
    nothing) and say how far this device's records are stored."""
    state = server_state(request)
    batch = parse_batch(await request.body(), request.headers.get("content-encoding", ""))
    now = state.clock.now()
    async with state.db.transaction() as conn:
        through = await store_batch(conn, device.id, batch.rows(), batch.dropped, now)
    state.metrics.telemetry_records.inc(len(batch.records))
    return TelemetryAck(stored_through=through)


@router.get("/admin/devices/{device_id}/telemetry")
async def read(who: ScopedViewer, request: Request, device_id: Annotated[str, Path(max_length=64)],
               after: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
               limit: Annotated[int, Query(ge=1, le=10000)] = 1000) -> TelemetryPage:
    """A device's stored records after ``after``, in order."""
    state = server_state(request)
    async with state.db.transaction() as conn:
        if who.scope is not None and not await sees_device(conn, who, device_id):
            raise NotFound(f"no telemetry from {device_id}")
        stream = await telemetry_stream(conn, device_id)
        rows = await telemetry_records(conn, device_id, after, limit)
    if stream is None:
        raise NotFound(f"no telemetry from {device_id}")
    return TelemetryPage(records=[TelemetryRecord(seq=r.seq, kind=r.kind, at=r.at, body=r.body)
                                  for r in rows], stored_through=stream.stored_through, dropped=stream.dropped)
