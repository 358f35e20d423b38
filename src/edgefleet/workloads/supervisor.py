"""Supervision of a device's workloads: run exactly the declared set, restart each by its
policy with exponential backoff, replace a version atomically, and say what runs.

Replacing a version: the new bytes are verified and compiled while the old version keeps
running; only then is the old one stopped and the new one started. A version that does
not verify is refused and the old one keeps running. A run that lasted ``stable_seconds``
resets the backoff, so only a crash loop backs off to ``max_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import threading
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from edgefleet.protocol.workloads import (
    OUTPUT_LINES,
    OUTPUT_WIDTH,
    NativeWorkload,
    State,
    WasmWorkload,
    WorkloadSpec,
    WorkloadStatus,
)
from edgefleet.util.backoff import Backoff
from edgefleet.workloads.common import Artifact, Runnable, RunResult, WorkloadRefused, version_of
from edgefleet.workloads.native import NativeService

log = logging.getLogger("edgefleet.workloads")

T = TypeVar("T")


async def _in_own_thread(name: str, run: Callable[[], T]) -> T:
    """``run()`` in a thread of its own: a workload runs for as long as it likes, and must
    not hold one of the event loop's few default worker threads meanwhile."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def target() -> None:
        try:
            result = run()
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=target, name=name, daemon=True).start()
    return await future


class _Output:
    """A workload's stdout and stderr files, read as they grow."""

    def __init__(self, log_dir: Path, name: str, marker: str | None,
                 on_line: Callable[[str, str], None] | None = None) -> None:
        self.name = name
        self.on_line = on_line  # every line, as it is read (into telemetry)
        self.files = [log_dir / f"{name}.stdout", log_dir / f"{name}.stderr"]
        self.offsets = [0, 0]
        self.lines: deque[str] = deque(maxlen=OUTPUT_LINES)
        self.marker = marker  # the line that says the workload is healthy, if it has one
        self.healthy: bool | None = None if marker is None else False

    def restart(self) -> None:
        """A run truncates the files as it starts."""
        self.read()
        self.offsets = [0, 0]
        self.healthy = None if self.marker is None else False

    def read(self) -> None:
        for n, path in enumerate(self.files):
            try:
                with path.open("rb") as stream:
                    stream.seek(self.offsets[n])
                    data = stream.read(1 << 20)
            except FileNotFoundError:
                continue
            complete = data[:data.rfind(b"\n") + 1]
            self.offsets[n] += len(complete)
            for line in complete.decode(errors="replace").splitlines():
                self.lines.append(line[:OUTPUT_WIDTH])
                if self.marker is not None and self.marker in line:
                    self.healthy = True
                log.info("workload %s: %s", self.name, line)
                if self.on_line is not None:
                    self.on_line(self.name, line)


@dataclass
class _Workload:
    spec: WorkloadSpec
    module: Runnable
    output: _Output
    state: State = "starting"
    restarts: int = 0
    last: RunResult | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    def status(self) -> WorkloadStatus:
        last = self.last
        return WorkloadStatus(name=self.spec.name, kind=self.spec.kind, targets=self.spec.targets,
                              sha256=self.module.sha256, state=self.state, restarts=self.restarts,
                              last_exit=None if last is None else last.reason,
                              exit_code=None if last is None else last.exit_code,
                              detail=None if last is None or last.detail is None else last.detail[:1000],
                              output=list(self.output.lines),
                              healthy=self.output.healthy if self.state == "running" else None)


