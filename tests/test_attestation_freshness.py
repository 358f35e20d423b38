"""Attestation freshness without a cliff: where the server requires a fresh passing
attestation (``attestation_max_age_seconds``), a device that attested every hour against a
one-hour limit met a 403 for one check-in each hour. The server now tells a device, with
each status report, how long its attestation stays fresh, and the agent re-attests ahead of
that by a jittered margin; a device that truly lapses (away longer than the limit) gets a
403 it understands, attests again at once and goes on. Simulated time: the fleet's clock
moves on by a fixed step at each of the device's check-ins, so the figures do not depend
on how fast the machine is."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from datetime import datetime
from typing import Any

from edgefleet.agent.enrollment import https_transport
from edgefleet.agent.hardware import vimage
from edgefleet.agent.hardware.firmware import reference_pcrs
from edgefleet.agent.hardware.softtpm import InsecureSoftwareTpm
from edgefleet.agent.settings import AgentSettings
from edgefleet.agent.state import StateDir
from edgefleet.errors import ServerRefused
from edgefleet.web.device_client import DeviceTransport
from tests.ab_world import RUNNING, SLOT_BYTES, AbWorld, until
from tests.conftest import FakeClock, start_fleet

MAX_AGE_S = 3600.0
STEP_S = 300.0  # fleet time per check-in: the agent's status interval (its default)
HOURS = 48


class DeviceClock:
    """The device's clock on the fleet's simulated time (monotonic time moves with it)."""

    def __init__(self, fleet: FakeClock) -> None:
        self.fleet = fleet

    def now(self) -> datetime:
        return self.fleet.now()

    def monotonic(self) -> float:
        return time.monotonic() + self.fleet.offset.total_seconds()


class Ticking:
    """The device's real transport; each check-in first moves the fleet's clock on."""

    def __init__(self, inner: DeviceTransport, clock: FakeClock) -> None:
        self.inner, self.clock = inner, clock
        self.step = STEP_S
        self.jump = 0.0  # once, before the next check-in: the device was away this long
        self.checkins = 0
        self.refused: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def fetch_desired(self, device_id: str, known: int, wait: float) -> Any:
        self.clock.advance(self.step + self.jump)
        self.jump = 0.0
        try:
            answer = await self.inner.fetch_desired(device_id, known, wait)
        except ServerRefused as exc:
            self.refused[exc.code] += 1
            raise
        self.checkins += 1
        return answer


def test_a_device_re_attests_ahead_of_expiry_for_48_hours_without_a_403_and_recovers_from_a_lapse(
        tmp_path: Any) -> None:
    plane = start_fleet(tmp_path / "plane", None, attestation_required=True, attestation_max_age_seconds=MAX_AGE_S)
    try:
        world = AbWorld(plane, tmp_path / "releases")
        factory = world.tmp / "factory.img"
        factory.write_bytes(vimage.build(RUNNING, 1, size=SLOT_BYTES))
        pcrs = reference_pcrs(factory)
        world.publish(RUNNING, 1, image=factory, measurements={0: pcrs[0].hex(), 4: pcrs[4].hex()})
        transports: list[Ticking] = []

        def transport(settings: AgentSettings, state_dir: StateDir, enrolled: bool) -> DeviceTransport:
            found = Ticking(https_transport(settings, state_dir, enrolled), plane.clock)
            transports.append(found)
            return found  # type: ignore[return-value]

        device = world.device("fresh", tpm=InsecureSoftwareTpm(tmp_path / "tpm"), slot_a=factory,
                              long_poll_seconds=0, checkin_interval_seconds=0.05,
                              agent_options={"clock": DeviceClock(plane.clock), "transport_factory": transport})
        checkins = HOURS * 3600 / STEP_S

        def ticking() -> Ticking:
            return transports[-1]

        async def steps() -> None:
            await until(lambda: bool(transports) and ticking().checkins >= checkins, timeout=600,
                        what=f"{HOURS} h of check-ins")
            assert ticking().refused == Counter(), ticking().refused  # not one 403 in 48 h
            # Away for two hours between a report and the next check-in (a link down, the
            # agent suspended): the attestation lapsed, and only the check-in can tell it.
            before = ticking().checkins
            ticking().jump = 2 * MAX_AGE_S
            await until(lambda: ticking().refused["attestation_required"] >= 1, what="the 403 of a lapsed device")
            await until(lambda: ticking().checkins >= before + 5, what="check-ins again after attesting anew")

        asyncio.run(_run(device, steps))
        assert transports[-1].refused == Counter({"attestation_required": 1})  # one, then recovered
    finally:
        plane.close()


async def _run(device: Any, steps: Any) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(device.run(stop))
    try:
        await asyncio.wait_for(steps(), 900)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
