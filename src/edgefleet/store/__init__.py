"""The SQL store: SQLite (WAL) by default, PostgreSQL with the same code and migrations.

``schema`` declares the tables, ``db`` owns the engine and translates SQLAlchemy errors
into ``StoreError``, ``migrations/`` holds the Alembic history (applied on server start),
and ``devices`` / ``tokens`` are the queries the server needs.
"""

from edgefleet.store.db import Database, default_sqlite_url

__all__ = ["Database", "default_sqlite_url"]
