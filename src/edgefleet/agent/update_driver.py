"""Taking a release: verify what the director assigns, hand it to the A/B installer, and
drive the installer (download, install, reboot, trial, attestation, commit or rollback),
reporting each phase as it starts."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from edgefleet.agent.abupdate import Action, Offer, Refusal, UpdateRunner
from edgefleet.agent.configuration import director_signed
from edgefleet.agent.delivery import Delivery
from edgefleet.agent.fetcher import https_client
from edgefleet.agent.hardware.interfaces import ABSystem, Platform
from edgefleet.agent.health import HealthCheck
from edgefleet.agent.settings import AgentSettings
from edgefleet.agent.state import AgentState, StateDir
from edgefleet.agent.stopping import Stopped, until_stopped
from edgefleet.agent.update_flow import Phase, UpdateJob
from edgefleet.agent.updates import TrustAnchors, UpdateClient, UpdatePlan
from edgefleet.clock import Clock
from edgefleet.errors import ConfigError, InvalidRequest, ServerRefused, TransportError, UpdateRefused
from edgefleet.protocol.v1 import UpdateDelivery, UpdateEvent, UpdateReport
from edgefleet.protocol.windows import MaintenancePolicy
from edgefleet.releases.instructions import PLAIN
from edgefleet.util.aio import pause

log = logging.getLogger("edgefleet.agent")

REBOOT_REPORT_SECONDS = 5.0  # the report before a reboot waits no longer


def update_client(settings: AgentSettings, platform: Platform, state_dir: StateDir,
                  state: AgentState) -> tuple[UpdateClient | None, str | None]:
    """The client of the signed repositories, or None and why not. Signed updates need the
    TUF roots that ship in the OS image; without them the agent still checks in, reports
    and attests, but acts on nothing the server sends: no configuration, no workloads, no
    workload token (fail closed)."""
    assert state.device_id is not None
    trust = settings.trust_dir or platform.trust_dir()
    image_root, director_root = trust / "image-root.json", trust / "director-root.json"
    if not image_root.exists() and not director_root.exists():
        untrusted = f"no TUF roots in {trust}"
        log.error("%s: this device applies no configuration, runs no workloads and holds no workload token "
                  "(fail closed) until its image ships the roots", untrusted)
        return None, untrusted
    try:
        anchors = TrustAnchors.load(image_root, director_root)
    except UpdateRefused as exc:
        untrusted = f"TUF roots unusable: {exc.message}"
        log.error("%s: no configuration, workloads or tokens (fail closed)", untrusted)
        state.update_state, state.update_error = "refused", exc.code
        state_dir.save(state)
        return None, untrusted
    timeout = settings.request_timeout_seconds
    return UpdateClient(
        device_id=state.device_id,
        hardware_type=settings.hardware_type or platform.hardware_type(),
        state_dir=state_dir.path,
        anchors=anchors,
        director_url=f"{settings.server_url.rstrip('/')}/api/v1/devices/{state.device_id}/director",
        director_tls=https_client(state_dir.ca, state_dir.cert, state_dir.key, timeout),
        mirrors=settings.mirrors or [f"{settings.server_url.rstrip('/')}/repository"],
        mirror_tls=https_client(state_dir.ca, state_dir.cert, state_dir.key, timeout, system_cas=True),
    ), None


def update_runner(settings: AgentSettings, system: ABSystem | None, clock: Clock, state_dir: StateDir,
                  state: AgentState, checks: list[HealthCheck], *, attestation: bool) -> UpdateRunner | None:
    """The A/B installer, when the device has slots (emulated or configured)."""
    if system is None:
        log.info("no A/B slots: releases are verified but not installed")
        return None

    def save(job: UpdateJob, failed: dict[str, int]) -> None:
        state.update, state.failed_releases, state.update_state = job.dump(), dict(failed), str(job.phase)
        state_dir.save(state)

    return UpdateRunner(
        system, clock, save, job=UpdateJob.load(state.update) if state.update else UpdateJob(),
        failed=dict(state.failed_releases), checks=checks, trial_seconds=settings.trial_deadline_seconds,
        attestation=attestation, failed_under=state.desired_version,
    )


async def best_effort(report: Awaitable[None], halt: asyncio.Event) -> None:
    """Send a report unless it cannot go out now (the next check-in reports it)."""
    try:
        await until_stopped(report, halt)
    except (TransportError, ServerRefused) as exc:
        log.debug("progress report not sent: %s", exc)


def update_report(runner: UpdateRunner | None, system: ABSystem | None, state: AgentState) -> UpdateReport | None:
    """The update job as a status report carries it (None on a device without slots)."""
    if runner is None:
        return None
    job = runner.job
    return UpdateReport(
        phase=str(job.phase), release=job.version, from_slot=job.from_slot, to_slot=job.to_slot,
        booted_slot=system.booted() if system is not None else None, reason=job.reason,
        refused=state.update_refused, failed_releases=sorted(runner.failed)[-64:],
        health_checks=runner.last_checks[:64],
        events=[UpdateEvent.model_validate(event) for event in job.history],
        delivery=None if job.delivery is None else UpdateDelivery.model_validate(job.delivery),
    )


class UpdateDriver:
    """``report`` sends a status report; ``attest`` quotes and returns the verdict."""

    def __init__(self, updates: UpdateClient, runner: UpdateRunner | None, platform: Platform,
                 system: ABSystem | None, state_dir: StateDir, *, report: Callable[[AgentState], Awaitable[None]],
                 attest: Callable[[], Awaitable[bool]] | None) -> None:
        self.updates, self.runner, self.platform, self.system, self.dir = updates, runner, platform, system, state_dir
        self.report, self.attest = report, attest
        self.rebooting = False  # a reboot was requested; the agent has stopped for it
        self.plan: UpdatePlan | None = None
        self.stop_downloads = threading.Event()
        self._reported_job_seq: int | None = None  # the update job's seq the server last saw

    def quotes_next(self) -> bool:
        """The trial's checks passed: the device quotes next (the report before it asks the
        server for the quote's challenge)."""
        return self.runner is not None and self.runner.job.phase is Phase.ATTESTING

    def reported(self) -> None:
        """A status report went out: the server has seen the job's current phase."""
        self._reported_job_seq = self.runner.job.seq if self.runner is not None else None

    async def check(self, state: AgentState) -> None:
        """Verify what the director assigns and hand it to the installer; refusals are
        reported, and the device keeps running what it has. How to take the release
        (force, retry, revert) is signed with it; when is the signed configuration's
        maintenance windows. Nothing unsigned in the desired state steers an update."""
        runner = self.runner
        try:
            plan = await asyncio.to_thread(self.updates.check, self.platform.release_counter())
        except UpdateRefused as exc:
            log.warning("update refused (%s): %s", exc.code, exc.message)
            state.update_error, state.update_refused = exc.code, f"{exc.code}: {exc.message}"[:1000]
            if runner is None or not runner.job.active:
                state.update_state = "refused"
            self.dir.save(state)
            return
        except TransportError as exc:
            log.warning("update check failed, will retry: %s", exc)
            return
        if plan is not None and plan.instructions.revert and plan.version != self.platform.os_version():
            # Going back to the slot that still holds it needs no download and no window.
            self.plan = None
            result = Refusal("cannot_revert", "this device has no A/B slots") if runner is None else \
                await asyncio.to_thread(runner.revert, plan.version)
            if isinstance(result, Refusal):
                log.warning("revert refused (%s): %s", result.code, result.message)
                state.update_error, state.update_refused = result.code, result.message
                self.dir.save(state)
            return
        self.plan = plan
        if runner is None:
            state.update_state, state.update_error = "idle" if plan is None else "verified", None
            self.dir.save(state)
            return
        self._take_signed_windows(state, runner)
        runner.failed_under = state.desired_version
        instructions = plan.instructions if plan is not None else PLAIN
        offer = None if plan is None else Offer(plan.version, plan.counter, plan.target.hashes["sha256"],
                                                plan.target.length, force_reboot=instructions.force_reboot)
        refusal = await asyncio.to_thread(runner.offer, offer, self.platform.os_version(), instructions.retry_failed)
        if refusal is not None:
            log.warning("update not started (%s): %s", refusal.code, refusal.message)
        state.update_error = None if refusal is None else refusal.code
        state.update_refused = None if refusal is None else refusal.message
        state.update_state = str(runner.job.phase)
        self.dir.save(state)

    def _take_signed_windows(self, state: AgentState, runner: UpdateRunner) -> None:
        """The maintenance windows of the director-signed configuration become the
        runner's; a configuration the director has not signed (yet, or ever) changes none."""
        config = state.desired.get("config")
        if not isinstance(config, dict):
            if self.updates.assigned_config() is None:
                runner.policy = MaintenancePolicy.parse(None)  # no configuration at all: no windows
            return  # the director signs a configuration this document lacks: keep the last windows
        if not director_signed(config, self.updates):
            return  # the configuration step reports it
        try:
            runner.policy = MaintenancePolicy.parse(config.get("maintenance"))
        except InvalidRequest as exc:
            log.error("maintenance windows in the signed configuration are invalid, keeping the last ones: %s",
                      exc.message)

    async def drive(self, state: AgentState, halt: asyncio.Event) -> bool:
        """Advance the A/B update as far as it goes now; returns whether anything changed.

        Raises TransportError (a download or attestation could not reach the server).
        """
        runner, updates = self.runner, self.updates
        assert runner is not None
        changed = False
        while not self.rebooting:
            seq = runner.job.seq
            plan = self.plan
            if runner.job.phase is Phase.DOWNLOADING and (plan is None or plan.version != runner.job.version):
                # After a restart the assignment is verified again (check) before the
                # download resumes; driving now would fail and hold that check back.
                break
            if seq != self._reported_job_seq:  # the server sees each phase before its work (a download takes minutes)
                await best_effort(self.report(state), halt)

            def download() -> Delivery:
                plan = self.plan
                if plan is None or plan.version != runner.job.version:
                    raise TransportError("the assignment is being re-verified")
                running = None
                if self.system is not None:
                    running = (self.system.slot_source(self.system.booted()), self.platform.os_version())
                return updates.download(plan, runner.download_stop(self.stop_downloads), running=running)

            action = await until_stopped(asyncio.to_thread(runner.step, download), halt)
            changed = changed or runner.job.seq != seq
            if action is Action.ATTEST:
                # The server checks the quote against the release the device says it runs.
                await until_stopped(self.report(state), halt)
                if self.attest is None:
                    raise ConfigError("attestation before commit needs a TPM")
                attested = await until_stopped(self.attest(), halt)
                action = await asyncio.to_thread(runner.attestation_result, attested)
                changed = True
            if action is Action.REBOOTING:
                await self.reboot(state, halt)
            if action is not Action.CONTINUE:
                break
        return changed

    async def reboot(self, state: AgentState, halt: asyncio.Event) -> None:
        """The OS goes down: tell the server (best effort, at most REBOOT_REPORT_SECONDS: a
        slow link or a loaded server must not hold a rollback back), then stop. The phase is
        on disk; the agent reports it again after the boot."""
        self.rebooting = True
        try:
            await asyncio.wait_for(self.report(state), REBOOT_REPORT_SECONDS)
        except (TransportError, ServerRefused, Stopped, TimeoutError) as exc:
            log.info("going down for the reboot without telling the server: %s", exc or "no answer in time")
        finally:
            halt.set()

    async def watchdog(self, state: AgentState, halt: asyncio.Event) -> None:
        """Rolls a trial back at its deadline, even while a health check hangs. It runs on a
        thread of its own: the shared pool may be busy (hung checks, downloads, and in the
        simulator many devices), and a deadline must not wait for a free worker."""
        runner = self.runner
        assert runner is not None
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgefleet-watchdog") as own:
            while not halt.is_set():
                remaining = runner.trial_remaining()
                if remaining is not None and remaining <= 0:
                    if await loop.run_in_executor(own, runner.trial_expired) is Action.REBOOTING:
                        await self.reboot(state, halt)
                    return
                await pause(halt, 1.0 if remaining is None else min(remaining, 1.0))

    async def forward_stop(self, stop: asyncio.Event) -> None:
        """Let a download or a health check running in a worker thread see the stop request."""
        await stop.wait()
        self.stop_downloads.set()
        if self.runner is not None:
            self.runner.shutdown()
