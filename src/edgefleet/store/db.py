"""The engine, sessions, migrations and the translation of SQLAlchemy errors."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event, text
from sqlalchemy.dialects import registry
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.util import greenlet_spawn

from edgefleet.errors import ConfigError, StoreError
from edgefleet.store.group_commit import GroupCommit, Outcome, WriterTurn
from edgefleet.store.inline_sqlite import DRIVER, inline_url

registry.register(DRIVER.replace("+", "."), "edgefleet.store.inline_sqlite", "InlineSQLiteDialect")

log = logging.getLogger("edgefleet.store")

P = ParamSpec("P")
T = TypeVar("T")

MIGRATIONS = str(Path(__file__).with_name("migrations"))


def default_sqlite_url(data_dir: Path) -> str:
    return f"sqlite:///{data_dir.resolve() / 'edgefleet.db'}"


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # WAL: readers never block the writer; NORMAL is durable across process crashes and
    # loses at most the last transactions on power loss, which check-in presence tolerates.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    # A writer waits its turn up to 30 s (bursts of enrollments, a rollout's batch) before a 503.
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", MIGRATIONS)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


@contextlib.contextmanager
def _typed_errors() -> Iterator[None]:
    try:
        yield
    except IntegrityError as exc:
        raise StoreError(f"constraint violated: {exc.orig}", code="integrity_error") from exc
    except SQLAlchemyError as exc:
        raise StoreError(f"database error: {exc.__class__.__name__}: {exc}") from exc
    except OSError as exc:  # connection refused, socket errors from asyncpg
        raise StoreError(f"database unreachable: {exc}", code="store_unreachable") from exc


class Database:
    """One engine per process. ``transaction()`` yields a transaction; ``read`` and ``write``
    run a synchronous function in one; errors become StoreError."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = url
        try:
            if url.startswith("sqlite"):
                # A fixed pool: overflow connections would be opened and closed under load,
                # each with its own thread and pragmas. A request that cannot get one within
                # 10 s is refused (503) and the device backs off, rather than piling up.
                # SQLite's calls run inline on the event loop (``inline_sqlite``).
                # A connection comes back from ``transaction()``, ``read`` and ``write``
                # committed or rolled back: the pool need not roll it back again.
                self.engine: AsyncEngine = create_async_engine(inline_url(url), pool_size=16, max_overflow=0,
                                                               pool_timeout=10, pool_reset_on_return=None)
                event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
                self._writer: WriterTurn | None = WriterTurn()
                self._group: GroupCommit | None = GroupCommit(self._writer, self._run_group)
            else:
                self.engine = create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
                self._writer = None  # PostgreSQL writes concurrently
                self._group = None
        except (ArgumentError, ImportError) as exc:
            raise ConfigError(f"unusable database URL {self.safe_url}: {exc}") from exc

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    @property
    def safe_url(self) -> str:
        """The URL without its password, for logs."""
        return self.url.split("@")[-1] if "@" in self.url else self.url

    @asynccontextmanager
    async def transaction(self, *, readonly: bool = False) -> AsyncIterator[AsyncConnection]:
        """A connection inside one transaction: committed on success, rolled back on error.
        ``readonly`` (the hot read paths): it writes nothing, so on SQLite it need not wait
        for the writer's turn."""
        with _typed_errors():
            async with contextlib.AsyncExitStack() as stack:
                if not readonly:
                    await stack.enter_async_context(self._writer_turn())
                conn = await stack.enter_async_context(self.engine.begin())
                yield conn

    async def read(self, work: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``work(connection, *args, **kwargs)``, a function that only reads, in a
        transaction of its own run as one step (see ``write``)."""
        with _typed_errors():
            return await greenlet_spawn(self._in_transaction, lambda conn: work(conn, *args, **kwargs))

    async def write(self, work: Callable[Concatenate[Connection, P], T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """``work(connection, *args, **kwargs)`` in a transaction, committed when it returns,
        rolled back when it raises; it is a function of the connection only.

        The device requests' statements take this path. ``transaction()`` crosses
        SQLAlchemy's greenlet bridge once per step (checkout, begin, each statement,
        commit, checkin): measured here, a one-statement write cost 111 us of CPU that way
        and 43 us with the whole transaction run as one synchronous function, which is
        what ``AsyncConnection.run_sync`` does for a connection already open. On SQLite the
        writes that arrive together share one transaction (``group_commit``)."""
        def bound(conn: Connection) -> T:
            return work(conn, *args, **kwargs)

        with _typed_errors():
            if self._group is None or (self._writer is not None and self._writer.held_here()):
                async with self._writer_turn():
                    return await greenlet_spawn(self._in_transaction, bound)
            return await self._group.submit(bound)

    def _in_transaction(self, work: Callable[[Connection], T]) -> T:
        with self.engine.sync_engine.begin() as conn:
            return work(conn)

    def _run_group(self, works: Sequence[Callable[[Connection], Any]]) -> list[Outcome[Any]]:
        """Writes in one transaction; when that fails, each in its own (``group_commit``)."""
        if len(works) > 1:
            with contextlib.suppress(Exception):  # rolled back: each write's own outcome is found below
                return [Outcome(value) for value in self._in_transaction(lambda conn: [w(conn) for w in works])]
        outcomes: list[Outcome[Any]] = []
        for work in works:
            try:
                with _typed_errors():
                    outcomes.append(Outcome(self._in_transaction(work)))
            except Exception as exc:  # noqa: BLE001 - it is that write's outcome, raised to its caller
                outcomes.append(Outcome(error=exc))
        return outcomes

    def _writer_turn(self) -> contextlib.AbstractAsyncContextManager[None]:
        return contextlib.nullcontext() if self._writer is None else self._writer.held()

    async def migrate(self) -> str:
        """Bring the schema to the newest revision; returns it. Safe with many processes."""
        cfg = alembic_config(self.url)

        def upgrade(sync_conn: Connection) -> None:
            if sync_conn.dialect.name == "postgresql":
                # Several server processes may start together against one PostgreSQL.
                sync_conn.execute(text("SELECT pg_advisory_xact_lock(7235914)"))
            cfg.attributes["connection"] = sync_conn
            command.upgrade(cfg, "head")

        async with self.transaction() as conn:
            await conn.run_sync(upgrade)
        head = ScriptDirectory.from_config(cfg).get_current_head()
        log.info("database %s at schema revision %s", self.safe_url, head)
        return head or ""

    async def schema_is_current(self) -> bool:
        head = ScriptDirectory.from_config(alembic_config(self.url)).get_current_head()

        def current(sync_conn: Connection) -> str | None:
            return MigrationContext.configure(sync_conn).get_current_revision()

        async with self.transaction() as conn:
            return await conn.run_sync(current) == head

    async def ping(self) -> None:
        async with self.transaction() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()


class SessionLock:
    """A PostgreSQL advisory lock held by a dedicated session: the database releases it
    when that session ends, so a process that dies or loses its connection gives it up."""

    def __init__(self, db: Database, key: int) -> None:
        self.db, self.key = db, key
        self._conn: AsyncConnection | None = None

    async def hold(self) -> bool:
        """Whether this process holds the lock now: the session is checked if it holds it,
        else the lock is taken if it is free.

        Raises StoreError (the database failed or is unreachable); the session is dropped."""
        try:
            with _typed_errors():
                if self._conn is not None:
                    await self._conn.execute(text("SELECT 1"))
                    return True
                conn = await self.db.engine.connect()
                try:
                    got = (await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key})).scalar()
                    await conn.commit()
                except BaseException:
                    await conn.close()
                    raise
                if not got:
                    await conn.close()
                    return False
                self._conn = conn
                return True
        except StoreError:
            await self.release()
            raise

    async def release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(SQLAlchemyError, OSError):  # a dead session released it already
                await conn.close()
