"""Hardware behind small interfaces (``interfaces``), each with a real implementation for
a Linux host and an emulated one in a vdevice directory (``vdevice``)."""

from edgefleet.agent.hardware.interfaces import BootEnv, Platform, Reboot, Slots, Tpm
from edgefleet.agent.hardware.linux import LinuxHost
from edgefleet.agent.hardware.vdevice import VirtualDevice

__all__ = ["BootEnv", "LinuxHost", "Platform", "Reboot", "Slots", "Tpm", "VirtualDevice"]
