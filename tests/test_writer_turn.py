"""SQLite writers take turns in the process (real SQLite database): a writer waits for the
one before it, never in SQLite's busy handler; readers do not wait; a transaction opened
inside another by the same task does not wait for itself."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from edgefleet.store import Database
from edgefleet.store.db import default_sqlite_url
from edgefleet.store.devices import insert_device
from edgefleet.store.schema import Device

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


async def database(tmp_path: Path) -> Database:
    db = Database(default_sqlite_url(tmp_path))
    await db.migrate()
    async with db.transaction() as conn:
        await insert_device(conn, id="dev-a", hardware_id="hw-a", site="s", labels={}, inventory={}, cert_serial="1",
                            cert_not_after=NOW, enrolled_at=NOW, status_seq=0, health="ok", update_state="idle",
                            desired_version=0, desired={})
    return db


def test_writers_take_turns_while_readers_go_straight_through(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = await database(tmp_path)
        order: list[str] = []
        first_writing = asyncio.Event()

        async def writer(name: str, hold: float) -> None:
            async with db.transaction() as conn:
                order.append(f"{name} begins")
                await conn.execute(Device.__table__.update().values(health=name))
                first_writing.set()
                await asyncio.sleep(hold)  # holds SQLite's write lock meanwhile
                order.append(f"{name} commits")

        async def reader() -> None:
            await first_writing.wait()
            async with db.transaction(readonly=True) as conn:
                health = (await conn.execute(select(Device.health))).scalar_one()
            order.append(f"reader saw {health}")

        await asyncio.gather(writer("one", 0.5), writer("two", 0), reader())
        assert order == ["one begins", "reader saw ok", "one commits", "two begins", "two commits"]
        async with db.transaction(readonly=True) as conn:
            assert (await conn.execute(select(Device.health))).scalar_one() == "two"
        await db.close()

    asyncio.run(scenario())


def test_a_transaction_opened_inside_another_by_the_same_task_does_not_wait_for_itself(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = await database(tmp_path)
        async with db.transaction() as outer:
            assert (await outer.execute(select(Device.health))).scalar_one() == "ok"
            async with db.transaction() as inner:
                await inner.execute(Device.__table__.update().values(health="inner"))
        async with db.transaction(readonly=True) as conn:
            assert (await conn.execute(select(Device.health))).scalar_one() == "inner"
        await db.close()

    asyncio.run(asyncio.wait_for(scenario(), 20))
