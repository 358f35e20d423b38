"""Small asyncio helpers shared by the agent, the hub and their loops."""

from __future__ import annotations

import asyncio
import contextlib


async def pause(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep up to ``seconds``, less if ``stop`` is set meanwhile; True if it was."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def relay(source: asyncio.Event, target: asyncio.Event) -> None:
    """Set ``target`` once ``source`` is set."""
    await source.wait()
    target.set()


async def any_set(*events: asyncio.Event, timeout: float | None = None) -> None:
    """Return once any of ``events`` is set (at once if one already is), or after
    ``timeout`` seconds; nothing is left waiting on the others."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
