"""One VM: QEMU q35 with Debian's OVMF (a per-VM copy of its variable store), one swtpm
per VM, the disk as a qcow2 overlay on the cached base image, and the serial console in
a file. The QEMU command line is pinned (machine type, memory, CPUs, devices): PCR 0 and
PCR 1 change with it.

The guest has one NIC on QEMU's user network with ``restrict=on``: it reaches nothing
but the forwards named here, whose host side is always 127.0.0.1. Acceleration is TCG
(software emulation): it works everywhere, including where /dev/kvm exists but hangs.

A guest reboot is a power cycle: QEMU stops at the guest's reset (``-action
reboot=shutdown``), its QMP socket says it was a reset, and the machine starts QEMU and
swtpm again on the same disk, variable store and TPM state, the consoles appended. A warm
reset under TCG now and then left OVMF spinning with no output (CI saw it at the third
reboot of the update tests, with one vCPU); a cold start is the path every first boot
takes. The boot loader's counters live on the disk, so A/B trials behave as on a warm
reset; the TPM starts from TPM2_Startup(CLEAR) either way.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from edgefleet.errors import BuildError, ConfigError
from edgefleet.image import _tools

OVMF_DIRS = (Path("/usr/share/OVMF"),)
GUEST_HOST = "10.0.2.100"  # where the guest finds the forwards (QEMU user network)


def firmware_paths() -> tuple[Path, Path]:
    """(OVMF code, OVMF variable-store template): Debian's 4 MiB build without Secure Boot keys."""
    for directory in OVMF_DIRS:
        code, variables = directory / "OVMF_CODE_4M.fd", directory / "OVMF_VARS_4M.fd"
        if code.exists() and variables.exists():
            return code, variables
    raise ConfigError("OVMF is not installed (Debian: ovmf)")


@dataclass(frozen=True)
class MachineConfig:
    disk: Path  # the base image (raw); never written
    directory: Path  # this VM's files: overlay, variables, TPM state, console log
    memory_mib: int = 1024
    # One vCPU: with two, OVMF now and then spins forever at a warm reset (a guest reboot)
    # waiting for an application processor to take its start-up IPI, a race that a loaded
    # host under TCG loses (seen on the third reboot of an update test; edk2 has a pending
    # fix that resends the IPI). PCR 0 follows the CPU count; baselines come from the same
    # command line.
    cpus: int = 1
    # guest TCP port on GUEST_HOST -> host port on 127.0.0.1
    forwards: Mapping[int, int] = field(default_factory=dict)
    fw_cfg: Mapping[str, bytes] = field(default_factory=dict)  # name -> contents (opt/...)


