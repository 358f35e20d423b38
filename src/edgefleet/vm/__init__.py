"""Real-boot test devices: an image built by ``edgefleet image build`` booting real UEFI
firmware (OVMF) with its own TPM (swtpm) under QEMU."""

from edgefleet.vm.qemu import Machine, MachineConfig, firmware_paths

__all__ = ["Machine", "MachineConfig", "firmware_paths"]
