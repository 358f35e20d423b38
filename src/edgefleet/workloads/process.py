"""A workload's child process (a hypervisor, a native service): one run at a time, in a
session of its own so that stopping it ends everything it started, stoppable from any
thread, and bounded in wall time."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

GRACE_SECONDS = 5.0  # between SIGTERM and SIGKILL


@dataclass(frozen=True)
class Ended:
    code: int | None  # None: stopped before it started
    timed_out: bool = False
    stopped: bool = False


class Child:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stopping = False
        self._process: subprocess.Popen[bytes] | None = None

    def run(self, command: Sequence[str], *, stderr: Path, stdout: Path | None = None, cwd: Path | None = None,
            env: Mapping[str, str] | None = None, limits: Callable[[], None] | None = None,
            wall_seconds: float | None = None) -> Ended:
        """Start ``command`` and wait for it (blocking). ``limits`` runs in the child before
        exec (resource limits). Raises OSError when it cannot start."""
        with self._lock:
            if self._stopping:
                return Ended(None, stopped=True)
            with contextlib.ExitStack() as files:
                out = files.enter_context(stdout.open("wb")) if stdout is not None else subprocess.DEVNULL
                err = files.enter_context(stderr.open("wb"))
                self._process = subprocess.Popen(  # noqa: S603 - a declared, signed command
                    list(command), stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd,
                    env=None if env is None else dict(env), preexec_fn=limits,
                    start_new_session=True)
        process = self._process
        try:
            code = process.wait(timeout=wall_seconds)
        except subprocess.TimeoutExpired:
            self._end(process)
            return Ended(process.wait(), timed_out=True)
        return Ended(code, stopped=self._stopping)

    def stop(self) -> None:
        """End the current run; later runs end at once."""
        with self._lock:
            self._stopping = True
            process = self._process
        if process is not None:
            self._end(process)

    @staticmethod
    def _end(process: subprocess.Popen[bytes]) -> None:
        """SIGTERM to the child's whole session, SIGKILL after the grace period."""
        if process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)

        def kill() -> None:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)

        timer = threading.Timer(GRACE_SECONDS, kill)
        timer.daemon = True
        timer.start()
