"""The device side of a remote shell: whatever way its session ends, every process an
operator started is killed and reaped."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from edgefleet.agent import pty_session
from edgefleet.agent.pty_session import PtyProcess, session_members

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/"}


def test_a_session_cancelled_during_its_hang_up_grace_still_kills_and_reaps_everything(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pty_session, "KILL_GRACE_SECONDS", 600.0)  # still waiting when cancelled

    async def run() -> PtyProcess:
        # The leader and a child both ignore the hang-up, so end() is waiting out its grace
        # period when the agent stops and cancels it.
        process = PtyProcess(["/bin/sh", "-c", "trap '' HUP; sleep 300 & trap '' HUP; echo ready; wait"],
                             cols=80, rows=24, env=ENV)
        printed = bytearray()

        async def output(data: bytes) -> None:
            printed.extend(data)

        pump = asyncio.ensure_future(process.pump_output(output))
        deadline = time.monotonic() + 30
        while b"ready" not in printed:
            assert time.monotonic() < deadline, "the shell never started"
            await asyncio.sleep(0.05)
        assert len(session_members(process.pid)) >= 2
        ending = asyncio.ensure_future(process.end())
        await asyncio.sleep(0.3)  # SIGHUP sent, nobody left: waiting out the grace period
        assert not ending.done()
        ending.cancel()
        await asyncio.gather(ending, return_exceptions=True)
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
        return process

    process = asyncio.run(run())
    assert process.process.returncode is not None  # reaped: no zombie, no ResourceWarning
    deadline = time.monotonic() + 30
    while session_members(process.pid):  # the orphaned child is killed; init reaps it
        assert time.monotonic() < deadline, f"left running: {session_members(process.pid)}"
        time.sleep(0.05)
