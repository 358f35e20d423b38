"""Native services: a program run as a child process, supervised like any workload.

The program is a signed artifact, verified and kept read-only and executable in the cache
directory, or a program of the device's signed OS image named by absolute path. It runs
in a session of its own (stopping it ends everything it started), in ``<data>/<name>``,
with only the declared environment (plus ``PATH`` and ``HOME``), under resource limits:
address space (``RLIMIT_AS``), CPU time (``RLIMIT_CPU``: SIGXCPU at the limit) and wall
time per run.
"""

from __future__ import annotations

import os
import resource
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from edgefleet.protocol.workloads import NativeWorkload
from edgefleet.workloads.common import Artifact, RunResult, WorkloadRefused, keep, verify, version_of
from edgefleet.workloads.process import Child

PATH = "/usr/local/bin:/usr/bin:/bin"


class NativeService:
    def __init__(self, spec: NativeWorkload, artifacts: Sequence[Artifact], cache_dir: Path) -> None:
        """Raises WorkloadRefused: the artifact does not verify, or the program is missing."""
        self.spec = spec
        shas = [verify(data, target) for data, target in artifacts]
        self.sha256 = version_of(shas)
        if spec.target is not None:
            program = keep(cache_dir, shas[0], artifacts[0][0], mode=0o555)
            self.argv = [str(program), *spec.command]
        else:
            self.argv = list(spec.command)
        if not os.access(self.argv[0], os.X_OK):
            raise WorkloadRefused(f"native service {spec.name}: {self.argv[0]} is not an executable program",
                                  code="invalid_workload")
        self._child = Child()

    def _limits(self) -> None:
        """In the child, before exec."""
        limits = self.spec.limits
        if limits.memory_mib is not None:
            size = limits.memory_mib * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (size, size))
        if limits.cpu_seconds is not None:
            resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))

    def run(self, data_dir: Path, log_dir: Path) -> RunResult:
        started = time.monotonic()
        log_dir.mkdir(parents=True, exist_ok=True)
        home = data_dir / self.spec.name
        home.mkdir(parents=True, exist_ok=True)
        try:
            ended = self._child.run(self.argv, stdout=log_dir / f"{self.spec.name}.stdout",
                                    stderr=log_dir / f"{self.spec.name}.stderr", cwd=home,
                                    env={"PATH": PATH, "HOME": str(home), **self.spec.env}, limits=self._limits,
                                    wall_seconds=self.spec.limits.wall_seconds)
        except OSError as exc:
            return RunResult("crashed", None, f"cannot start {self.argv[0]}: {exc}", time.monotonic() - started)
        seconds = time.monotonic() - started
        if ended.stopped:
            return RunResult("stopped", seconds=seconds)
        if ended.timed_out:
            return RunResult("wall_time", ended.code, f"stopped after {self.spec.limits.wall_seconds:g} s", seconds)
        code = ended.code
        if code is not None and code < 0:
            signum = -code
            if signum == signal.SIGXCPU or (signum == signal.SIGKILL and self.spec.limits.cpu_seconds is not None
                                            and seconds >= self.spec.limits.cpu_seconds):
                return RunResult("cpu_limit", code, f"used its {self.spec.limits.cpu_seconds} s of CPU", seconds)
            return RunResult("crashed", code, f"killed by {signal.Signals(signum).name}", seconds)
        return RunResult("exited", code, seconds=seconds)

    def stop(self) -> None:
        self._child.stop()