class Machine:
    """Start with ``start()`` (or as a context manager); ``stop()`` always cleans up."""

    def __init__(self, config: MachineConfig) -> None:
        self.config = config
        self.directory = config.directory
        self.console = config.directory / "console.log"
        self.evidence_port = config.directory / "ttyS1.log"  # the guest's second serial port
        self.tpm_state = config.directory / "tpm"
        self.qmp_socket = config.directory / "qmp.sock"
        self._qemu: subprocess.Popen[bytes] | None = None
        self._swtpm: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopping = False
        self._rebooting = False  # the guest reset; QEMU and swtpm are starting again
        self.reboots = 0  # guest resets this run (each a power cycle, see the module's text)
        self.started_at = 0.0

    # -- setup -----------------------------------------------------------------------------

    def prepare(self) -> None:
        """The overlay, the variable store and the TPM state, once per VM."""
        _tools.require(["qemu-system-x86_64", "qemu-img", "swtpm", "swtpm_setup"])
        self.directory.mkdir(parents=True, exist_ok=True)
        overlay = self.directory / "disk.qcow2"
        if not overlay.exists():
            _tools.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", self.config.disk.resolve(),
                        overlay])
        _, variables = firmware_paths()
        if not (self.directory / "OVMF_VARS.fd").exists():
            shutil.copyfile(variables, self.directory / "OVMF_VARS.fd")
        if not (self.tpm_state / "tpm2-00.permall").exists():
            self.tpm_state.mkdir(parents=True, exist_ok=True)
            _tools.run(["swtpm_setup", "--tpm2", "--tpmstate", self.tpm_state, "--pcr-banks", "sha256",
                        "--createek", "--overwrite"])

    def command(self) -> list[str]:
        code, _ = firmware_paths()
        config = self.config
        netdev = "user,id=net0,restrict=on"
        for guest_port, host_port in sorted(config.forwards.items()):
            # One connection per guest connection, to 127.0.0.1 only (QEMU chardevs reconnect
            # once each; `cmd:` runs our relay per connection).
            netdev += f",guestfwd=tcp:{GUEST_HOST}:{guest_port}-cmd:{relay_command(host_port)}"
        argv = [
            "qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-cpu", "max",
            "-m", str(config.memory_mib), "-smp", str(config.cpus),
            "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
            # append=on: a reboot starts QEMU again, and the consoles go on where they were.
            "-chardev", f"file,id=console,path={self.console},append=on", "-serial", "chardev:console",
            "-chardev", f"file,id=evidence,path={self.evidence_port},append=on", "-serial", "chardev:evidence",
            "-qmp", f"unix:{self.qmp_socket},server=on,wait=off", "-action", "reboot=shutdown",
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={self.directory / 'OVMF_VARS.fd'}",
            "-chardev", f"socket,id=chrtpm,path={self.tpm_state / 'swtpm.sock'}",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0",
            "-drive", f"if=none,id=disk0,format=qcow2,file={self.directory / 'disk.qcow2'}",
            "-device", "virtio-blk-pci,drive=disk0",
            "-netdev", netdev, "-device", "virtio-net-pci,netdev=net0",
            "-device", "virtio-rng-pci",
        ]
        for name, data in sorted(config.fw_cfg.items()):
            path = self.directory / ("fw_cfg-" + name.replace("/", "_"))
            path.write_bytes(data)
            os.chmod(path, 0o600)
            argv += ["-fw_cfg", f"name={name},file={path}"]
        return argv

    # -- running ---------------------------------------------------------------------------

    def start(self) -> Machine:
        """Raises BuildError or ConfigError when a tool is missing or does not start, and
        RuntimeError when this VM is running already."""
        with self._lock:
            if self._qemu is not None or self._swtpm is not None:
                raise RuntimeError("this VM is running already; stop() it first")
            self.prepare()
            if self.console.exists() and self.console.stat().st_size:  # a restart: keep the last run's console
                self.console.replace(self.directory / f"console-{len(list(self.directory.glob('console-*.log')))}.log")
            self.console.write_bytes(b"")
            self.evidence_port.write_bytes(b"")
            self._stopping = False
            self.started_at = time.monotonic()
            self._power_on()
        return self

    def _power_on(self) -> None:
        """swtpm, then QEMU, then the thread that watches this QEMU. Called with the lock held."""
        socket_path = self.tpm_state / "swtpm.sock"
        socket_path.unlink(missing_ok=True)
        self.qmp_socket.unlink(missing_ok=True)
        self._swtpm = subprocess.Popen(  # noqa: S603 - fixed argv
            [shutil.which("swtpm") or "swtpm", "socket", "--tpm2", "--tpmstate", f"dir={self.tpm_state}",
             "--ctrl", f"type=unixio,path={socket_path}", "--terminate",
             "--log", f"file={self.tpm_state / 'swtpm.log'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _wait(lambda: socket_path.exists(), 10, "swtpm did not create its socket")
        with open(self.directory / "qemu.stderr", "ab") as stderr:
            qemu = subprocess.Popen(  # noqa: S603 - fixed argv
                self.command(), stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        self._qemu = qemu
        threading.Thread(target=self._supervise, args=(qemu,), name=f"vm-{self.directory.name}",
                         daemon=True).start()

    def _supervise(self, qemu: subprocess.Popen[bytes]) -> None:
        """Wait for ``qemu`` to end; when the guest reset it, power the machine on again."""
        reset = self._guest_reset(qemu)
        qemu.wait()
        with self._lock:
            if self._stopping or self._qemu is not qemu:
                return
            if reset:
                self._stop_processes()
                self.reboots += 1
                try:
                    self._power_on()
                finally:
                    self._rebooting = False

    def _guest_reset(self, qemu: subprocess.Popen[bytes]) -> bool:
        """Read QMP events until QEMU closes the socket; True when it stopped for a guest reset."""
        deadline = time.monotonic() + 60
        while not self.qmp_socket.exists():
            if qemu.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as channel:
            try:
                channel.connect(str(self.qmp_socket))
            except OSError:
                return False
            with channel.makefile("rb") as reader:
                reader.readline()  # the greeting
                channel.sendall(b'{"execute": "qmp_capabilities"}\n')
                for line in reader:
                    with contextlib.suppress(ValueError, AttributeError):
                        message = json.loads(line)
                        if message.get("event") == "SHUTDOWN" and message["data"].get("reason") == "guest-reset":
                            self._rebooting = True
                            return True
        return False

    @property
    def running(self) -> bool:
        """QEMU runs, or the guest reset it and it is starting again."""
        return self._rebooting or (self._qemu is not None and self._qemu.poll() is None)

    def console_text(self) -> str:
        try:
            return self.console.read_text(errors="replace")
        except OSError:
            return ""

    def wait_for_console(self, needle: str, timeout: float) -> str:
        """The console up to ``needle``; raises BuildError (with the console's tail) when
        it does not appear in time or QEMU exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.console_text()
            if needle in text:
                return text
            if not self.running:
                break
            time.sleep(0.25)
        tail = "\n".join(self.console_text().splitlines()[-25:])
        raise BuildError(f"the VM did not print {needle!r} within {timeout:.0f} s; console tail:\n{tail}")

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            self._rebooting = False
            self._stop_processes()

    def _stop_processes(self) -> None:
        for process in (self._qemu, self._swtpm):
            if process is None:
                continue
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(10)
        self._qemu = self._swtpm = None

    def cut_power(self) -> None:
        """What pulling the plug does: QEMU dies at once (SIGKILL), mid-write or not. The
        disk overlay, the firmware's variable store and the TPM's persistent state stay,
        so ``start()`` powers the same device on again."""
        with self._lock:
            self._stopping = True
            if self._qemu is not None and self._qemu.poll() is None:
                os.killpg(self._qemu.pid, signal.SIGKILL)
                self._qemu.wait(10)
        self.stop()  # swtpm: stopped in order, as a TPM keeps its NV memory through a power cut

    def __enter__(self) -> Machine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def relay_command(port: int) -> str:
    """A per-connection relay from the guest to 127.0.0.1:``port`` (QEMU runs it with the
    connection on its standard input and output)."""
    import sys

    return f"{sys.executable} -m edgefleet.vm.relay {int(port)}"


def _wait(condition: Callable[[], bool], timeout: float, message: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise ConfigError(message)
