"""Carries out the A/B update (``update_flow``) on real or emulated hardware.

Every transition is saved before the action it announces, and every action is safe to
repeat, so a crash or power cut at any instant resumes correctly: marking a slot bad,
writing it, arming the trial and committing are all idempotent, and ``after_start``
decides from the booted slot and the bootloader environment what really happened.

The caller (the agent's loop) calls ``step`` until it answers WAIT or REBOOTING; the slow
actions (download, install, health checks) run inside ``step`` and belong in a thread.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from pathlib import Path

from edgefleet.agent.delivery import Delivery
from edgefleet.agent.hardware.interfaces import ABSystem, SlotName
from edgefleet.agent.health import HealthCheck, Probe, parse_checks, run_checks, verdict
from edgefleet.agent.slotenv import SlotEnv
from edgefleet.agent.update_flow import TRIAL, Phase, UpdateJob, after_start
from edgefleet.agent.windowstop import WindowStop
from edgefleet.clock import Clock
from edgefleet.errors import EdgefleetError, InstallError, PersistError, TransportError, UpdateRefused
from edgefleet.protocol.v1 import ATTESTATION_ROLLBACK
from edgefleet.protocol.windows import MaintenancePolicy
from edgefleet.util.stop import StopSignal

log = logging.getLogger("edgefleet.agent.update")

CHUNK = 4 << 20
P = Phase
_CANCELLABLE = frozenset({P.DOWNLOADING, P.DOWNLOADED, P.INSTALLED, P.WAITING_WINDOW})  # nothing armed yet


class Action(Enum):
    CONTINUE = "continue"  # call step again
    WAIT = "wait"  # nothing to do until the window opens, a download is assigned, ...
    ATTEST = "attest"  # attest now and call attestation_result
    REBOOTING = "rebooting"  # a reboot was requested: stop everything


@dataclass
class Offer:
    """What the director assigns, verified, plus the operator's options."""

    version: str
    counter: int
    sha256: str
    length: int
    force_reboot: bool = False


@dataclass
class Refusal:
    code: str
    message: str


