"""SQLite's single writer, taken in turns and shared by the writes that queue up for it.

SQLite lets one transaction write at a time. ``WriterTurn`` makes this process's writers
wait their turn in arrival order; ``GroupCommit`` runs the device requests' small writes
(``Database.write``) that arrive in one step of the event loop in one transaction. A
transaction's own cost (begin, commit, the WAL frames of the pages it changed) is paid
once for the group instead of once per write: measured on a 10,000-device table, a
status report's UPDATE cost 0.17 ms of CPU in a transaction of its own and 0.05-0.07 ms
in a group of 8-32.

A write's caller still learns its own outcome only after its transaction committed, and
one failing write does not take the others with it: when a group's transaction fails,
it is rolled back and every write of the group runs again in a transaction of its own.
So a write must be a function of the connection only (it may run twice), as the store's
functions are.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy.util import greenlet_spawn

T = TypeVar("T")

GROUP_LIMIT = 64  # writes per transaction: bounds how long one group holds the event loop


class WriterTurn:
    """On SQLite, one transaction that may write at a time in this process, in arrival order.

    SQLite has a single writer. Connections racing for it lose to SQLite's busy handler,
    which sleeps between tries (up to 100 ms at a time) whether or not the lock was freed
    meanwhile: under a rollout's burst of reports, an UPDATE of one row took 100 ms of
    waiting on average and the server's throughput fell to the sleeps'. Waiting here
    instead costs nothing and ends the moment the writer finishes. Re-entrant for the task
    that holds it (a transaction opened inside another's does not wait for itself); read-
    only transactions do not take it (WAL: readers never wait for the writer).
    """

    def __init__(self) -> None:
        self._lock: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._owner: asyncio.Task[Any] | None = None

    def held_here(self) -> bool:
        """Whether the running task holds the turn (it is inside its own transaction)."""
        return self._owner is not None and self._owner is asyncio.current_task()

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        if self.held_here():
            yield  # nested inside the holder's own transaction, which releases the turn
            return
        loop = asyncio.get_running_loop()
        if self._lock is None or self._loop is not loop:  # a lock serves the loop it was made in
            self._lock, self._loop = asyncio.Lock(), loop
        async with self._lock:
            self._owner = asyncio.current_task()
            try:
                yield
            finally:
                self._owner = None


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What one write came to: its value, or the error it raised."""

    value: T | None = None
    error: Exception | None = None


RunGroup = Callable[[Sequence[Callable[[Any], Any]]], list[Outcome[Any]]]


class GroupCommit:
    """The queue of writes waiting for the writer's turn, run ``GROUP_LIMIT`` at a time.

    ``run_group`` is synchronous (it runs in SQLAlchemy's greenlet bridge): it runs the
    writes it is given in one transaction, or each alone when that fails, and says how
    each one ended."""

    def __init__(self, turn: WriterTurn, run_group: RunGroup) -> None:
        self._turn, self._run_group = turn, run_group
        self._queue: collections.deque[tuple[Callable[[Any], Any], asyncio.Future[Any]]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining: asyncio.Task[None] | None = None

    async def submit(self, work: Callable[[Any], T]) -> T:
        """Run ``work(connection)`` in the next group; its value, or the error it raised."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a queue serves the loop it was made in
            self._queue, self._loop, self._draining = collections.deque(), loop, None
        future: asyncio.Future[T] = loop.create_future()
        self._queue.append((work, future))
        if self._draining is None or self._draining.done():
            # It starts in the next step of the loop, after the requests read in this one
            # have queued their writes too.
            self._draining = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        group: list[tuple[Callable[[Any], Any], asyncio.Future[Any]]] = []
        try:
            while self._queue:
                async with self._turn.held():
                    group = []
                    while self._queue and len(group) < GROUP_LIMIT:
                        work, future = self._queue.popleft()
                        if not future.done():  # a caller that gave up (cancelled) is not written
                            group.append((work, future))
                    if not group:
                        continue
                    outcomes = await greenlet_spawn(self._run_group, [work for work, _ in group])
                for (_, future), outcome in zip(group, outcomes, strict=True):
                    if future.done():
                        continue
                    if outcome.error is not None:
                        future.set_exception(outcome.error)
                    else:
                        future.set_result(outcome.value)
                group = []
        except Exception as exc:  # noqa: BLE001 - the group could not be run at all: each waiting write hears why
            for _, future in [*group, *self._queue]:
                if not future.done():
                    future.set_exception(exc)
            self._queue.clear()
        finally:  # cancelled (the loop is closing): nobody waits forever
            for _, future in [*group, *self._queue]:
                if not future.done():
                    future.cancel()
            self._queue.clear()
