"""The TPM 2.0 emulator (Debian's ``swtpm``) as a managed process: one state directory per
emulated device, a data port for the TSS and a control port for power cycles (which reset
the PCRs, as a reboot does on a real TPM)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from edgefleet.errors import ConfigError


def _free_port_pair() -> int:
    """A port P with P+1 free too: the swtpm TCTI finds the control channel at P+1."""
    for _ in range(100):
        with socket.socket() as data, socket.socket() as ctrl:
            data.bind(("127.0.0.1", 0))
            port = int(data.getsockname()[1])
            try:
                ctrl.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise ConfigError("no free pair of ports for swtpm")


def available() -> bool:
    return shutil.which("swtpm") is not None and shutil.which("swtpm_ioctl") is not None


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ConfigError(f"{name} is not installed (Debian: apt-get install swtpm swtpm-tools)")
    return path


class Swtpm:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.port = _free_port_pair()
        self.ctrl_port = self.port + 1
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    def start(self, timeout: float = 10.0) -> Swtpm:
        """Raises ConfigError when swtpm is missing or does not come up."""
        swtpm = _tool("swtpm")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            [swtpm, "socket", "--tpm2", "--tpmstate", f"dir={self.state_dir}",
             "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={self.ctrl_port},bindaddr=127.0.0.1",
             "--flags", "not-need-init,startup-clear", "--log", f"file={self.state_dir / 'swtpm.log'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                error = self._process.stderr.read().decode() if self._process.stderr else ""
                raise ConfigError(f"swtpm exited: {error.strip()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise ConfigError("swtpm did not start")

    def power_cycle(self) -> None:
        """Re-initialise the TPM through the control channel: PCRs back to their reset
        values, reset count up, as after a reboot."""
        command = [_tool("swtpm_ioctl"), "--tcp", f"127.0.0.1:{self.ctrl_port}", "-i"]
        subprocess.run(command, check=True, capture_output=True, timeout=10)  # noqa: S603 - fixed argv

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(5)
        if self._process.stderr:
            self._process.stderr.close()
        self._process = None

    def __enter__(self) -> Swtpm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
