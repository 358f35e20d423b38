"""The schema: migrations and models agree, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from edgefleet.store import Database
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
