"""SQLite for the asyncio engine, called inline on the event loop's thread.

SQLAlchemy's asyncio engine runs a synchronous dialect inside a greenlet and expects its
driver to hand each call to an awaitable. aiosqlite does that by shipping every call
(execute, fetch, commit, the pool's rollback) to a worker thread and back: measured here,
a one-row read in its own transaction cost 0.74 ms of CPU that way against 0.08 ms through
the same SQLAlchemy statement on ``sqlite3`` directly, and a device update makes a dozen
such transactions. SQLite is an in-process library whose calls on a WAL database in the
page cache take microseconds, so this dialect is SQLAlchemy's own ``pysqlite`` dialect,
declared asyncio-capable, whose cursor awaits a coroutine that simply makes the call: the
greenlet hands it to the event loop's task, which runs it at once, without a thread.
(Making the call without that hand-over is refused: SQLAlchemy's asyncio connection
raises ``AwaitRequired`` for a statement that awaited nothing.)

What that costs: a statement holds the event loop for as long as SQLite takes. Writers in
this process already take turns (``WriterTurn``), so a write never waits for SQLite's lock
here; it can only wait for another *process* writing the same file (an operator's CLI),
for at most ``busy_timeout``. The pool is asyncio's (a request waiting for a connection
awaits, it never blocks the loop).
"""

from __future__ import annotations

import collections
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import pool
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import URL
from sqlalchemy.engine.url import make_url
from sqlalchemy.util import await_

DRIVER = "sqlite+edgefleet_inline"


async def _now(call: Callable[..., Any], *args: Any) -> Any:
    return call(*args)


class _Cursor:
    """A ``sqlite3`` cursor whose statements run through the engine's greenlet bridge. Rows
    are read at once, as an asyncio driver's are: a result stays readable after its
    transaction ended and its connection went back to the pool."""

    __slots__ = ("_cursor", "_rows", "arraysize", "description", "lastrowid", "rowcount")

    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor
        self._rows: collections.deque[Any] = collections.deque()
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self.arraysize = 1

    def _run(self, call: Callable[..., Any], *args: Any) -> None:
        await_(_now(call, *args))
        cursor = self._cursor
        self.description, self.rowcount, self.lastrowid = cursor.description, cursor.rowcount, cursor.lastrowid
        self._rows = collections.deque(cursor.fetchall()) if cursor.description else collections.deque()

    def execute(self, operation: str, parameters: Sequence[Any] = ()) -> None:
        self._run(self._cursor.execute, operation, parameters)

    def executemany(self, operation: str, seq_of_parameters: Sequence[Sequence[Any]]) -> None:
        self._run(self._cursor.executemany, operation, seq_of_parameters)

    def fetchone(self) -> Any:
        return self._rows.popleft() if self._rows else None

    def fetchmany(self, size: int | None = None) -> list[Any]:
        count = self.arraysize if size is None else size
        return [self._rows.popleft() for _ in range(min(count, len(self._rows)))]

    def fetchall(self) -> list[Any]:
        rows = list(self._rows)
        self._rows.clear()
        return rows

    def close(self) -> None:
        self._cursor.close()
        self._rows.clear()

    async def _async_soft_close(self) -> None:
        """SQLAlchemy's asyncio results call this; the rows are already read."""


class _Connection:
    """A ``sqlite3`` connection handing out ``_Cursor`` s; everything else is its own."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        object.__setattr__(self, "_connection", connection)

    def cursor(self) -> _Cursor:
        return _Cursor(self._connection.cursor())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._connection, name, value)  # isolation_level, set by the dialect


class InlineSQLiteDialect(SQLiteDialect_pysqlite):
    """``pysqlite``, usable by ``create_async_engine``: its calls run where they are made."""

    is_async = True
    supports_statement_cache = True

    @classmethod
    def get_pool_class(cls, url: URL) -> type[pool.Pool]:
        return pool.AsyncAdaptedQueuePool

    def connect(self, *cargs: Any, **cparams: Any) -> Any:
        return _Connection(super().connect(*cargs, **cparams))  # type: ignore[arg-type]

    def create_connect_args(self, url: URL) -> Any:
        args, kwargs = super().create_connect_args(url)
        # The pool hands a connection to whichever thread's event loop runs the engine
        # (tests run servers on background threads); each is used by one task at a time.
        kwargs["check_same_thread"] = False
        return args, kwargs


def inline_url(url: str) -> str:
    """``url`` (any SQLite URL: ``sqlite://``, ``sqlite+aiosqlite://``, ``sqlite+pysqlite://``)
    with this dialect as its driver."""
    return make_url(url).set(drivername=DRIVER).render_as_string(hide_password=False)
