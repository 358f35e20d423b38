"""The device side of the power-cut test, run in a child process that the test kills with
SIGKILL at random instants: the real update runner, the real emulated firmware and the
real bootloader environment, with no network (the verified image is already downloaded).

Messages to the parent (a pipe, not the disk): "firmware" while the emulated firmware runs
(a kill then is a power cut, whatever the test chose), "os" once the OS runs, "env" when a
bootloader environment write starts. Flash is emulated as slow (``slow_flash``) so that
kills can be aimed into those writes: U-Boot copies are programmed sector by sector, and a
GRUB env file is fully written to its temp file a moment before the rename commits it.
"""

from __future__ import annotations

import hashlib
import os
import time
from multiprocessing.connection import Connection
from pathlib import Path

from edgefleet.agent.abupdate import Action, Offer, UpdateRunner
from edgefleet.agent.hardware import VirtualDevice, ubootenv
from edgefleet.agent.hardware.firmware import power_on
from edgefleet.agent.state import StateDir
from edgefleet.agent.update_flow import UpdateJob
from edgefleet.clock import SystemClock
from edgefleet.util import atomic
from edgefleet.util.atomic import atomic_write_bytes


class _SlowOs:
    """``os`` for the U-Boot env module as NOR flash behaves: a copy is erased (all 0xff)
    before its sectors are programmed one by one, each taking a while."""

    def __init__(self, pipe: Connection, delay: float) -> None:
        self.pipe, self.delay = pipe, delay

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        if offset % 0x4000 == 0:
            self.pipe.send("env")
            os.pwrite(fd, b"\xff" * 0x4000, offset)  # erase
        time.sleep(self.delay)
        return os.pwrite(fd, data, offset)


def slow_flash(pipe: Connection, delay: float) -> None:
    ubootenv.os = _SlowOs(pipe, delay)  # type: ignore[assignment]
    real_replace = os.replace

    def replace(src: str, dst: object) -> None:
        if str(dst).endswith("grubenv"):
            pipe.send("env")
            time.sleep(delay * 8)
        real_replace(src, dst)  # type: ignore[arg-type]

    atomic.os = _Proxy(os, replace=replace)  # type: ignore[assignment]


class _Proxy:
    def __init__(self, module: object, **overrides: object) -> None:
        self._module, self._overrides = module, overrides

    def __getattr__(self, name: str) -> object:
        return self._overrides.get(name) or getattr(self._module, name)


def boot(device: VirtualDevice, pipe: Connection) -> None:
    pipe.send("firmware")
    power_on(device)
    while not device.reaches_agent():  # a kernel that panics: the watchdog resets the board
        power_on(device)
    pipe.send("os")


def live(device_dir: str, image: str, version: str, counter: int, power_on_first: bool, pipe: Connection,
         sector_delay: float) -> None:
    """Boot if the power came back, then run the update to its end, rebooting as asked."""
    slow_flash(pipe, sector_delay)
    device = VirtualDevice(Path(device_dir))
    if power_on_first:
        boot(device, pipe)
    else:
        pipe.send("os")
    state_dir = StateDir(device.agent_dir)
    while True:
        state = state_dir.load()

        def save(job: UpdateJob, failed: dict[str, int], state: object = state) -> None:
            state.update, state.failed_releases = job.dump(), dict(failed)  # type: ignore[attr-defined]
            state_dir.save(state)  # type: ignore[arg-type]

        runner = UpdateRunner(device, SystemClock(), save, job=UpdateJob.load(state.update) if state.update
                              else UpdateJob(), failed=dict(state.failed_releases), trial_seconds=600)
        runner.resume()
        if not runner.job.active and state.desired.get("episode") != version:
            data = Path(image).read_bytes()
            runner.offer(Offer(version, counter, hashlib.sha256(data).hexdigest(), len(data), force_reboot=True),
                         device.os_version(), retry_failed=True)
            state.desired = {"episode": version}
            state_dir.save(state)
        def download() -> Path:
            target = device.agent_dir / "downloads" / f"{version}.img"
            atomic_write_bytes(target, Path(image).read_bytes())
            return target

        while (action := runner.step(download)) is Action.CONTINUE:
            pass
        if action is Action.REBOOTING:
            boot(device, pipe)
            continue
        pipe.send("done")
        return
