"""Last-seen times, batched: a check-in costs a dict write; one UPDATE per interval
persists them all. Admin views overlay the unflushed times, so nothing looks stale."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime

from edgefleet.errors import StoreError
from edgefleet.store import Database
from edgefleet.store.devices import record_presence

log = logging.getLogger("edgefleet.server")


class Presence:
    def __init__(self) -> None:
        self._pending: dict[str, datetime] = {}
        self._inflight: dict[str, datetime] = {}  # being written: still overlaid until committed

    def seen(self, device_id: str, at: datetime) -> None:
        self._pending[device_id] = at

    def latest(self, device_id: str) -> datetime | None:
        return self._pending.get(device_id) or self._inflight.get(device_id)

    def forget(self, device_id: str) -> None:
        self._pending.pop(device_id, None)
        self._inflight.pop(device_id, None)

    async def flush(self, db: Database) -> int:
        """Write pending times; on failure they stay pending (newest time wins)."""
        batch, self._pending = self._pending, {}
        if not batch:
            return 0
        self._inflight = batch
        try:
            async with db.transaction() as conn:
                await record_presence(conn, batch)
        except StoreError:
            for device_id, at in batch.items():
                if device_id not in self._pending or self._pending[device_id] < at:
                    self._pending[device_id] = at
            raise
        finally:
            self._inflight = {}
        return len(batch)

    async def run(self, db: Database, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.flush(db)
            except StoreError as exc:
                log.warning("presence flush failed, will retry: %s", exc)
