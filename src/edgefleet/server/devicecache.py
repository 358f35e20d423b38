"""The check-in hot path's cache: each device's current certificate serial and desired
version, so that a "nothing new" check-in costs no database round trip.

Coherence: every write that changes these (new desired state, decommission) appends to
the ``device_changes`` feed in the same transaction. This process evicts the entry at
once; every server process sharing the database polls the feed each
``device_cache_sync_seconds`` (default 1 s), evicts what changed and wakes its long polls.
That interval bounds how stale another process's cache can be. Entries also expire after
``device_cache_seconds`` as a backstop, and if the feed cannot be read the cache is
emptied and bypassed until it can. The cache is bounded; the oldest entries go first.

A read that overlaps an eviction of its device is not cached (it may have read the row
before the change): each eviction bumps a generation and notes it for the device, and
``put`` takes the generation its read began at. Evictions of other devices do not count:
during a rollout or a fleet's power-on something is evicted every moment, and a read
refused for another device's eviction is a read the next request makes again.
Changes this process made and already applied (evicted and woken) are noted, so that the
feed does not evict and wake their devices a second time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

from edgefleet.clock import Clock
from edgefleet.errors import StoreError
from edgefleet.server.longpoll import LongPolls
from edgefleet.store import Database
from edgefleet.store.devices import DeviceAuth, changes_since, latest_change, prune_changes

log = logging.getLogger("edgefleet.server")

FEED_RETENTION = timedelta(minutes=10)
FEED_BATCH = 10_000


class DeviceCache:
    def __init__(self, ttl: float, max_entries: int, monotonic: Callable[[], float]) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._monotonic = monotonic
        self._entries: dict[str, tuple[float, DeviceAuth]] = {}
        self.synced = False  # only trust entries while the change feed is being read
        self.generation = 0  # of evictions: a read that began before its device's latest is not cached
        self._evicted: dict[str, int] = {}  # device -> generation of its latest eviction
        self._cleared = 0  # generation of the latest clear (every device evicted)
        self.applied: set[int] = set()  # ids of changes made here, already evicted and woken

    def get(self, device_id: str) -> DeviceAuth | None:
        entry = self._entries.get(device_id)
        if entry is None:
            return None
        if self._monotonic() - entry[0] > self.ttl:
            del self._entries[device_id]
            return None
        return entry[1]

    def put(self, device_id: str, auth: DeviceAuth, read_at: int) -> bool:
        """Cache ``auth``, read by a query that began at generation ``read_at``; False
        (not cached) if the device was evicted since."""
        if (self.ttl <= 0 or not self.synced or read_at < self._cleared
                or read_at < self._evicted.get(device_id, 0)):
            return False
        self._entries.pop(device_id, None)
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[device_id] = (self._monotonic(), auth)
        return True

    def forget(self, device_id: str) -> None:
        self.generation += 1
        self._entries.pop(device_id, None)
        if len(self._evicted) >= self.max_entries:  # bounded: counts as evicting every device
            self._cleared = self.generation
            self._evicted.clear()
        self._evicted[device_id] = self.generation

    def clear(self) -> None:
        self.generation += 1
        self._cleared = self.generation
        self._evicted.clear()
        self._entries.clear()


class ChangeFeed:
    """Follows ``device_changes`` for one server process."""

    def __init__(self, db: Database, cache: DeviceCache, long_polls: LongPolls, clock: Clock) -> None:
        self.db = db
        self.cache = cache
        self.long_polls = long_polls
        self.clock = clock
        self.last_id = 0

    async def start(self) -> None:
        async with self.db.transaction(readonly=True) as conn:
            self.last_id = await latest_change(conn)
        self.cache.applied.clear()
        self.cache.synced = True

    async def poll(self) -> int:
        """Evict and wake what changed since the last poll; returns how many changes."""
        async with self.db.transaction(readonly=True) as conn:
            changes = await changes_since(conn, self.last_id, FEED_BATCH)
        applied = self.cache.applied
        for change_id, device_id in changes:
            if change_id not in applied:  # those were evicted and woken when they were made
                self.cache.forget(device_id)
                self.long_polls.notify(device_id)
            self.last_id = change_id
        # Done with what this feed has passed (some were noted only after it passed them).
        applied.difference_update([i for i in applied if i <= self.last_id])
        return len(changes)

    async def run(self, interval: float) -> None:
        polls = 0
        while True:
            await asyncio.sleep(interval)
            try:
                if not self.cache.synced:
                    self.cache.clear()
                    await self.start()
                    self.long_polls.notify_all()  # what changed meanwhile is unknown: all re-read
                    log.info("device cache resynchronised with the change feed")
                while await self.poll() == FEED_BATCH:
                    pass
                polls += 1
                if polls % max(1, int(60 / interval)) == 0:
                    async with self.db.transaction() as conn:
                        await prune_changes(conn, self.clock.now() - FEED_RETENTION)
            except StoreError as exc:
                # Cannot tell what changed: stop trusting the cache until the feed is back.
                self.cache.synced = False
                self.cache.clear()
                log.warning("device change feed unreadable, cache bypassed: %s", exc)
