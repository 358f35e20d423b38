"""The check-in cache and the change feed that keeps it coherent (real SQLite database)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.clock import SystemClock
from edgefleet.server.devicecache import ChangeFeed, DeviceCache
from edgefleet.server.longpoll import LongPolls
from edgefleet.server.metrics import Metrics
from edgefleet.store import Database
from edgefleet.store.db import default_sqlite_url
from edgefleet.store.devices import DeviceAuth, changed, set_desired_many

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)


def synced_cache() -> DeviceCache:
    cache = DeviceCache(ttl=600, max_entries=100, monotonic=lambda: 0.0)
    cache.synced = True
    return cache


def test_a_read_that_overlaps_an_eviction_is_not_cached() -> None:
    cache = synced_cache()
    read_at = cache.generation
    cache.forget("dev-a")  # the device changed while the read was in flight: it may be stale
    cache.put("dev-a", DeviceAuth("serial", 1), read_at)
    assert cache.get("dev-a") is None
    cache.put("dev-a", DeviceAuth("serial", 2), cache.generation)
    assert cache.get("dev-a") == DeviceAuth("serial", 2)


def test_a_read_is_cached_even_if_other_devices_were_evicted_meanwhile() -> None:
    cache = synced_cache()
    read_at = cache.generation
    cache.forget("dev-b")  # a rollout evicts other devices all the time
    assert cache.put("dev-a", DeviceAuth("serial", 1), read_at)
    assert cache.get("dev-a") == DeviceAuth("serial", 1)
    read_at = cache.generation
    cache.clear()  # the feed could not be read: every device may have changed
    assert not cache.put("dev-a", DeviceAuth("serial", 1), read_at)
    assert cache.get("dev-a") is None


def test_the_feed_leaves_alone_the_changes_this_process_already_applied(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = Database(default_sqlite_url(tmp_path))
        await db.migrate()
        cache, long_polls = synced_cache(), LongPolls(100, Metrics())
        feed = ChangeFeed(db, cache, long_polls, SystemClock())
        await feed.start()
        for device_id in ("dev-a", "dev-b"):
            cache.put(device_id, DeviceAuth("serial", 1), cache.generation)

        async def version_2() -> int:
            return 2

        waiters = {d: asyncio.create_task(long_polls.wait(d, 1, 1, 30, version_2)) for d in ("dev-a", "dev-b")}
        await asyncio.sleep(0)
        async with db.transaction() as conn:
            cache.applied.update(await set_desired_many(conn, {"dev-a": {}}, NOW))  # made (and applied) here
            await conn.run_sync(changed, "dev-b", NOW)  # made by another process
        assert await feed.poll() == 2
        assert cache.get("dev-a") is not None
        assert cache.get("dev-b") is None
        assert await asyncio.wait_for(waiters["dev-b"], 5) == 2
        assert not waiters["dev-a"].done()
        assert cache.applied == set()
        long_polls.close()
        assert await asyncio.wait_for(waiters["dev-a"], 5) == 2
        await db.close()

    asyncio.run(scenario())
