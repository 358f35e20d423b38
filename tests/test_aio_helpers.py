"""Waiting for the first of several events: it returns as soon as one is set, or at the
timeout, and leaves no task behind waiting on the others."""

from __future__ import annotations

import asyncio

from edgefleet.util.aio import any_set


def _others() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


def test_any_set_returns_when_one_event_is_set_and_leaves_no_waiter_behind() -> None:
    async def run() -> None:
        first, second = asyncio.Event(), asyncio.Event()
        asyncio.get_running_loop().call_later(0.05, second.set)
        await asyncio.wait_for(any_set(first, second), 60)  # never the deadline: ``second`` ends it
        assert second.is_set()
        assert not first.is_set()
        await asyncio.sleep(0)  # the cancelled waiters finish
        assert _others() == set()

    asyncio.run(run())


def test_any_set_returns_at_once_for_an_event_already_set() -> None:
    async def run() -> None:
        done = asyncio.Event()
        done.set()
        await asyncio.wait_for(any_set(asyncio.Event(), done), 60)

    asyncio.run(run())


def test_any_set_returns_at_its_timeout_when_none_is_set() -> None:
    async def run() -> None:
        await asyncio.wait_for(any_set(asyncio.Event(), asyncio.Event(), timeout=0.05), 60)  # not the 60 s
        await asyncio.sleep(0)
        assert _others() == set()

    asyncio.run(run())
