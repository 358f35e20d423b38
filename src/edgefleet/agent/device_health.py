"""The device's health as data: a verdict computed from real signals, sent with every
status report and at once when it changes. The same checks serve a trial boot (where a
failed required check rolls the update back, abupdate) and steady state (where it makes
the device unhealthy, and a rollout baking on it halts).

Signals, each a named finding when it fails:

- ``health.d`` (greenboot's layout): ``<health_dir>/required.d/`` and ``wanted.d/``. An
  executable file there is a command check (exit status 0 passes); any other file names a
  systemd unit by its file name (``chrony.service``), which must be active.
- the image's own checks and the settings' ``health_checks`` (required or wanted each);
- ``health_units``: systemd units that must be active (required);
- workloads: each one the agent supervises runs and, where it has a health signal, is
  healthy (required: a crash loop is unhealthy);
- resources: free space where the agent keeps its state, available memory, the telemetry
  buffer near its bound (wanted: pressure degrades);
- clock: the wall clock went back behind the last time the agent saw it, or stands before
  this agent was built (wanted);
- attestation: the last quote the server judged (required);
- trust roots: without the image's TUF roots the device refuses all configuration, fail
  closed (required).

States: ``healthy``; ``degraded`` (a wanted finding); ``unhealthy`` (a required one).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edgefleet.agent.hardware.interfaces import ABSystem
from edgefleet.agent.health import CheckResult, HealthCheck, Probe, parse_checks, run_checks
from edgefleet.agent.settings import AgentSettings
from edgefleet.errors import EdgefleetError
from edgefleet.protocol.v1 import HealthFinding
from edgefleet.protocol.workloads import WorkloadStatus
from edgefleet.util.aio import any_set

State = Literal["healthy", "degraded", "unhealthy"]
CHECK_TIMEOUT_SECONDS = 30.0  # a health.d check that has not answered by then has failed
DISK_FREE_MIN_RATIO = 0.05  # below this, the state directory's filesystem is under pressure
DISK_FREE_MIN_BYTES = 64 << 20
MEMORY_AVAILABLE_MIN_RATIO = 0.05
BUFFER_FULL_RATIO = 0.9  # the telemetry buffer drops its oldest records at 1.0
CLOCK_FLOOR = 1_764_547_200  # 2025-12-01T00:00:00Z: no clock that runs this agent stands before it
CLOCK_BACK_TOLERANCE_SECONDS = 300.0
_UNHEALTHY_WORKLOAD_STATES = frozenset({"backing_off", "exited", "refused"})


@dataclass(frozen=True)
class Verdict:
    state: State
    findings: tuple[HealthFinding, ...] = ()

    def summary(self) -> str:
        if not self.findings:
            return self.state
        return f"{self.state}: " + "; ".join(f"{f.name} ({f.detail})" for f in self.findings)


def judge(findings: Iterable[HealthFinding]) -> Verdict:
    found = tuple(sorted(findings, key=lambda f: (not f.required, f.name)))
    if any(f.required for f in found):
        return Verdict("unhealthy", found)
    return Verdict("degraded" if found else "healthy", found)


def health_d_checks(directory: Path | None, timeout: float = CHECK_TIMEOUT_SECONDS) -> list[HealthCheck]:
    """The checks dropped into ``directory``'s ``required.d`` and ``wanted.d``, by name.
    Only regular files directly inside count (no links out of the directory, no
    subdirectories); a file that is not executable names a systemd unit."""
    checks: list[HealthCheck] = []
    if directory is None:
        return checks
    for kind, required in (("required.d", True), ("wanted.d", False)):
        folder = directory / kind
        try:
            entries = sorted(folder.iterdir())
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(".") or entry.is_symlink() or not entry.is_file():
                continue
            name = f"health.d/{entry.name}"[:64]
            if os.access(entry, os.X_OK):
                checks.append(HealthCheck(name=name, kind="command", required=required, timeout_seconds=timeout,
                                          command=[str(entry)]))
            else:
                checks.append(HealthCheck(name=name, kind="systemd", required=required, timeout_seconds=timeout,
                                          unit=entry.name))
    return checks


def unit_checks(units: Sequence[str], timeout: float = CHECK_TIMEOUT_SECONDS) -> list[HealthCheck]:
    return [HealthCheck(name=f"unit/{unit}"[:64], kind="systemd", unit=unit, timeout_seconds=timeout)
            for unit in units]


def configured_checks(settings: AgentSettings) -> list[HealthCheck]:
    """The device's own checks besides the image's: the settings', health.d's, the named units."""
    return (parse_checks(settings.health_checks) + health_d_checks(settings.health_dir)
            + unit_checks(settings.health_units))


def device_checks(settings: AgentSettings, system: ABSystem | None) -> list[HealthCheck]:
    """What makes this device healthy in steady state: the same checks as a trial boot's."""
    image = system.image_health_checks() if system is not None else []
    return parse_checks(image) + configured_checks(settings)


def check_findings(results: Iterable[CheckResult]) -> list[HealthFinding]:
    return [HealthFinding(name=r.name, required=r.required, detail=r.detail[:200] or "failed")
            for r in results if not r.passed]


def workload_findings(statuses: Iterable[WorkloadStatus]) -> list[HealthFinding]:
    found = []
    for status in statuses:
        finished = status.state == "exited" and status.last_exit in ("exited", "stopped")  # a one-shot job's end
        if status.state in _UNHEALTHY_WORKLOAD_STATES and not finished:
            why = status.detail or status.last_exit or status.state
            found.append(HealthFinding(name=f"workload/{status.name}", required=True,
                                       detail=f"{status.state} after {status.restarts} restarts: {why}"[:200]))
        elif status.healthy is False:
            found.append(HealthFinding(name=f"workload/{status.name}", required=True,
                                       detail=(status.detail or "its health check fails")[:200]))
    return found