class Supervisor:
    def __init__(self, data_dir: Path, log_dir: Path, rng: random.Random | None = None,
                 on_line: Callable[[str, str], None] | None = None) -> None:
        self.on_line = on_line  # each line a workload prints: (workload, line)
        self.data_dir = data_dir  # workloads' directories: <data>/<name>/...
        self.log_dir = log_dir
        self.cache_dir = data_dir / ".artifacts"  # verified artifacts a hypervisor boots from
        self.rng = rng or random.Random()
        self._workloads: dict[str, _Workload] = {}
        self._refused: dict[str, WorkloadStatus] = {}
        # Set when a workload first fails (a crash after clean runs, a refusal): the agent
        # reports it now rather than at its next report. Not at every crash of a loop.
        self.failed = asyncio.Event()

    async def apply(self, wanted: Sequence[tuple[WorkloadSpec, Sequence[Artifact]]],
                    keep: Collection[str] = ()) -> None:
        """Make the running set exactly ``wanted``: each spec with its artifacts (bytes and
        signed target) in the order of ``spec.targets``. Workloads named in ``keep`` are
        left as they are (their new artifacts could not be fetched this time)."""
        for spec, artifacts in wanted:
            current = self._workloads.get(spec.name)
            signed = [target.hashes.get("sha256", "") for _, target in artifacts]
            if current is not None and current.spec == spec and version_of(signed) == current.module.sha256:
                self._refused.pop(spec.name, None)
                continue
            try:
                module = await asyncio.to_thread(self._load, spec, artifacts)
            except WorkloadRefused as exc:
                self.refuse(spec, exc.message)
                continue
            self._refused.pop(spec.name, None)
            if current is not None:
                await self._stop(current)
                log.info("workload %s: replacing %s with %s", spec.name, current.module.sha256[:12],
                         module.sha256[:12])
            self._start(spec, module)
        names = {spec.name for spec, _ in wanted} | set(keep)
        for name in [n for n in self._workloads if n not in names]:
            await self._stop(self._workloads.pop(name))
            log.info("workload %s removed", name)
        for name in [n for n in self._refused if n not in names]:
            del self._refused[name]

    @property
    def idle(self) -> bool:
        """Nothing supervised, nothing refused."""
        return not self._workloads and not self._refused

    def runs(self, spec: WorkloadSpec) -> bool:
        """Is this exact version the one supervised (running, between runs, or ended by its
        policy), with no newer version refused? Only verified versions ever start. Whether
        it is healthy is another question (its status says)."""
        workload = self._workloads.get(spec.name)
        return (workload is not None and workload.spec == spec and spec.name not in self._refused
                and workload.state != "stopped")

    def refuse(self, spec: WorkloadSpec, why: str) -> None:
        """Record that this version of ``spec`` will not run; a running version stays."""
        log.warning("workload %s refused, %s: %s", spec.name,
                    "the running version stays" if spec.name in self._workloads else "not started", why)
        self.failed.set()
        self._refused[spec.name] = WorkloadStatus(name=spec.name, kind=spec.kind, targets=spec.targets, sha256=None,
                                                  state="refused", last_exit="refused", detail=why[:1000])

    def status(self) -> list[WorkloadStatus]:
        """What runs, and what was refused (a running workload whose new version was
        refused shows the version that runs, and why the new one was refused)."""
        for workload in self._workloads.values():
            workload.output.read()
        shown = [w.status().model_copy(update={"update_refused": self._refused[n].detail})
                 if n in self._refused else w.status() for n, w in self._workloads.items()]
        shown += [s for name, s in self._refused.items() if name not in self._workloads]
        return sorted(shown, key=lambda s: s.name)

    async def close(self) -> None:
        for workload in list(self._workloads.values()):
            await self._stop(workload)
        self._workloads.clear()

    def _load(self, spec: WorkloadSpec, artifacts: Sequence[Artifact]) -> Runnable:
        if len(artifacts) != len(spec.targets):
            raise WorkloadRefused(f"workload {spec.name} needs {len(spec.targets)} artifacts, got {len(artifacts)}",
                                  code="invalid_workload")
        if isinstance(spec, WasmWorkload):
            from edgefleet.workloads.wasm import WasmModule  # wasmtime loads when a module runs

            return WasmModule(spec, artifacts)
        if isinstance(spec, NativeWorkload):
            return NativeService(spec, artifacts, self.cache_dir)
        from edgefleet.workloads.microvm import MicroVm

        return MicroVm(spec, artifacts, self.cache_dir)

    def _start(self, spec: WorkloadSpec, module: Runnable) -> None:
        workload = _Workload(spec, module, _Output(self.log_dir, spec.name, spec.health_marker, self.on_line))
        self._workloads[spec.name] = workload
        workload.task = asyncio.create_task(self._supervise(workload), name=f"workload-{spec.name}")

    async def _stop(self, workload: _Workload) -> None:
        workload.stopping.set()
        workload.module.stop()
        if workload.task is not None:
            await workload.task
        workload.output.read()

    async def _supervise(self, workload: _Workload) -> None:
        spec = workload.spec
        backoff = Backoff(spec.restart.initial_seconds, spec.restart.max_seconds, self.rng)
        while True:
            workload.output.restart()
            workload.state = "running"
            result = await _in_own_thread(f"workload-{spec.name}",
                                          lambda: workload.module.run(self.data_dir, self.log_dir))
            before, workload.last = workload.last, result
            workload.output.read()
            if result.reason == "stopped" or workload.stopping.is_set():
                workload.state = "stopped"
                return
            failed = result.failed
            if failed and (before is None or not before.failed):
                self.failed.set()
            log.log(logging.WARNING if failed else logging.INFO, "workload %s %s%s%s", spec.name, result.reason,
                    f" with code {result.exit_code}" if result.exit_code is not None else "",
                    f": {result.detail}" if result.detail else "")
            if spec.restart.policy == "never" or (spec.restart.policy == "on-failure" and not failed):
                workload.state = "exited"
                return
            if result.seconds >= spec.restart.stable_seconds:
                backoff.reset()
            workload.state = "backing_off"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(workload.stopping.wait(), backoff.next_delay())
            if workload.stopping.is_set():
                workload.state = "stopped"
                return
            workload.restarts += 1
