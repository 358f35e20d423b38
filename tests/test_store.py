"""The schema: migrations and models agree, on SQLite and PostgreSQL; writes that race
resolve without an error."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from edgefleet.releases.director import DirectorFiles
from edgefleet.store import Database
from edgefleet.store.director import director_state, forget_device, save_assignment
from edgefleet.store.schema import Base
from tests.conftest import Fleet


def test_migrations_produce_exactly_the_declared_schema(fleet: Fleet) -> None:
    async def diff() -> list[object]:
        db = Database(fleet.settings.effective_database_url)
        try:
            async with db.transaction() as conn:
                return await conn.run_sync(
                    lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
                )
        finally:
            await db.close()

    assert asyncio.run(diff()) == []


def test_migrating_an_up_to_date_database_changes_nothing(fleet: Fleet) -> None:
    async def again() -> bool:
        db = Database(fleet.settings.effective_database_url)
        try:
            await db.migrate()
            return await db.schema_is_current()
        finally:
            await db.close()

    before = fleet.rows()
    assert asyncio.run(again())
    assert fleet.rows() == before


def test_two_first_director_writes_for_one_device_store_one_and_tell_the_other(fleet: Fleet) -> None:
    device = fleet.enroll()

    def files(tag: bytes) -> DirectorFiles:
        return DirectorFiles(version=1, targets=b"targets " + tag, snapshot=b"snapshot", timestamp_version=1,
                             timestamp=b"timestamp", timestamp_expires=datetime.now(UTC) + timedelta(days=1))

    async def race() -> tuple[bool, bool, bytes]:
        db = Database(fleet.settings.effective_database_url)
        try:
            async with db.transaction() as conn:
                first = await save_assignment(conn, device.id, None, files(b"a"), datetime.now(UTC),
                                              previous_version=None)
            async with db.transaction() as conn:  # the loser of the race: no error, told it did not store
                second = await save_assignment(conn, device.id, None, files(b"b"), datetime.now(UTC),
                                               previous_version=None)
                state = await conn.run_sync(director_state, device.id)
            assert state is not None
            return first, second, state.targets
        finally:
            async with db.transaction() as conn:  # the fleet is shared: leave no unsigned metadata behind
                await forget_device(conn, device.id)
            await db.close()

    assert asyncio.run(race()) == (True, False, b"targets a")
