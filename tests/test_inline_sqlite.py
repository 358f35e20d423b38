"""SQLite's calls run inline on the event loop's thread (real SQLite database, the engine
the server uses): no worker thread per connection, results stay readable after their
transaction, constraint violations and rollbacks behave as before, and the connection
pool makes a task wait (never blocks the loop) when every connection is out."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import event, select, text
from sqlalchemy.engine import Connection

from edgefleet.errors import StoreError
from edgefleet.store import Database
from edgefleet.store.db import default_sqlite_url
from edgefleet.store.devices import insert_device
from edgefleet.store.inline_sqlite import inline_url
from edgefleet.store.schema import Device

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


async def database(tmp_path: Path, devices: int = 3, url: str | None = None) -> Database:
    db = Database(url or default_sqlite_url(tmp_path))
    await db.migrate()
    async with db.transaction() as conn:
        for i in range(devices):
            await insert_device(conn, id=f"dev-{i}", hardware_id=f"hw-{i}", site="s", labels={}, inventory={},
                                cert_serial=str(i), cert_not_after=NOW, enrolled_at=NOW, status_seq=0, health="ok",
                                update_state="idle", desired_version=0, desired={"n": i})
    return db


def test_statements_run_on_the_event_loops_own_thread(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = await database(tmp_path)
        before = threading.active_count()
        event.listen(db.engine.sync_engine, "connect",
                     lambda dbapi, _: dbapi.create_function("thread_id", 0, threading.get_ident))
        await db.engine.dispose()  # new connections, with the function
        async with db.transaction() as conn:
            await conn.execute(Device.__table__.update().values(health="degraded"))
            ran_on = (await conn.execute(text("SELECT thread_id()"))).scalar_one()
        async with db.transaction(readonly=True) as conn:
            assert set((await conn.execute(select(Device.health))).scalars()) == {"degraded"}
        assert ran_on == threading.get_ident()  # SQLite ran the statement here, not in a worker
        assert threading.active_count() <= before  # aiosqlite holds a thread per connection
        await db.close()

    asyncio.run(scenario())


def test_a_result_stays_readable_after_its_transaction_ended(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = await database(tmp_path, devices=5)
        async with db.transaction(readonly=True) as conn:
            result = await conn.execute(select(Device.id, Device.desired).order_by(Device.id))
        async with db.transaction() as conn:  # the connection goes back to the pool and is reused
            await conn.execute(Device.__table__.delete())
        assert [(row.id, row.desired) for row in result] == [(f"dev-{i}", {"n": i}) for i in range(5)]
        await db.close()

    asyncio.run(scenario())


def test_a_failed_statement_rolls_the_whole_transaction_back_with_a_typed_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = await database(tmp_path)

        async def change_then_collide() -> None:
            async with db.transaction() as conn:
                await conn.execute(Device.__table__.update().where(Device.id == "dev-0").values(health="changed"))
                await insert_device(conn, id="dev-1", hardware_id="hw-x", site="s", labels={}, inventory={},
                                    cert_serial="9", cert_not_after=NOW, enrolled_at=NOW, status_seq=0, health="ok",
                                    update_state="idle", desired_version=0, desired={})

        with pytest.raises(StoreError) as raised:
            await change_then_collide()
        assert raised.value.code == "integrity_error"
        async with db.transaction(readonly=True) as conn:
            assert (await conn.execute(select(Device.health).where(Device.id == "dev-0"))).scalar_one() == "ok"
        await db.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_function_run_as_one_transaction_commits_whole_or_rolls_back_with_a_typed_error(
        tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("own_postgres_url") if backend == "postgresql" else None

    def health(conn: Connection, device_id: str) -> str:
        return str(conn.execute(select(Device.health).where(Device.id == device_id)).scalar_one())

    def change(conn: Connection, value: str, *, collide: bool) -> None:
        conn.execute(Device.__table__.update().where(Device.id == "dev-0").values(health=value))
        if collide:
            conn.execute(Device.__table__.update().where(Device.id == "dev-1").values(hardware_id="hw-2"))

    async def scenario() -> None:
        db = await database(tmp_path, url=url)
        with pytest.raises(StoreError) as raised:
            await db.write(change, "changed", collide=True)
        assert raised.value.code == "integrity_error"
        assert await db.read(health, "dev-0") == "ok"
        await db.write(change, "changed", collide=False)
        assert await db.read(health, "dev-0") == "changed"
        await db.close()

    asyncio.run(scenario())


def test_writes_arriving_together_commit_as_one_transaction_and_a_failing_one_fails_alone(tmp_path: Path) -> None:
    def set_health(conn: Connection, device_id: str, value: str) -> str:
        conn.execute(Device.__table__.update().where(Device.id == device_id).values(health=value))
        return value

    def collide(conn: Connection) -> None:
        conn.execute(Device.__table__.update().where(Device.id == "dev-0").values(health="collided"))
        conn.execute(Device.__table__.update().where(Device.id == "dev-1").values(hardware_id="hw-2"))

    def healths(conn: Connection) -> dict[str, str]:
        return {row.id: row.health for row in conn.execute(select(Device.id, Device.health))}

    async def scenario() -> None:
        db = await database(tmp_path, devices=10)
        commits: list[int] = []
        event.listen(db.engine.sync_engine, "commit", lambda _conn: commits.append(1))
        values = await asyncio.gather(*(db.write(set_health, f"dev-{i}", f"h{i}") for i in range(10)))
        assert values == [f"h{i}" for i in range(10)]
        assert len(commits) == 1  # ten writes, one transaction
        assert await db.read(healths) == {f"dev-{i}": f"h{i}" for i in range(10)}

        commits.clear()
        outcomes = await asyncio.gather(db.write(set_health, "dev-5", "again"), db.write(collide),
                                        db.write(set_health, "dev-6", "again"), return_exceptions=True)
        assert outcomes[0] == outcomes[2] == "again"
        assert isinstance(outcomes[1], StoreError)
        assert outcomes[1].code == "integrity_error"
        assert len(commits) == 2  # the group rolled back; the two good writes committed alone
        stored = await db.read(healths)
        assert stored["dev-0"] == "h0"  # the collision changed nothing
        assert stored["dev-5"] == stored["dev-6"] == "again"

        commits.clear()
        given_up = asyncio.create_task(db.write(set_health, "dev-7", "abandoned"))
        kept = asyncio.create_task(db.write(set_health, "dev-8", "kept"))
        await asyncio.sleep(0)  # both queued
        given_up.cancel()
        assert await kept == "kept"
        assert (await db.read(healths))["dev-7"] == "h7"  # a write whose caller gave up is not written
        await db.close()

    asyncio.run(scenario())


def test_a_task_waits_for_a_pooled_connection_while_the_loop_runs_on(tmp_path: Path) -> None:
    async def scenario() -> None:
        db = await database(tmp_path)
        held = [db.transaction(readonly=True) for _ in range(16)]  # the whole pool
        for transaction in held:
            await transaction.__aenter__()
        waiting = asyncio.create_task(db.ping())
        ticks = 0
        for _ in range(5):
            await asyncio.sleep(0.01)
            ticks += 1  # the loop is not blocked by the waiting task
        assert not waiting.done()
        await held[0].__aexit__(None, None, None)
        await asyncio.wait_for(waiting, 5)
        for transaction in held[1:]:
            await transaction.__aexit__(None, None, None)
        assert ticks == 5
        await db.close()

    asyncio.run(scenario())


def test_every_kind_of_sqlite_url_gets_the_inline_driver() -> None:
    for url in ("sqlite:////tmp/x.db", "sqlite+aiosqlite:////tmp/x.db", "sqlite+pysqlite:////tmp/x.db"):
        assert inline_url(url) == "sqlite+edgefleet_inline:////tmp/x.db"
