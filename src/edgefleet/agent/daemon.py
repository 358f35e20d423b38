"""The agent's main loop: enroll once, then check in, apply, and report, until stopped.

The loop composes the agent's parts: ``Enrollment`` (its identity), ``TelemetryLink``
(the buffer and its shipping), ``Configuration`` (what runs of the desired state),
``UpdateDriver`` (taking a release) and ``HealthMonitor`` (the verdict every report
carries). Every change of durable state is persisted before it is acted on: the status
sequence number is saved before a report is sent, so a crash can never make the agent
reuse one.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from typing import Any

from edgefleet import __version__
from edgefleet.agent import device_health
from edgefleet.agent.abupdate import UpdateRunner
from edgefleet.agent.attestor import AttestingTpm, Attestor, reattest_margin
from edgefleet.agent.configuration import Configuration, usable
from edgefleet.agent.device_health import HealthMonitor, HealthSources, configured_checks, device_checks
from edgefleet.agent.enrollment import Enrollment, TransportFactory, https_transport
from edgefleet.agent.hardware.interfaces import ABSystem, Platform
from edgefleet.agent.refusals import log_level, refusal_hint
from edgefleet.agent.remote import RemoteAccess
from edgefleet.agent.renewal import CertificateRenewer
from edgefleet.agent.settings import AgentSettings
from edgefleet.agent.state import AgentState, StateDir
from edgefleet.agent.stopping import Stopped, poll_desired, until_stopped
from edgefleet.agent.telemetry_link import TelemetryLink
from edgefleet.agent.update_driver import UpdateDriver, best_effort, update_client, update_report, update_runner
from edgefleet.agent.updates import UpdateClient
from edgefleet.agent.workload_tokens import TokenKeeper
from edgefleet.clock import Clock, SystemClock
from edgefleet.errors import ServerRefused, Throttled, TransportError
from edgefleet.protocol.v1 import StatusAck, StatusReport
from edgefleet.util.aio import pause, relay
from edgefleet.util.backoff import Backoff, jittered
from edgefleet.web.device_client import DeviceTransport
from edgefleet.workloads.supervisor import Supervisor

log = logging.getLogger("edgefleet.agent")


class Agent:
    def __init__(
        self, settings: AgentSettings, platform: Platform, *, site: str, labels: dict[str, str] | None = None,
        transport_factory: TransportFactory = https_transport, clock: Clock | None = None,
        rng: random.Random | None = None, tpm: AttestingTpm | None = None, system: ABSystem | None = None,
        capture_logs: bool = False,
    ) -> None:
        self.settings = settings
        self.platform = platform
        self.site = site
        self.labels = labels or {}
        self.dir = StateDir(settings.state_dir)
        self._transport_factory = transport_factory
        self.clock = clock or SystemClock()
        self.renewer = CertificateRenewer(self.dir, self.clock, settings.certificate_renew_before_seconds)
        self.rng = rng or random.Random()
        self.device_id: str | None = None
        self.checkins = 0
        self.reports = 0
        self.last_error: str | None = None
        self.last_contact: float | None = None  # unix time of the last check-in the control plane answered
        self.last_refused = False  # the last error was the server's answer (it is reachable), not the link
        self.tpm = tpm
        self.attestor = (Attestor(tpm, settings.event_log or platform.event_log(), settings.ek_certificate_file)
                         if tpm is not None else None)
        self.system = system
        self._attested: bool | None = None
        self.health: HealthMonitor | None = None  # while the agent runs
        self.untrusted: str | None = None  # why this device cannot verify what the server sends (fail closed)
        self.updates: UpdateClient | None = None
        self.runner: UpdateRunner | None = None
        self.driver: UpdateDriver | None = None  # with the TUF roots: the device takes releases
        self.telemetry = TelemetryLink(settings, self.dir, self.rng, site=site, capture_logs=capture_logs)
        self.configuration = Configuration(settings, settings.os_config_dir or platform.os_config_dir(), self.clock,
                                           on_unsigned=self._wake_health)
        self._next_attest = 0.0  # monotonic time of the next quote
        self.remote = RemoteAccess(settings.remote_access_policy)  # sessions an operator opened

    @property
    def attested(self) -> bool | None:
        """The result of the last attestation, None before one."""
        return self._attested

    @attested.setter
    def attested(self, value: bool | None) -> None:
        changed, self._attested = value != self._attested, value
        if changed:
            self._wake_health()  # a failed quote makes the device unhealthy now, not at the next round
        if changed and self.configuration.tokens is not None:
            self.configuration.tokens.wake.set()  # tokens once attested, none once a quote failed

    @property
    def rebooting(self) -> bool:
        """A reboot was requested; the agent has stopped for it."""
        return self.driver is not None and self.driver.rebooting

    def _wake_health(self) -> None:
        if self.health is not None:
            self.health.wake.set()

    def _note_error(self, error: str) -> None:
        self.last_error = error

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set.

        Raises:
            ServerRefused: enrollment was refused (bad or used token, site mismatch,
                hardware id already enrolled); retrying cannot help, an operator must act.
                Or the device was decommissioned (code ``decommissioned``): its credentials
                were erased first.
            ConfigError, PersistError: the agent cannot keep its state.
        """
        self.dir.path.mkdir(parents=True, exist_ok=True)
        if await asyncio.to_thread(self.dir.recover_renewal):
            log.info("finished a certificate renewal a stop interrupted")
        state = self.dir.load()
        halt = asyncio.Event()  # ``stop``, or a reboot the agent asked for
        forward = asyncio.ensure_future(relay(stop, halt))
        local = None
        if self.settings.local_ui:
            # Only a device that serves the technician's page pays for its web stack.
            from edgefleet.agent.localui import serve_local_ui

            local = asyncio.ensure_future(serve_local_ui(self.local_view, self.settings.local_ui,
                                                         self.settings.local_ui_token_file, halt))

        async def close_page() -> None:
            """The page reads the telemetry buffer and the update state: it closes first."""
            if local is not None:
                halt.set()
                await asyncio.gather(local, return_exceptions=True)

        try:
            enrollment = Enrollment(self.settings, self.platform, self.dir, self.renewer, self._transport_factory,
                                    self.rng, site=self.site, labels=self.labels, note_error=self._note_error)
            if state.device_id is None or not self.dir.cert.exists():
                state = await enrollment.enroll(state, halt)
            elif self.renewer.expired():
                await enrollment.reenroll(state, halt)
            self.device_id = state.device_id
            transport = self._transport_factory(self.settings, self.dir, True)
            self._take_releases(state, transport)
            recorder = await self.telemetry.start(self._device(state), transport, halt)
            configuration = self.configuration
            configuration.workloads = workloads = Supervisor(
                self.dir.path / "workloads" / "data", self.dir.path / "workloads" / "logs", self.rng,
                on_line=lambda name, line: recorder.log("info", f"workload/{name}", line))
            if self.tpm is not None and self.updates is not None:
                configuration.tokens = TokenKeeper(workloads.data_dir, self.clock.monotonic, self.rng,
                                                   self.settings.backoff_initial_seconds,
                                                   self.settings.backoff_max_seconds)
            try:
                if self.runner is not None and self.updates is not None:
                    self.runner.workloads_probe = configuration.workloads_probe(state, asyncio.get_running_loop())
                    # The workloads start before a trial boot's health checks, which may wait for them.
                    await configuration.apply_workloads(state, self.updates)
                    configuration.mark_applied(state, self.updates)  # what it runs after a restart, it has acted on
                    await asyncio.to_thread(self.runner.resume)
                await self._loop(state, transport, halt)
            finally:
                await close_page()
                await workloads.close()
                await self._stop_telemetry(self.telemetry)
                await transport.aclose()
                if self.updates is not None:
                    self.updates.close()
        except Stopped:
            pass
        except ServerRefused as exc:
            if exc.code != "decommissioned":
                raise
            await asyncio.to_thread(self.dir.erase_credentials)
            log.error("%s was decommissioned: its keys, certificates and state are erased; the agent stops "
                      "(it enrolls again only as a new device, with a new bootstrap token)", self.device_id)
            raise
        finally:
            forward.cancel()
            await close_page()
        log.info("agent %s stopped%s", self.device_id or "(not enrolled)", " for a reboot" if self.rebooting else "")

    @staticmethod
    def _device(state: AgentState) -> str:
        assert state.device_id is not None
        return state.device_id

    def _take_releases(self, state: AgentState, transport: DeviceTransport) -> None:
        """The update client, installer and driver, when the image ships the TUF roots."""
        self.updates, self.untrusted = update_client(self.settings, self.platform, self.dir, state)
        if self.updates is None:
            return
        self.runner = update_runner(self.settings, self.system, self.clock, self.dir, state,
                                    configured_checks(self.settings), attestation=self.tpm is not None)
        device_id = self._device(state)
        self.driver = UpdateDriver(self.updates, self.runner, self.platform, self.system, self.dir,
                                   report=lambda s: self._report(s, transport),
                                   attest=(lambda: self._attest(transport, device_id)) if self.attestor else None)

    async def _attest(self, transport: DeviceTransport, device_id: str) -> bool:
        """Quote; the verdict becomes the device's ``attested``."""
        assert self.attestor is not None
        self.attested = await self.attestor.attest(transport, device_id)
        return self.attested

    async def _stop_telemetry(self, telemetry: TelemetryLink) -> None:
        await telemetry.stop()

    async def _loop(self, state: AgentState, transport: DeviceTransport, stop: asyncio.Event) -> None:
        self.health = HealthMonitor(self._health_sources(state), self.settings.health_interval_seconds)
        watch_health = self.health.run(stop, lambda verdict: self._health_changed(verdict, state, transport, stop))
        helpers = [asyncio.ensure_future(watch_health)]
        tokens = self.configuration.tokens
        if tokens is not None:
            helpers.append(asyncio.ensure_future(tokens.run(transport, self._device(state), lambda: self.attested)))
        if self.driver is not None:
            helpers.append(asyncio.ensure_future(self.driver.forward_stop(stop)))
            if self.runner is not None:
                helpers.append(asyncio.ensure_future(self.driver.watchdog(state, stop)))
        try:
            self.remote.keep_own_log()
            await self._check_in_until(stop, state, transport)
        finally:
            await self.remote.close()  # their processes end before the transport closes
            # However the loop ends (a stop, a reboot, an error), its helpers end with it:
            # none may outlive the telemetry buffer and the transport they use.
            for helper in helpers:
                helper.cancel()
            for outcome in await asyncio.gather(*helpers, return_exceptions=True):
                # A helper that was reporting when the loop ended (a reboot, a stop) ends
                # with Stopped: expected, not a failure.
                if isinstance(outcome, Exception) and not isinstance(outcome, Stopped):
                    log.error("agent task failed: %s", outcome, exc_info=outcome)

    async def _health_changed(self, verdict: device_health.Verdict, state: AgentState, transport: DeviceTransport,
                              stop: asyncio.Event) -> None:
        """Logged, and reported at once: a rollout baking on this device must not wait a poll."""
        log.log(logging.INFO if verdict.state == "healthy" else logging.WARNING, "health: %s", verdict.summary())
        if self.telemetry.recorder is not None:
            self.telemetry.recorder.event("health", state=verdict.state, failing=[f.name for f in verdict.findings])
        await best_effort(self._report(state, transport), stop)

    def _health_sources(self, state: AgentState) -> HealthSources:
        configuration = self.configuration
        return HealthSources(checks=lambda: device_checks(self.settings, self.system),
                             workloads=lambda: configuration.workload_statuses() or [],
                             buffer=self.telemetry.buffer_use, attested=lambda: self.attested,
                             state_dir=self.dir.path, untrusted=lambda: self.untrusted,
                             unsigned=lambda: configuration.unsigned,
                             invalid_workloads=lambda: configuration.invalid_workloads,
                             probe=self.runner.workloads_probe if self.runner is not None else None)

    async def _check_in_until(self, stop: asyncio.Event, state: AgentState, transport: DeviceTransport) -> None:
        """Check in, report, attest and drive updates until ``stop``."""
        settings, driver, configuration, attestor = self.settings, self.driver, self.configuration, self.attestor
        device_id = self._device(state)
        backoff = Backoff(settings.backoff_initial_seconds, settings.backoff_max_seconds, self.rng)
        next_report = self.clock.monotonic()  # report right away after (re)start
        next_update = self.clock.monotonic()
        identity_bound = False
        self._next_attest = self.clock.monotonic()  # attest at every (re)start: every boot
        while not stop.is_set():
            try:
                # Status goes out first: the server judges quotes against the release the
                # device reports, and when configuration is refused (a quarantined
                # device), that is exactly when operators need to see it.
                if self.clock.monotonic() >= next_report:
                    await until_stopped(self._report(state, transport), stop)
                    next_report = self.clock.monotonic() + settings.status_interval_seconds
                if attestor is not None and self.clock.monotonic() >= self._next_attest:
                    if not identity_bound:
                        await until_stopped(attestor.enroll(transport, device_id), stop)
                        identity_bound = True
                    await until_stopped(self._attest(transport, device_id), stop)
                    self._next_attest = (self.clock.monotonic()
                                         + settings.attestation_interval_seconds * self.rng.uniform(0.85, 1.0))
                    await until_stopped(self._report(state, transport), stop)
                if driver is not None and self.runner is not None and self.runner.job.active and \
                        await driver.drive(state, stop):
                    await until_stopped(self._report(state, transport), stop)
                if stop.is_set():
                    break
                workloads = configuration.workloads
                desired, failed = await poll_desired(transport, device_id, state.desired_version,
                                                     settings.long_poll_seconds,
                                                     None if workloads is None else workloads.failed, stop)
                if failed:
                    next_report = self.clock.monotonic()
                self.checkins += 1
                self.last_contact = time.time()
                if desired is not None and desired.sessions:
                    self.remote.start(transport, device_id, desired.sessions)
                if desired is not None and desired.document is not None:
                    state.desired, configuration.invalid_desired = usable(desired.document)
                    state.desired_version = desired.version
                    self.dir.save(state)
                    log.info("received desired state version %d%s", desired.version,
                             f", not applied: {self.untrusted}" if self.untrusted else "")
                    next_report = next_update = self.clock.monotonic()
                if driver is not None and self.updates is not None and self.clock.monotonic() >= next_update:
                    before = (state.update_state, state.update_error)
                    await driver.check(state)
                    await asyncio.to_thread(configuration.apply_os_config, state, self.updates)  # verified
                    await configuration.apply_workloads(state, self.updates)
                    if configuration.mark_applied(state, self.updates):
                        await configuration.apply_manifests(state.desired.get("config"))
                    next_update = self.clock.monotonic() + settings.update_check_seconds
                    if self.runner is not None and self.runner.job.active:
                        await driver.drive(state, stop)
                    if (state.update_state, state.update_error) != before:
                        next_report = self.clock.monotonic()
                if self.clock.monotonic() >= next_report and not stop.is_set():
                    await until_stopped(self._report(state, transport), stop)
                    next_report = self.clock.monotonic() + settings.status_interval_seconds
                if not stop.is_set() and (attestor is None or self.attested) and self.renewer.due():
                    await self._renew(device_id, transport, stop)
                backoff.reset()
                self.last_error = None
                delay = (jittered(settings.checkin_interval_seconds, self.rng) if settings.long_poll_seconds == 0
                         else self.rng.uniform(0, 1))
            except (TransportError, ServerRefused) as exc:
                if isinstance(exc, ServerRefused) and exc.code == "decommissioned":
                    raise  # the end of this device's identity: run() erases it
                delay = self._failed(exc, backoff, has_tpm=attestor is not None)
            await pause(stop, delay)

    def _failed(self, exc: TransportError | ServerRefused, backoff: Backoff, *, has_tpm: bool) -> float:
        """A check-in round failed: note and log it (once while it repeats: edge disks and
        links are small); the delay before the next round."""
        hint = refusal_hint(exc, has_tpm=has_tpm)
        repeated = self.last_error == str(exc) + hint
        self.last_error = str(exc) + hint  # the technician's page shows it too
        self.last_refused = isinstance(exc, ServerRefused)
        delay = max(backoff.next_delay(), exc.retry_after if isinstance(exc, Throttled) else 0.0)
        if isinstance(exc, ServerRefused) and exc.code == "attestation_required" and has_tpm:
            self._next_attest = self.clock.monotonic()  # it lapsed: attest again now, then go on
        level = logging.DEBUG if repeated else log_level(exc, has_tpm=has_tpm)
        log.log(level, "check-in failed, retrying in %.1fs: %s%s", delay, exc, hint)
        return delay

    async def _renew(self, device_id: str, transport: DeviceTransport, stop: asyncio.Event) -> None:
        """Renew the certificate (a refusal is retried later; a network failure goes to the
        check-in's backoff)."""
        own = self.telemetry.transport
        try:
            await until_stopped(self.renewer.renew(device_id, [transport] + ([own] if own is not None else [])), stop)
        except ServerRefused as exc:
            self.renewer.refused(exc)

    def _attest_ahead(self, ack: StatusAck) -> None:
        """Re-attest before the server's freshness runs out (``reattest_margin``); an
        update's quote takes the challenge that came with the report before it."""
        if self.attestor is not None:
            self.attestor.offer(ack.challenge)
        expires_in = ack.attestation_expires_in_seconds
        if expires_in is None or self.tpm is None or self.attested is not True:
            return  # no freshness required, no TPM, or quarantined (its quotes are judged on schedule)
        settings = self.settings
        margin = reattest_margin(settings.status_interval_seconds
                                 + (settings.long_poll_seconds or settings.checkin_interval_seconds), self.rng)
        self._next_attest = min(self._next_attest, self.clock.monotonic() + max(0.0, expires_in - margin))

    def _details(self, state: AgentState) -> dict[str, object]:
        details: dict[str, object] = {"agent_version": __version__}
        if self.attested is not None:
            details["attestation"] = "passed" if self.attested else "failed"
        if state.update_error:
            details["update_error"] = state.update_error
        if self.untrusted:
            details["config_refused"] = self.untrusted
        return details

    def local_view(self) -> dict[str, Any]:
        """What the technician's page shows, from the agent alone (the uplink may be down)."""
        state = self.dir.load()
        report = update_report(self.runner, self.system, state)
        return {
            "device_id": state.device_id, "site": self.site, "os_version": self.platform.os_version(),
            "desired_version": state.desired_version, "applied": self.configuration.applied,
            "update_state": state.update_state, "update_error": state.update_error,
            "update_refused": state.update_refused,
            "update": None if report is None else report.model_dump(mode="json", exclude={"events", "health_checks"}),
            "history": [] if report is None else [e.model_dump(mode="json") for e in reversed(report.events)],
            "health_checks": [] if report is None else report.health_checks,
            "attested": self.attested, "checkins": self.checkins, "last_contact": self.last_contact,
            "last_error": self.last_error, "last_refused": self.last_refused,
            "telemetry": self.telemetry.local_view(), "logs": self.telemetry.recent_logs(),
            "remote_sessions": [o.model_dump(include={"id", "verb", "read_only"}) for o in self.remote.open.values()],
        }

    async def _report(self, state: AgentState, transport: DeviceTransport) -> None:
        device_id = self._device(state)
        await self.telemetry.record(state.update_state, state.update_error)
        verdict = self.health.verdict if self.health is not None else None
        applied = self.configuration.applied
        for _ in range(2):
            state.status_seq += 1
            self.dir.save(state)
            report = StatusReport(
                seq=state.status_seq,
                running_version=self.platform.os_version(),
                health=verdict.state if verdict is not None else "unknown",
                health_findings=list(verdict.findings) if verdict is not None else [],
                update_state=state.update_state,
                desired_version_applied=applied if applied >= 0 else None,
                details=self._details(state),
                update=update_report(self.runner, self.system, state),
                config=self.configuration.report(state),
                workloads=self.configuration.workload_statuses(),
                challenge=self.attestor is not None and self.driver is not None and self.driver.quotes_next(),
            )
            ack = await transport.report_status(device_id, report)
            self.reports += 1
            self._attest_ahead(ack)
            if self.driver is not None:
                self.driver.reported()
            self.configuration.reported(state)
            if ack.accepted or ack.seq < state.status_seq:
                return
            # The server has seen a higher seq than ours (state restored from an old
            # backup): continue above it rather than being ignored forever.
            log.warning("server holds status seq %d above ours (%d); skipping ahead", ack.seq, state.status_seq)
            state.status_seq = ack.seq
