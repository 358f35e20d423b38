"""WebAssembly workloads under wasmtime and WASI.

A module runs only if its bytes are exactly those of its signed target (length and every
hash). Each workload version has its own engine, with fuel metering and epoch
interruption: bumping that engine's epoch interrupts exactly that workload's code, which
is how a run is stopped and how its wall-time limit is enforced. The module is compiled
once per version; each run gets a fresh store with the declared memory and fuel limits,
arguments, environment and preopened directories, and nothing else: no inherited
environment, no host directories, no network.

Output goes to files, one per stream (wasmtime writes them from its own threads); the
supervisor reads them after each run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import wasmtime

from edgefleet.protocol.workloads import Reason, WasmWorkload
from edgefleet.workloads.common import Artifact, RunResult, WorkloadRefused, verify

MIB = 1024 * 1024
PAGE = 65536  # a WebAssembly memory page
UNMETERED = 2**63 - 1  # fuel of a run without a CPU limit


class WasmModule:
    """One verified, compiled version of a workload."""

    def __init__(self, spec: WasmWorkload, artifacts: Sequence[Artifact]) -> None:
        """Raises WorkloadRefused (hash mismatch, or not a WebAssembly module)."""
        [(data, target)] = artifacts
        self.spec = spec
        self.sha256 = verify(data, target)
        config = wasmtime.Config()
        config.consume_fuel = True
        config.epoch_interruption = True
        self.engine = wasmtime.Engine(config)
        try:
            self.module = wasmtime.Module(self.engine, data)
        except wasmtime.WasmtimeError as exc:
            raise WorkloadRefused(f"artifact {target.path} is not a module wasmtime can run: "
                                  f"{str(exc).splitlines()[0]}", code="invalid_module") from exc
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Interrupt the current run (from any thread); later runs end at once."""
        self._stopping.set()
        self.engine.increment_epoch()

    def run(self, data_dir: Path, log_dir: Path) -> RunResult:
        """One run, to its end (blocking: call it in a worker thread)."""
        spec, started = self.spec, time.monotonic()
        if self._stopping.is_set():
            return RunResult("stopped")
        store = wasmtime.Store(self.engine)
        store.set_limits(memory_size=spec.limits.memory_mib * MIB)
        store.set_fuel(spec.limits.fuel or UNMETERED)
        store.set_epoch_deadline(1)  # the next bump of the epoch interrupts
        wasi = wasmtime.WasiConfig()
        wasi.argv = [spec.name, *spec.args]
        wasi.env = sorted(spec.env.items())
        log_dir.mkdir(parents=True, exist_ok=True)
        wasi.stdout_file = str(log_dir / f"{spec.name}.stdout")
        wasi.stderr_file = str(log_dir / f"{spec.name}.stderr")
        for directory in spec.dirs:
            host = data_dir / spec.name / directory.host
            host.mkdir(parents=True, exist_ok=True)
            wasi.preopen_dir(str(host), directory.guest, directory.writable)
        store.set_wasi(wasi)
        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        timer = threading.Timer(spec.limits.wall_seconds, self.engine.increment_epoch) \
            if spec.limits.wall_seconds else None
        instance = None
        try:
            instance = linker.instantiate(store, self.module)
            entry = instance.exports(store).get("_start")
            if not isinstance(entry, wasmtime.Func):
                return RunResult("crashed", detail="the module exports no _start function")
            if timer is not None:
                timer.start()
            entry(store)
            return RunResult("exited", 0, seconds=time.monotonic() - started)
        except wasmtime.ExitTrap as exc:
            return RunResult("exited", exc.code, seconds=time.monotonic() - started)
        except wasmtime.Trap as exc:
            return self._trapped(exc, store, instance, time.monotonic() - started)
        except wasmtime.WasmtimeError as exc:  # instantiation: imports, or memory over the limit
            first = str(exc).splitlines()[0]
            reason: Reason = "memory_limit" if "memory" in first and "limit" in first else "crashed"
            return RunResult(reason, detail=first, seconds=time.monotonic() - started)
        finally:
            if timer is not None:
                timer.cancel()

    def _trapped(self, trap: wasmtime.Trap, store: wasmtime.Store, instance: wasmtime.Instance | None,
                 seconds: float) -> RunResult:
        limits = self.spec.limits
        if trap.trap_code is wasmtime.TrapCode.OUT_OF_FUEL:
            return RunResult("cpu_limit", detail=f"used its {limits.fuel} units of fuel", seconds=seconds)
        if trap.trap_code is wasmtime.TrapCode.INTERRUPT:
            if self._stopping.is_set():
                return RunResult("stopped", seconds=seconds)
            return RunResult("wall_time", detail=f"ran past its {limits.wall_seconds} s", seconds=seconds)
        memory = None if instance is None else instance.exports(store).get("memory")
        if isinstance(memory, wasmtime.Memory) and memory.size(store) * PAGE + PAGE > limits.memory_mib * MIB:
            # It died with its memory at the limit: a refused memory.grow, as allocators abort.
            return RunResult("memory_limit", detail=f"needed more than its {limits.memory_mib} MiB of memory",
                             seconds=seconds)
        code = trap.trap_code.name.lower() if trap.trap_code is not None else "trap"
        return RunResult("crashed", detail=f"{code}: {str(trap).splitlines()[0]}", seconds=seconds)
