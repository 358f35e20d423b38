"""microVM workloads: a kernel and an initramfs, both signed targets, booted by QEMU's
``microvm`` machine (no PCI, no firmware, virtio-mmio and a serial console).

Both artifacts are verified before anything is written; the verified bytes are kept
content-addressed and read-only in the cache directory, and QEMU boots those files. KVM
is used when ``/dev/kvm`` is usable, software emulation (TCG) otherwise; a KVM that fails
before the guest printed anything (nested virtualisation often does) is given up for TCG
for the rest of the process, and the run is retried at once. CPU and memory
are the VM's (``vcpus``, ``memory_mib``). The serial console goes to the workload's
stdout file, where the supervisor looks for the health marker.

Firecracker is not used here: it is not packaged for Debian, and QEMU's ``microvm``
boots the same kind of kernel the same way.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from edgefleet.protocol.workloads import MicroVmWorkload
from edgefleet.workloads.common import Artifact, RunResult, WorkloadRefused, keep, verify, version_of
from edgefleet.workloads.process import Child

QEMU = "qemu-system-x86_64"
log = logging.getLogger("edgefleet.workloads")
KVM_FIRST_OUTPUT_SECONDS = 15.0
_kvm_failed = threading.Event()  # this process saw KVM fail: software emulation from now on


def _kvm() -> bool:
    return not _kvm_failed.is_set() and os.access("/dev/kvm", os.R_OK | os.W_OK)


class MicroVm:
    def __init__(self, spec: MicroVmWorkload, artifacts: Sequence[Artifact], cache_dir: Path) -> None:
        """Raises WorkloadRefused: an artifact does not verify, or QEMU is not installed."""
        self.spec = spec
        shas = [verify(data, target) for data, target in artifacts]
        if len(shas) != 2:
            raise WorkloadRefused(f"microVM {spec.name} needs a kernel and an initramfs", code="invalid_workload")
        self.sha256 = version_of(shas)
        qemu = shutil.which(QEMU)
        if qemu is None:
            raise WorkloadRefused(f"microVM {spec.name} cannot run: {QEMU} is not installed", code="no_hypervisor")
        self.qemu = qemu
        cache_dir.mkdir(parents=True, exist_ok=True)
        self.kernel, self.initrd = (keep(cache_dir, sha, data) for sha, (data, _) in zip(shas, artifacts, strict=True))
        self._child = Child()

    def command(self, console: Path, kvm: bool) -> list[str]:
        spec = self.spec
        # acpi=off: the kernel finds its devices from the MP table and the command line; with
        # ACPI, Debian's 6.1 kernels wait forever for a timer under software emulation.
        return [self.qemu, "-machine", "microvm,acpi=off", "-accel", "kvm" if kvm else "tcg",
                "-cpu", "host" if kvm else "max", "-smp", str(spec.vcpus), "-m", f"{spec.memory_mib}M",
                "-nodefaults", "-no-user-config",
                "-nographic", "-no-reboot", "-serial", f"file:{console}", "-kernel", str(self.kernel),
                "-initrd", str(self.initrd), "-append", f"console=ttyS0 panic=-1 {spec.cmdline}".strip()]

    def run(self, data_dir: Path, log_dir: Path) -> RunResult:
        started = time.monotonic()
        log_dir.mkdir(parents=True, exist_ok=True)
        console, errors = log_dir / f"{self.spec.name}.stdout", log_dir / f"{self.spec.name}.stderr"
        kvm = _kvm()
        silent = threading.Event()
        watch = threading.Timer(KVM_FIRST_OUTPUT_SECONDS, self._give_up_if_silent, (console, silent)) if kvm else None
        if watch is not None:
            watch.start()
        try:
            ended = self._child.run(self.command(console, kvm), stderr=errors)
        finally:
            if watch is not None:
                watch.cancel()
        code, seconds = ended.code, time.monotonic() - started
        if silent.is_set():
            log.warning("KVM guest %s printed nothing in %.0f s (nested virtualisation can hang); using software "
                        "emulation", self.spec.name, KVM_FIRST_OUTPUT_SECONDS)
            _kvm_failed.set()
            self._child = Child()  # the old one was stopped for good
            return self.run(data_dir, log_dir)
        if ended.stopped:
            return RunResult("stopped", seconds=seconds)
        if kvm and code != 0 and (not console.exists() or not console.stat().st_size):
            log.warning("KVM failed before %s printed anything (%s); using software emulation",
                        self.spec.name, errors.read_text(errors="replace").strip().splitlines()[-1:])
            _kvm_failed.set()
            return self.run(data_dir, log_dir)
        if code == 0:  # the guest powered off
            return RunResult("exited", 0, seconds=seconds)
        last = (errors.read_text(errors="replace").strip().splitlines() or [""])[-1][:300]
        return RunResult("crashed", code, f"{QEMU} exited with {code}" + (f": {last}" if last else ""), seconds)

    def _give_up_if_silent(self, console: Path, silent: threading.Event) -> None:
        """A KVM guest boots in well under a second; one that has printed nothing by now hangs."""
        if not console.exists() or not console.stat().st_size:
            silent.set()
            self._child.stop()

    def stop(self) -> None:
        self._child.stop()
