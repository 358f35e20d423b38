"""Long-poll check-ins: a device waits until its desired state changes or the bound passes.

A waiter costs nothing while it waits: no timer task, no periodic re-read. Every change
reaches ``notify``: changes made in this process at once, changes made by another server
process (several behind one PostgreSQL) through the change feed within its sync interval.
If the feed was unreadable, every waiter is woken to re-read when it is back, and each
re-reads when its wait ends. The number of waiters is bounded; over the bound a check-in
answers "nothing new" at once, as if the wait expired.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from edgefleet.server.metrics import Metrics

REREADS = 8  # woken waiters reading the database at once


class LongPolls:
    def __init__(self, limit: int, metrics: Metrics) -> None:
        self.limit = limit
        self.metrics = metrics
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._count = 0
        self.closed = False
        # Waiters woken by a change re-read their device a few at a time: a wave of thousands
        # woken together would otherwise queue on the database pool and time out.
        self.rereads = asyncio.Semaphore(REREADS)

    def notify(self, device_id: str) -> None:
        for event in self._waiters.get(device_id, ()):
            event.set()

    def notify_all(self) -> None:
        """Every waiter re-reads its device's desired version."""
        for events in self._waiters.values():
            for event in events:
                event.set()

    def close(self) -> None:
        """Release every waiter (server shutdown must not wait for long polls)."""
        self.closed = True
        self.notify_all()

    async def wait(
        self, device_id: str, known: int, current: int, timeout: float, read_version: Callable[[], Awaitable[int]],
        woken: Callable[[], bool] = lambda: False,
    ) -> int:
        """Return the device's desired version once it differs from ``known``, ``woken()``
        says there is something else to tell the device (a remote session), or time is up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (current == known and not woken() and not self.closed and self._count < self.limit
               and loop.time() < deadline):
            event = asyncio.Event()
            timer = loop.call_at(deadline, event.set)
            self._waiters.setdefault(device_id, set()).add(event)
            self._count += 1
            self.metrics.long_polls.set(self._count)
            try:
                await event.wait()
            finally:
                timer.cancel()
                self._count -= 1
                self.metrics.long_polls.set(self._count)
                waiters = self._waiters[device_id]
                waiters.discard(event)
                if not waiters:
                    del self._waiters[device_id]
            current = await read_version()
        return current
