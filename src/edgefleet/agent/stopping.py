"""Waiting on the network until the agent is told to stop, and the check-in's long poll."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from edgefleet.protocol.v1 import CheckInAnswer
from edgefleet.web.device_client import DeviceTransport

T = TypeVar("T")


class Stopped(Exception):
    """The stop event fired while the agent was waiting on the network."""


async def until_stopped(call: Awaitable[T], stop: asyncio.Event) -> T:
    """``call``'s result, unless ``stop`` is set first: then ``call`` is cancelled and
    Stopped is raised."""
    task = asyncio.ensure_future(call)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise Stopped


async def poll_desired(transport: DeviceTransport, device_id: str, known: int, wait_seconds: float,
                       failed: asyncio.Event | None, stop: asyncio.Event) -> tuple[CheckInAnswer | None, bool]:
    """Check in (a long poll): the new desired state if there is one, and whether a
    workload failed meanwhile (``failed`` ends the poll early, so it is reported at once)."""
    poll = asyncio.ensure_future(transport.fetch_desired(device_id, known, wait_seconds))
    failed = failed if failed is not None else asyncio.Event()
    watcher = asyncio.ensure_future(failed.wait())
    try:
        await until_stopped(asyncio.wait({poll, watcher}, return_when=asyncio.FIRST_COMPLETED), stop)
    finally:
        watcher.cancel()
        if not poll.done():
            poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poll
    if failed.is_set():
        failed.clear()
        return (poll.result() if not poll.cancelled() else None), True
    return poll.result(), False
