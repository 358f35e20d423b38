"""Runs an emulated device through its whole life: power on (the emulated firmware picks
the slot and measures it), start the agent, and when the agent stops for a reboot, power
cycle and start again. An image that never reaches user space (``boots: false``) leaves
the agent down; the emulated hardware watchdog resets the machine after ``hang_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from edgefleet.agent.daemon import Agent
from edgefleet.agent.hardware.firmware import MeasuringTpm, power_on
from edgefleet.agent.hardware.vdevice import VirtualDevice

log = logging.getLogger("edgefleet.agent.emulated")


@dataclass
class EmulatedDevice:
    device: VirtualDevice
    make_agent: Callable[[], Agent]
    tpm: MeasuringTpm | None = None
    power_cycle: Callable[[], None] | None = None  # resets a swtpm; None for the software TPM
    hang_seconds: float = 2.0
    boots: int = 0
    agent: Agent | None = None

    def boot(self) -> None:
        """Power on: the firmware's slot choice and measured boot."""
        slot = power_on(self.device, self.tpm, self.power_cycle or (lambda: None))
        self.boots += 1
        log.info("%s booted slot %s (%s)", self.device.hardware_id(), slot, self.device.os_version())

    async def run(self, stop: asyncio.Event, *, boot_first: bool = True) -> None:
        """Until ``stop``: boot, run the agent, reboot when it asks to."""
        if boot_first:
            await asyncio.to_thread(self.boot)
        while not stop.is_set():
            if not self.device.reaches_agent():
                log.warning("%s: the booted image never reaches the agent; watchdog reset", self.device.hardware_id())
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.hang_seconds)
            else:
                self.agent = self.make_agent()
                await self.agent.run(stop)
                if not self.agent.rebooting:
                    return
            if not stop.is_set():
                await asyncio.to_thread(self.boot)
