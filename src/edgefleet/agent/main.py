"""Wiring the agent to its hardware and running it until a signal: shared by ``edgefleet
agent`` and ``python -m edgefleet.agent`` (the device's entry point, which loads none of
the command line's other commands)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from edgefleet.agent.daemon import Agent
from edgefleet.agent.emulated import EmulatedDevice
from edgefleet.agent.hardware import LinuxABSystem, LinuxHost, VirtualDevice
from edgefleet.agent.hardware.grubenv import GrubEnvFile
from edgefleet.agent.hardware.interfaces import ABSystem, BootEnv, Platform
from edgefleet.agent.hardware.sdboot import SdBootEntries
from edgefleet.agent.hardware.ubootenv import from_fw_env_config
from edgefleet.agent.settings import AgentSettings
from edgefleet.errors import ConfigError

DEFAULT_HEALTH_DIR = Path("/etc/edgefleet/health.d")  # the image's checks, and required.d/ and wanted.d/


async def run_until_signalled(agent: Agent, emulated: EmulatedDevice | None = None) -> None:
    """SIGTERM/SIGINT stop the agent cleanly; a second one exits at once. An emulated
    device reboots in-process when its agent asks to."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            os._exit(130)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await agent.run(stop)
    if emulated is not None and agent.rebooting and not stop.is_set():
        await asyncio.to_thread(emulated.boot)
        await emulated.run(stop, boot_first=False)


def linux_ab_system(settings: AgentSettings) -> LinuxABSystem | None:
    """The host's A/B root partitions, when the settings name them."""
    if settings.slot_a is None and settings.slot_b is None:
        return None
    if settings.slot_a is None or settings.slot_b is None:
        raise ConfigError("set both slot_a and slot_b, or neither")
    bootenv: BootEnv
    if settings.bootloader == "systemd-boot":
        bootenv = SdBootEntries(settings.esp)
    elif settings.bootloader == "grub":
        bootenv = GrubEnvFile(settings.grubenv)
    else:
        bootenv = from_fw_env_config(settings.fw_env_config)
    return LinuxABSystem({"a": settings.slot_a, "b": settings.slot_b}, bootenv)


def build_agent(settings: AgentSettings) -> Agent:
    platform: Platform
    system: ABSystem | None
    if settings.device_dir is not None:
        vdevice = VirtualDevice(settings.device_dir)
        platform, site, labels = vdevice, settings.site or vdevice.site, {**vdevice.labels, **settings.labels}
        system = vdevice
    else:
        if settings.site is None:
            raise ConfigError("set the device's site (--site, EDGEFLEET_AGENT_SITE or site = in the config)")
        platform, site, labels = LinuxHost(), settings.site, settings.labels
        if settings.health_dir is None:
            settings = settings.model_copy(update={"health_dir": DEFAULT_HEALTH_DIR})
        system = linux_ab_system(settings)
    tpm = None
    if settings.tpm is not None:
        try:
            from edgefleet.agent.hardware.tpm import Tpm2
        except ImportError as exc:
            raise ConfigError(f"attestation needs tpm2-pytss (pip install 'edgefleet[tpm]'): {exc}") from exc
        tpm = Tpm2(settings.tpm)
    return Agent(settings, platform, site=site, labels=labels, tpm=tpm, system=system, capture_logs=True)


def run(settings: AgentSettings) -> None:
    """Build the agent for ``settings`` and run it until SIGTERM/SIGINT."""
    built = build_agent(settings)
    emulated = None
    if isinstance(built.platform, VirtualDevice):
        emulated = EmulatedDevice(built.platform, lambda: build_agent(settings))
    asyncio.run(run_until_signalled(built, emulated))