@dataclass
class UpdateRunner:
    system: ABSystem
    clock: Clock
    save: Callable[[UpdateJob, dict[str, int]], None]  # persists the job and the failed releases
    job: UpdateJob = field(default_factory=UpdateJob)
    failed: dict[str, int] = field(default_factory=dict)  # release -> desired version it failed under
    checks: list[HealthCheck] = field(default_factory=list)  # from the agent's settings
    trial_seconds: float = 900.0
    policy: MaintenancePolicy = field(default_factory=MaintenancePolicy)
    force_reboot: bool = False
    attestation: bool = False  # attest before commit (the device has a TPM)
    failed_under: int = 0  # the desired-state version in force, recorded with a failed release
    last_checks: list[dict[str, object]] = field(default_factory=list)
    workloads_probe: Probe | None = None  # answers ``workloads`` health checks (the agent's supervisor)
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _cancel: threading.Event = field(default_factory=threading.Event)  # stops running health checks
    _stopping: threading.Event = field(default_factory=threading.Event)  # the agent is going down

    # Bookkeeping
    def _to(self, phase: Phase, reason: str | None = None, **changes: object) -> None:
        with self._lock:
            self.job = self.job.to(phase, self.clock.now(), reason, **changes)
            self.save(self.job, self.failed)
        level = logging.WARNING if phase in (P.ROLLING_BACK, P.ROLLED_BACK, P.FAILED) else logging.INFO
        log.log(level, "update %s: %s%s", self.job.version, phase, f" ({reason})" if reason else "")

    def _env(self) -> tuple[dict[str, str], SlotEnv]:
        values = self.system.bootenv.read()
        return values, SlotEnv.parse(values)

    def _write_env(self, change: Callable[[SlotEnv], SlotEnv]) -> None:
        values, env = self._env()
        after = change(env)
        if after != env:
            assert after.has_bootable_good_slot(), "a bootloader write must keep a good slot"
            self.system.bootenv.write(after.merged_into(values))

    # Entry points
    def resume(self) -> None:
        """On agent start: conclude what a reboot, crash or power cut did to the job."""
        _, env = self._env()
        decision = after_start(self.job, self.system.booted(), self.system.boot_id(), env, self.clock.now())
        if decision.phase is None:
            return
        if decision.phase is P.TRIAL_BOOT:
            deadline = self.clock.now() + timedelta(seconds=self.trial_seconds)
            self._to(P.TRIAL_BOOT, decision.reason, boot_id=self.system.boot_id(),
                     trial_deadline=deadline.isoformat())
        elif decision.phase is P.ROLLED_BACK:
            self._rolled_back(decision.reason, decision.failed_counts)
        elif decision.phase is P.COMMITTED:
            self._to(P.COMMITTED, decision.reason)
        else:
            self._to(decision.phase, decision.reason, failed_counts=decision.failed_counts)

    def offer(self, offer: Offer | None, running: str | None, retry_failed: bool) -> Refusal | None:
        """A verified assignment (None: nothing assigned) while ``running`` runs. Starts a
        job or says why not."""
        with self._lock:
            self.force_reboot = bool(offer and offer.force_reboot)
            wanted = None if offer is None or offer.version == running else offer
            if self.job.active:
                if wanted is not None and wanted.version == self.job.version:
                    return None
                if self.job.phase in _CANCELLABLE:
                    self._to(P.FAILED, f"superseded by release {wanted.version}" if wanted
                             else "assignment withdrawn before the reboot")
                    self._forget_download()
                elif wanted is None:
                    return None
                else:
                    return Refusal("update_in_progress", f"release {self.job.version} is {self.job.phase} and not "
                                   f"committed; {wanted.version} waits until it is committed or rolled back")
            if wanted is None:
                return None
            offer = wanted
            failed_under = self.failed.get(offer.version)
            if failed_under is not None and not (retry_failed and self.failed_under > failed_under):
                return Refusal("release_failed_before", f"release {offer.version} failed on this device before; "
                               "assign it again with retry to try once more")
            self.job = self.job.start(offer.version, offer.counter, offer.sha256, offer.length, self.clock.now(),
                                      previous=running)
            self.failed.pop(offer.version, None)
            self.save(self.job, self.failed)
            log.info("update %s: downloading", offer.version)
            return None

    def revert(self, version: str) -> Action | Refusal:
        """Go back to ``version``, the release that ran before the last committed update and
        is still in the other, good slot: no download, just the other slot first again."""
        with self._lock:
            job = self.job
            _, env = self._env()
            if job.phase is P.REVERTED and job.version == version:
                return Action.WAIT
            if job.phase is not P.COMMITTED or job.previous_version != version or job.from_slot is None \
                    or job.from_slot not in env.good or self.system.booted() != job.to_slot:
                return Refusal("cannot_revert", f"release {version} is not in a good slot to go back to "
                               f"(update {job.version} is {job.phase})")
            self._to(P.REVERTING, f"operator: back to {version}", version=version, from_slot=job.to_slot,
                     to_slot=job.from_slot, previous_version=job.version)
        return Action.CONTINUE  # step() switches the slot and asks for the reboot

    def _switch_back(self) -> Action:
        slot = self._target()
        self._write_env(lambda env: env.commit(slot))
        self.system.reboot(f"reverting to {self.job.version} in slot {slot}")
        return Action.REBOOTING

    def step(self, download: Callable[[], Path | Delivery]) -> Action:
        """One action of the current phase. ``download`` fetches and verifies the image
        (a Delivery says how: delta, index or full, and the bytes it saved).

        Raises TransportError when the download cannot reach any mirror (retry later). A
        download its window ends (``download_stop``) keeps what arrived and waits.
        """
        phase = self.job.phase
        now = self.clock.now()
        if phase is P.DOWNLOADING:
            if not (self.force_reboot or self.policy.download.is_open(now)):
                return Action.WAIT
            try:
                got = download()
            except TransportError:
                if self.force_reboot or self.policy.download.is_open(self.clock.now()):
                    raise
                log.info("download of %s paused: its window closed; the next window resumes it", self.job.version)
                return Action.WAIT
            except UpdateRefused as exc:
                self._to(P.FAILED, f"download refused: {exc.message}")
                return Action.WAIT
            except PersistError as exc:  # e.g. a full disk: nothing was applied; the next offer tries again
                self._to(P.FAILED, f"download failed: {exc.message}")
                return Action.WAIT
            if isinstance(got, Delivery):
                self._to(P.DOWNLOADED, download=str(got.path), delivery=got.report())
            else:
                self._to(P.DOWNLOADED, download=str(got))
            return Action.CONTINUE
        if phase is P.DOWNLOADED:
            if not (self.force_reboot or self.policy.install.is_open(now)):
                return Action.WAIT
            booted = self.system.booted()
            self._to(P.INSTALLING, from_slot=booted, to_slot="b" if booted == "a" else "a")
            return Action.CONTINUE
        if phase is P.INSTALLING:
            return self._install()
        if phase in (P.INSTALLED, P.WAITING_WINDOW):
            if self.force_reboot or self.policy.install.is_open(now):
                self._to(P.REBOOTING, "forced by the operator" if self.force_reboot else "maintenance window open")
                return Action.CONTINUE
            if phase is P.INSTALLED:
                opens = self.policy.install.next_open(now)
                self._to(P.WAITING_WINDOW, f"reboot waits for the window at {opens.isoformat()}")
            return Action.WAIT
        if phase is P.REBOOTING:
            return self._reboot_into_trial()
        if phase is P.TRIAL_BOOT:
            self._to(P.HEALTH_CHECKING)
            return Action.CONTINUE
        if phase is P.HEALTH_CHECKING:
            return self._health_check()
        if phase is P.ATTESTING:
            if self.attestation:
                return Action.ATTEST
            return self._commit("no TPM: committed on health checks alone")
        if phase is P.ROLLING_BACK:
            return self._roll_back()
        if phase is P.REVERTING:
            return self._switch_back()
        return Action.WAIT

    def download_stop(self, stopped: StopSignal) -> StopSignal:
        """What ends a download early: ``stopped`` (the agent stops), and the download
        window it begins in closing, unless the operator forced the update."""
        closes = None if self.force_reboot else self.policy.download.closes_at(self.clock.now())
        return stopped if closes is None else WindowStop(stopped, closes, self.clock)

    def attestation_result(self, passed: bool) -> Action:
        with self._lock:
            if self.job.phase is not P.ATTESTING:
                return Action.WAIT
            if passed:
                return self._commit("health checks and attestation passed")
            self._to(P.ROLLING_BACK, ATTESTATION_ROLLBACK, failed_counts=True)
            return Action.CONTINUE

    def trial_expired(self) -> Action:
        """The watchdog: the trial has run past its deadline."""
        with self._lock:
            if self.job.phase not in TRIAL:
                return Action.WAIT
            self._to(P.ROLLING_BACK, f"trial deadline of {self.trial_seconds:g}s passed", failed_counts=True)
            self._cancel.set()
        return self._roll_back()

    def shutdown(self) -> None:
        """The agent stops: running health checks end now and are not judged (a check
        killed by the shutdown says nothing of the release); the trial resumes at the next
        start, as after a power cut."""
        self._stopping.set()
        self._cancel.set()

    def trial_remaining(self) -> float | None:
        if self.job.phase not in TRIAL or self.job.trial_deadline is None:
            return None
        return (datetime.fromisoformat(self.job.trial_deadline) - self.clock.now()).total_seconds()

    # Actions
    def _target(self) -> SlotName:
        if self.job.to_slot is None:
            raise PersistError(f"update job in phase {self.job.phase} names no target slot", code="corrupt_job")
        return self.job.to_slot

    def _install(self) -> Action:
        job, slot = self.job, self._target()
        assert job.download is not None
        try:
            self._write_env(lambda env: env.mark_bad(slot))
            write_slot(Path(job.download), self.system.slot_device(slot), job.length, job.sha256,
                       self.system.slot_size(slot))
            self.system.stage_boot(slot, job.length)
        except (InstallError, PersistError) as exc:
            self._end(P.FAILED, f"install failed: {exc.message}", failed_counts=True)
            return Action.WAIT
        self._to(P.INSTALLED, f"slot {slot} written and re-verified")
        return Action.CONTINUE

    def _reboot_into_trial(self) -> Action:
        slot = self._target()
        if not (self.force_reboot or self.policy.install.is_open(self.clock.now())):
            self._to(P.WAITING_WINDOW, "the window closed before the reboot")
            return Action.WAIT
        self._write_env(lambda env: env.start_trial(slot))
        self.system.reboot(f"trial boot of {self.job.version} in slot {slot}")
        return Action.REBOOTING

    def _health_check(self) -> Action:
        try:
            checks = parse_checks(self.system.image_health_checks()) + self.checks
        except EdgefleetError as exc:
            self._to(P.ROLLING_BACK, f"the image's health checks are malformed: {exc.message}", failed_counts=True)
            return Action.CONTINUE
        results = run_checks(checks, self._cancel, self.workloads_probe)
        if self._stopping.is_set():
            return Action.WAIT
        self.last_checks = [r.summary() for r in results]
        failure = verdict(results)
        with self._lock:
            if self.job.phase is not P.HEALTH_CHECKING:
                return Action.CONTINUE  # the watchdog got there first
            if failure is not None:
                self._to(P.ROLLING_BACK, failure, failed_counts=True)
            else:
                wanted = [r.name for r in results if not r.passed]
                self._to(P.ATTESTING, f"{len(results)} checks passed" if not wanted
                         else f"required checks passed; wanted checks failed: {', '.join(wanted)}")
        return Action.CONTINUE

    def _commit(self, reason: str) -> Action:
        slot = self._target()
        self._write_env(lambda env: env.commit(slot))
        self._to(P.COMMITTED, reason)
        self._forget_download()
        return Action.WAIT

    def _roll_back(self) -> Action:
        job, slot = self.job, self._target()
        if self.system.booted() == job.from_slot:
            self._rolled_back(job.reason, job.failed_counts)  # cleans the environment itself
            return Action.WAIT
        self._write_env(lambda env: env.mark_bad(slot))
        self.system.reboot(f"rolling back to slot {job.from_slot}: {job.reason}")
        return Action.REBOOTING

    def _rolled_back(self, reason: str | None, failed_counts: bool) -> None:
        to_slot = self.job.to_slot
        if to_slot is not None:
            self._write_env(lambda env: env.mark_bad(to_slot))
        self._end(P.ROLLED_BACK, reason, failed_counts=failed_counts)

    def _end(self, phase: Phase, reason: str | None, *, failed_counts: bool) -> None:
        """End the job. A release that failed on its own account is remembered in the same
        save as the transition (a crash cannot keep one without the other); its download goes."""
        if failed_counts and self.job.version is not None:
            self.failed[self.job.version] = self.failed_under
        self._to(phase, reason, failed_counts=failed_counts)
        self._forget_download()

    def _forget_download(self) -> None:
        if self.job.download:
            Path(self.job.download).unlink(missing_ok=True)


def write_slot(image: Path, device: Path, length: int, sha256: str, capacity: int) -> None:
    """Stream ``image`` into ``device``, flush it to stable storage, then read back what the
    slot holds and check it against the signed length and hash.

    Raises InstallError (too big, short image, I/O error, or a hash mismatch).
    """
    if length > capacity:
        raise InstallError(f"image of {length} bytes does not fit the {capacity}-byte slot")
    try:
        with open(image, "rb") as source, open(device, "r+b") as target:
            written = 0
            while chunk := source.read(CHUNK):
                target.write(chunk)
                written += len(chunk)
            if written != length:
                raise InstallError(f"image is {written} bytes, the release says {length}")
            target.flush()
            os.fsync(target.fileno())
        digest = hashlib.sha256()
        with open(device, "rb") as slot:
            remaining = length
            while remaining and (chunk := slot.read(min(CHUNK, remaining))):
                digest.update(chunk)
                remaining -= len(chunk)
    except OSError as exc:
        raise InstallError(f"writing the slot failed: {exc.strerror or exc}") from exc
    if remaining or digest.hexdigest() != sha256:
        raise InstallError("the written slot does not hash to the signed release")
