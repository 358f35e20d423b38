"""Hardware behind small interfaces (``interfaces``), each with a real implementation for
a Linux host and an emulated one in a vdevice directory (``vdevice``)."""

from edgefleet.agent.hardware.interfaces import ABSystem, BootEnv, Platform, Tpm
from edgefleet.agent.hardware.linux import LinuxABSystem, LinuxHost
from edgefleet.agent.hardware.vdevice import VirtualDevice

__all__ = ["ABSystem", "BootEnv", "LinuxABSystem", "LinuxHost", "Platform", "Tpm", "VirtualDevice"]