def disk_findings(path: Path) -> list[HealthFinding]:
    try:
        usage = shutil.disk_usage(path)
    except OSError as exc:
        return [HealthFinding(name="disk", required=True, detail=f"cannot read {path}: {exc.strerror or exc}")]
    if usage.free < max(DISK_FREE_MIN_BYTES, usage.total * DISK_FREE_MIN_RATIO):
        return [HealthFinding(name="disk", required=False,
                              detail=f"{usage.free >> 20} MiB free of {usage.total >> 20} MiB under {path}")]
    return []


def memory_findings(meminfo: Path = Path("/proc/meminfo")) -> list[HealthFinding]:
    try:
        fields = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
        total, available = (int(fields[key].split()[0]) for key in ("MemTotal", "MemAvailable"))
    except (OSError, KeyError, ValueError, IndexError):
        return []  # no /proc/meminfo (not Linux): nothing to judge by
    if total > 0 and available < total * MEMORY_AVAILABLE_MIN_RATIO:
        return [HealthFinding(name="memory", required=False,
                              detail=f"{available >> 10} MiB available of {total >> 10} MiB")]
    return []


def buffer_findings(used_bytes: int, max_bytes: int) -> list[HealthFinding]:
    if max_bytes > 0 and used_bytes >= max_bytes * BUFFER_FULL_RATIO:
        return [HealthFinding(name="telemetry-buffer", required=False,
                              detail=f"{100 * used_bytes // max_bytes}% of its {max_bytes >> 20} MiB bound: "
                                     "the oldest records go first when it is full")]
    return []


@dataclass
class ClockSanity:
    """The wall clock's sanity: never before CLOCK_FLOOR, never back behind the latest time
    this agent saw (beyond a tolerance for NTP's steps)."""

    latest: float = 0.0

    def findings(self, now: float | None = None) -> list[HealthFinding]:
        now = time.time() if now is None else now
        if now < CLOCK_FLOOR:
            return [HealthFinding(name="clock", required=False,
                                  detail=f"the wall clock reads {time.strftime('%Y-%m-%d', time.gmtime(now))}, "
                                         "before this agent was built")]
        if now < self.latest - CLOCK_BACK_TOLERANCE_SECONDS:
            return [HealthFinding(name="clock", required=False,
                                  detail=f"the wall clock went back {self.latest - now:.0f}s")]
        self.latest = max(self.latest, now)
        return []


def attestation_findings(attested: bool | None) -> list[HealthFinding]:
    if attested is False:
        return [HealthFinding(name="attestation", required=True, detail="the last quote failed its verification")]
    return []


@dataclass
class HealthSources:
    """Where the agent's verdict comes from; the agent fills the callables."""

    checks: Callable[[], list[HealthCheck]]  # the image's, the settings', health.d's, the units'
    workloads: Callable[[], list[WorkloadStatus]]
    buffer: Callable[[], tuple[int, int]]  # (bytes held, bound) of the telemetry buffer
    attested: Callable[[], bool | None]
    state_dir: Path
    probe: Probe | None = None  # answers ``workloads`` checks
    untrusted: Callable[[], str | None] = lambda: None  # why the device refuses all configuration
    unsigned: Callable[[], str | None] = lambda: None  # what the server sent that the director did not sign
    invalid_workloads: Callable[[], str | None] = lambda: None  # signed workloads this agent cannot read
    clock: ClockSanity = field(default_factory=ClockSanity)
    cancel: threading.Event = field(default_factory=threading.Event)  # set: running checks end now

    def evaluate(self) -> Verdict:
        """Runs the checks (blocking: call it from a worker thread)."""
        try:
            findings = check_findings(run_checks(self.checks(), self.cancel, self.probe))
        except EdgefleetError as exc:  # a malformed check file: the device cannot tell it is healthy
            findings = [HealthFinding(name="health-checks", required=True, detail=exc.message[:200])]
        findings += workload_findings(self.workloads())
        findings += disk_findings(self.state_dir) + memory_findings() + buffer_findings(*self.buffer())
        findings += self.clock.findings() + attestation_findings(self.attested())
        if (why := self.untrusted()) is not None:
            findings.append(HealthFinding(name="trust-roots", required=True,
                                          detail=f"{why}: no configuration, workloads or tokens"[:200]))
        if (why := self.unsigned()) is not None:  # what runs stays as it was: degraded, not unhealthy
            findings.append(HealthFinding(name="signed-instructions", required=False, detail=why[:200]))
        if (why := self.invalid_workloads()) is not None:  # the valid ones run: degraded
            findings.append(HealthFinding(name="invalid-workloads", required=False, detail=why[:200]))
        return judge(findings)


@dataclass
class HealthMonitor:
    """Evaluates the sources every ``interval`` seconds, or at once when woken (a quote was
    judged), and calls ``changed`` when the verdict changes. Checks run on a thread of the
    monitor's own: one may hang up to its timeout, and must not hold the shared pool."""

    sources: HealthSources
    interval: float
    verdict: Verdict | None = None  # None until the first evaluation
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, stop: asyncio.Event, changed: Callable[[Verdict], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        own = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgefleet-health")
        try:
            while not stop.is_set():
                self.wake.clear()
                verdict = await loop.run_in_executor(own, self.sources.evaluate)
                if stop.is_set():
                    break
                if verdict != self.verdict:
                    self.verdict = verdict
                    await changed(verdict)
                await any_set(stop, self.wake, timeout=self.interval)
        finally:
            self.sources.cancel.set()  # a running check ends at once; its thread with it
            own.shutdown(wait=False, cancel_futures=True)
