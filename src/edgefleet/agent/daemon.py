"""The agent's main loop: enroll once, then check in, apply, and report, until stopped.

Every change of durable state is persisted before it is acted on: the status sequence
number is saved before a report is sent, so a crash can never make the agent reuse one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pydantic import TypeAdapter, ValidationError

from edgefleet import __version__
from edgefleet.agent import device_health, osconfig
from edgefleet.agent.abupdate import Action, Offer, Refusal, UpdateRunner
from edgefleet.agent.attestor import AttestingTpm, Attestor
from edgefleet.agent.delivery import Delivery
from edgefleet.agent.device_health import HealthMonitor, HealthSources, health_d_checks, unit_checks
from edgefleet.agent.fetcher import https_client
from edgefleet.agent.hardware.interfaces import ABSystem, Platform
from edgefleet.agent.health import HealthCheck, Probe, parse_checks
from edgefleet.agent.renewal import CertificateRenewer
from edgefleet.agent.settings import AgentSettings
from edgefleet.agent.state import AgentState, StateDir
from edgefleet.agent.update_flow import Phase, UpdateJob
from edgefleet.agent.updates import TrustAnchors, UpdateClient, UpdatePlan
from edgefleet.agent.workload_tokens import TokenKeeper, wanted_tokens
from edgefleet.clock import Clock, SystemClock
from edgefleet.errors import (
    ConfigError,
    EdgefleetError,
    InvalidRequest,
    ServerRefused,
    Throttled,
    TransportError,
    UpdateRefused,
)
from edgefleet.pki import make_csr, new_device_key
from edgefleet.protocol.desired import DesiredDocument, known_parts
from edgefleet.protocol.hashing import canonical, declared_workloads, workload_part
from edgefleet.protocol.v1 import (
    ConfigReport,
    DesiredState,
    EnrollRequest,
    Inventory,
    StatusReport,
    UpdateDelivery,
    UpdateEvent,
    UpdateReport,
)
from edgefleet.protocol.windows import MaintenancePolicy
from edgefleet.protocol.workload_verdicts import Verdict, judge
from edgefleet.protocol.workloads import WorkloadSpec, WorkloadStatus
from edgefleet.releases.instructions import PLAIN
from edgefleet.telemetry.buffer import open_buffer
from edgefleet.telemetry.health import BufferHealth
from edgefleet.telemetry.recorder import Recorder, RecordingHandler
from edgefleet.telemetry.shipper import Shipper
from edgefleet.util.aio import pause
from edgefleet.util.backoff import Backoff, jittered
from edgefleet.web.device_client import DeviceTransport, HttpsTransport
from edgefleet.workloads.kubernetes import ManifestSync
from edgefleet.workloads.supervisor import Supervisor

log = logging.getLogger("edgefleet.agent")

# The parts of a desired state a device acts on: the release (which the director's signed
# metadata names again) and the configuration (which must be the director's signed config
# target). Anything else steers nothing.
SIGNED_PARTS = frozenset(DesiredDocument.model_fields)


def usable(document: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """The desired state as the agent keeps it: its release and configuration only when
    they are a valid ``DesiredDocument`` (the model the server writes with), else left out,
    with why. Anything else is kept, to be reported as ignored."""
    try:
        DesiredDocument.model_validate(known_parts(document))
    except ValidationError as exc:
        first = exc.errors()[0]
        why = f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
        return {k: v for k, v in document.items() if k not in SIGNED_PARTS}, why
    return document, None

T = TypeVar("T")
TransportFactory = Callable[[AgentSettings, StateDir, bool], DeviceTransport]


_SPEC: TypeAdapter[WorkloadSpec] = TypeAdapter(WorkloadSpec)
# a workload's kind as rendered -> as the supervisor runs it
_KINDS = {"WasmModule": "wasm", "MicroVM": "microvm", "NativeService": "native"}
REBOOT_REPORT_SECONDS = 5.0  # the report before a reboot waits no longer
REATTEST_SLACK_SECONDS = 30.0  # re-attest this much earlier than the next report and check-in need


def _declared(config: dict[str, Any]) -> tuple[list[tuple[Mapping[str, Any], WorkloadSpec]], list[str]]:
    """The workloads a configuration declares, each with its entry (its kind reads
    ``WasmModule`` or ``MicroVM`` there), and why any invalid ones are left out."""
    found: list[tuple[Mapping[str, Any], WorkloadSpec]] = []
    invalid = []
    for entry in declared_workloads(config):
        try:
            found.append((entry, _SPEC.validate_python({**entry, "kind": _KINDS.get(str(entry.get("kind")))})))
        except ValidationError as exc:
            invalid.append(f"{entry.get('name')}: {exc.errors()[0]['msg']}")
    return found, invalid


class _Stopped(Exception):
    """The stop event fired while the agent was waiting on the network."""


def https_transport(settings: AgentSettings, state_dir: StateDir, enrolled: bool) -> DeviceTransport:
    if enrolled:
        return HttpsTransport(settings.server_url, state_dir.ca, cert_file=state_dir.cert, key_file=state_dir.key,
                              timeout=settings.request_timeout_seconds)
    return HttpsTransport(settings.server_url, settings.ca_file, timeout=settings.request_timeout_seconds)


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
        self.updates: UpdateClient | None = None
        self.tpm = tpm
        self._attested: bool | None = None
        self.health: HealthMonitor | None = None  # while the agent runs
        self.untrusted: str | None = None  # why this device cannot verify what the server sends (fail closed)
        self.unsigned: str | None = None  # what the desired state holds that the director did not sign (ignored)
        self.invalid_desired: str | None = None  # why the last desired state's signed parts were left out
        self.system = system
        self.runner: UpdateRunner | None = None
        self.rebooting = False  # a reboot was requested; the agent has stopped for it
        self._reported_job_seq: int | None = None  # the update job's seq the server last saw
        self.workloads: Supervisor | None = None
        # Workload tokens: only on a device that attests and verifies what it runs.
        self.tokens: TokenKeeper | None = None
        self._workloads_changed: set[str] = set()  # workloads whose kept artifacts had changed on disk, unreported
        self._applied = -1  # the desired state version whose configuration the agent has acted on
        self.capture_logs = capture_logs  # the agent's own warnings into telemetry (one agent per process)
        self._log_handler: logging.Handler | None = None
        self._telemetry_transport: HttpsTransport | None = None
        self.recorder: Recorder | None = None
        self.last_contact: float | None = None  # unix time of the last check-in the control plane answered
        self.last_refused = False  # the last error was the server's answer (it is reachable), not the link
        self.shipper: Shipper | None = None
        self._reported_phase: str | None = None
        self.manifests = (ManifestSync(settings.kubernetes, settings.kubeconfig, settings.kubernetes_git_dir,
                                       settings.kubernetes_resync_seconds) if settings.kubernetes != "off" else None)
        self._plan: UpdatePlan | None = None
        self._stop_downloads = threading.Event()
        self._next_attest = 0.0  # monotonic time of the next quote

    @property
    def attested(self) -> bool | None:
        """The result of the last attestation, None before one."""
        return self._attested

    @attested.setter
    def attested(self, value: bool | None) -> None:
        changed, self._attested = value != self._attested, value
        if changed and self.health is not None:
            self.health.wake.set()  # a failed quote makes the device unhealthy now, not at the next round
        if changed and self.tokens is not None:
            self.tokens.wake.set()  # tokens once attested, none once a quote failed

    def _bootstrap_token(self) -> str:
        if self.settings.bootstrap_token:
            return self.settings.bootstrap_token
        if self.settings.bootstrap_token_file is not None:
            try:
                return self.settings.bootstrap_token_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read bootstrap token file: {exc}") from exc
        raise ConfigError("not enrolled and no bootstrap token configured")

    async def _until_stopped(self, call: Awaitable[T], stop: asyncio.Event) -> T:
        task = asyncio.ensure_future(call)
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise _Stopped

    async def _poll_desired(self, state: AgentState, transport: DeviceTransport,
                            stop: asyncio.Event) -> tuple[DesiredState | None, bool]:
        """Check in (a long poll): the new desired state if there is one, and whether a
        workload failed meanwhile (that ends the poll early, so it is reported at once)."""
        assert state.device_id is not None
        poll = asyncio.ensure_future(
            transport.fetch_desired(state.device_id, state.desired_version, self.settings.long_poll_seconds))
        failed = self.workloads.failed if self.workloads is not None else asyncio.Event()
        watcher = asyncio.ensure_future(failed.wait())
        try:
            await self._until_stopped(asyncio.wait({poll, watcher}, return_when=asyncio.FIRST_COMPLETED), stop)
        finally:
            watcher.cancel()
            if not poll.done():
                poll.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poll
        if failed.is_set():
            failed.clear()
            return (poll.result() if not poll.cancelled() else None), True
        return poll.result(), False

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
        forward = asyncio.ensure_future(self._forward(stop, halt))
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
            if state.device_id is None or not self.dir.cert.exists():
                state = await self._enroll(state, halt)
            elif self.renewer.expired():
                await self._reenroll(state, halt)
            self.device_id = state.device_id
            transport = self._transport_factory(self.settings, self.dir, True)
            self.updates = self._update_client(state)
            self.runner = self._update_runner(state) if self.updates is not None else None
            recorder, telemetry = await self._start_telemetry(state, transport, halt)
            self.workloads = Supervisor(self.dir.path / "workloads" / "data", self.dir.path / "workloads" / "logs",
                                        self.rng, on_line=lambda name, line: recorder.log("info", f"workload/{name}",
                                                                                          line))
            if self.tpm is not None and self.updates is not None:
                self.tokens = TokenKeeper(self.workloads.data_dir, self.clock.monotonic, self.rng,
                                          self.settings.backoff_initial_seconds, self.settings.backoff_max_seconds)
            try:
                if self.runner is not None:
                    self.runner.workloads_probe = self._workloads_probe(state, asyncio.get_running_loop())
                    # The workloads start before a trial boot's health checks, which may wait for them.
                    assert self.updates is not None
                    await self._apply_workloads(state, self.updates)
                    self._mark_applied(state, self.updates)  # what it runs after a restart, it has acted on
                    await asyncio.to_thread(self.runner.resume)
                await self._loop(state, transport, halt)
            finally:
                await close_page()
                await self.workloads.close()
                await self._stop_telemetry(recorder, telemetry)
                await transport.aclose()
                if self.updates is not None:
                    self.updates.close()
        except _Stopped:
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

    async def _start_telemetry(self, state: AgentState, transport: DeviceTransport,
                               halt: asyncio.Event) -> tuple[Recorder, list[asyncio.Task[None]]]:
        """The durable buffer, what writes into it and what ships it, until ``halt``."""
        assert state.device_id is not None
        buffer = await asyncio.to_thread(open_buffer, self.dir.path / "telemetry.db", self.settings.telemetry_max_bytes)
        recorder = Recorder(buffer)
        settings = self.settings
        if settings.telemetry_url:  # the site's hub receives it; the hub forwards summaries upstream
            self._telemetry_transport = HttpsTransport(
                settings.telemetry_url, settings.telemetry_ca_file or self.dir.ca, cert_file=self.dir.cert,
                key_file=self.dir.key, timeout=settings.request_timeout_seconds)
            transport = self._telemetry_transport
        self.recorder, self.shipper = recorder, Shipper(
            buffer, transport.ship_telemetry, state.device_id, site=self.site,
            max_age_seconds=self.settings.telemetry_batch_seconds,
            backoff_initial_seconds=self.settings.backoff_initial_seconds,
            backoff_max_seconds=self.settings.backoff_max_seconds, rng=self.rng)
        handler = RecordingHandler(recorder) if self.capture_logs else None
        if handler is not None:
            logging.getLogger("edgefleet").addHandler(handler)
        self._log_handler = handler
        return recorder, [asyncio.create_task(recorder.run(halt), name="telemetry-flush"),
                          asyncio.create_task(self.shipper.run(halt), name="telemetry-ship")]

    async def _stop_telemetry(self, recorder: Recorder, tasks: list[asyncio.Task[None]]) -> None:
        if self._log_handler is not None:
            logging.getLogger("edgefleet").removeHandler(self._log_handler)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(recorder.flush)
        if self._telemetry_transport is not None:
            await self._telemetry_transport.aclose()
            self._telemetry_transport = None
        recorder.buffer.close()

    async def _forward(self, stop: asyncio.Event, halt: asyncio.Event) -> None:
        await stop.wait()
        halt.set()

    async def _enroll(self, state: AgentState, stop: asyncio.Event) -> AgentState:
        token = self._bootstrap_token()
        if not self.dir.key.exists():
            # Persist the key first: it never leaves the device and survives a retry.
            self.dir.save_key(new_device_key())
        hardware_id = self.platform.hardware_id()
        request = EnrollRequest(
            token=token,
            csr_pem=make_csr(self.dir.key.read_bytes(), hardware_id).decode(),
            inventory=Inventory(
                hardware_id=hardware_id, site=self.site, labels=self.labels, hostname=self.platform.hostname(),
                hardware_type=self.settings.hardware_type or self.platform.hardware_type(),
                agent_version=__version__, os_version=self.platform.os_version(),
            ),
        )
        backoff = Backoff(self.settings.backoff_initial_seconds, self.settings.backoff_max_seconds, self.rng)
        transport = self._transport_factory(self.settings, self.dir, False)
        try:
            while True:
                try:
                    response = await self._until_stopped(transport.enroll(request), stop)
                    break
                except TransportError as exc:
                    self.last_error = str(exc)
                    delay = backoff.next_delay()
                    log.warning("enrollment failed, retrying in %.1fs: %s", delay, exc)
                    await pause(stop, delay)
                    if stop.is_set():
                        raise _Stopped from None
        finally:
            await transport.aclose()
        self.dir.save_credentials(response.certificate_pem.encode(), response.ca_pem.encode())
        state.device_id = response.device_id
        self.dir.save(state)
        log.info("enrolled as %s at site %s", response.device_id, self.site)
        return state

    async def _reenroll(self, state: AgentState, stop: asyncio.Event) -> None:
        """The certificate ended (the device was off longer than it lives): ask to re-enroll,
        over server-authenticated TLS, until an operator approves it."""
        assert state.device_id is not None
        log.warning("the device certificate has ended: asking to re-enroll")
        backoff = Backoff(self.settings.backoff_initial_seconds, self.settings.backoff_max_seconds, self.rng)
        transport = self._transport_factory(self.settings, self.dir, False)
        try:
            while True:
                try:
                    if await self._until_stopped(self.renewer.reenroll(state.device_id, transport), stop):
                        return
                    why = ("the device certificate has ended; re-enrollment waits for an operator (edgefleet devices "
                           f"approve {state.device_id})")
                except ServerRefused as exc:
                    if exc.code == "certificate_still_valid":  # this device's clock runs ahead, not its certificate
                        log.warning("the server still accepts the device certificate: %s (check the clock)", exc)
                        return
                    why = f"re-enrollment refused: {exc}"
                except TransportError as exc:
                    why = f"re-enrollment failed: {exc}"
                log.log(logging.DEBUG if why == self.last_error else logging.WARNING, "%s", why)
                self.last_error = why
                await pause(stop, backoff.next_delay())
                if stop.is_set():
                    raise _Stopped
        finally:
            await transport.aclose()

    def _update_client(self, state: AgentState) -> UpdateClient | None:
        """Signed updates need the TUF roots that ship in the OS image; without them the
        agent still checks in, reports and attests, but acts on nothing the server sends:
        no configuration, no workloads, no workload token (``untrusted`` says why)."""
        assert state.device_id is not None
        settings = self.settings
        trust = settings.trust_dir or self.platform.trust_dir()
        image_root, director_root = trust / "image-root.json", trust / "director-root.json"
        if not image_root.exists() and not director_root.exists():
            self.untrusted = f"no TUF roots in {trust}"
            log.error("%s: this device applies no configuration, runs no workloads and holds no workload token "
                      "(fail closed) until its image ships the roots", self.untrusted)
            return None
        try:
            anchors = TrustAnchors.load(image_root, director_root)
        except UpdateRefused as exc:
            self.untrusted = f"TUF roots unusable: {exc.message}"
            log.error("%s: no configuration, workloads or tokens (fail closed)", self.untrusted)
            state.update_state, state.update_error = "refused", exc.code
            self.dir.save(state)
            return None
        timeout = settings.request_timeout_seconds
        return UpdateClient(
            device_id=state.device_id,
            hardware_type=settings.hardware_type or self.platform.hardware_type(),
            state_dir=self.dir.path,
            anchors=anchors,
            director_url=f"{settings.server_url.rstrip('/')}/api/v1/devices/{state.device_id}/director",
            director_tls=https_client(self.dir.ca, self.dir.cert, self.dir.key, timeout),
            mirrors=settings.mirrors or [f"{settings.server_url.rstrip('/')}/repository"],
            mirror_tls=https_client(self.dir.ca, self.dir.cert, self.dir.key, timeout, system_cas=True),
        )

    def _update_runner(self, state: AgentState) -> UpdateRunner | None:
        """The A/B installer, when the device has slots (emulated or configured)."""
        if self.system is None:
            log.info("no A/B slots: releases are verified but not installed")
            return None

        def save(job: UpdateJob, failed: dict[str, int]) -> None:
            state.update, state.failed_releases, state.update_state = job.dump(), dict(failed), str(job.phase)
            self.dir.save(state)

        return UpdateRunner(
            self.system, self.clock, save, job=UpdateJob.load(state.update) if state.update else UpdateJob(),
            failed=dict(state.failed_releases), checks=self._configured_checks(),
            trial_seconds=self.settings.trial_deadline_seconds, attestation=self.tpm is not None,
            failed_under=state.desired_version,
        )

    async def _check_update(self, state: AgentState, updates: UpdateClient) -> None:
        """Verify what the director assigns and hand it to the installer; refusals are
        reported, and the device keeps running what it has. How to take the release
        (force, retry, revert) is signed with it; when is the signed configuration's
        maintenance windows. Nothing unsigned in the desired state steers an update."""
        runner = self.runner
        try:
            plan = await asyncio.to_thread(updates.check, self.platform.release_counter())
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
            self._plan = None
            result = Refusal("cannot_revert", "this device has no A/B slots") if runner is None else \
                await asyncio.to_thread(runner.revert, plan.version)
            if isinstance(result, Refusal):
                log.warning("revert refused (%s): %s", result.code, result.message)
                state.update_error, state.update_refused = result.code, result.message
                self.dir.save(state)
            return
        self._plan = plan
        if runner is None:
            state.update_state, state.update_error = "idle" if plan is None else "verified", None
            self.dir.save(state)
            return
        self._take_signed_windows(state, updates, runner)
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

    def _take_signed_windows(self, state: AgentState, updates: UpdateClient, runner: UpdateRunner) -> None:
        """The maintenance windows of the director-signed configuration become the
        runner's; a configuration the director has not signed (yet, or ever) changes none."""
        config = state.desired.get("config")
        if not isinstance(config, dict):
            if updates.assigned_config() is None:
                runner.policy = MaintenancePolicy.parse(None)  # no configuration at all: no windows
            return  # the director signs a configuration this document lacks: keep the last windows
        if not self._director_signed(config, updates):
            return  # the configuration step reports it
        try:
            runner.policy = MaintenancePolicy.parse(config.get("maintenance"))
        except InvalidRequest as exc:
            log.error("maintenance windows in the signed configuration are invalid, keeping the last ones: %s",
                      exc.message)

    async def _drive_update(self, state: AgentState, transport: DeviceTransport, attestor: Attestor | None,
                            halt: asyncio.Event) -> bool:
        """Advance the A/B update as far as it goes now; returns whether anything changed.

        Raises TransportError (a download or attestation could not reach the server).
        """
        runner, updates = self.runner, self.updates
        assert runner is not None
        assert updates is not None
        assert state.device_id is not None
        changed = False
        while not self.rebooting:
            seq = runner.job.seq
            plan = self._plan
            if runner.job.phase is Phase.DOWNLOADING and (plan is None or plan.version != runner.job.version):
                # After a restart the assignment is verified again (_check_update) before
                # the download resumes; driving now would fail and hold that check back.
                break
            if seq != self._reported_job_seq:  # the server sees each phase before its work (a download takes minutes)
                await self._progress(state, transport, halt)

            def download() -> Delivery:
                plan = self._plan
                if plan is None or plan.version != runner.job.version:
                    raise TransportError("the assignment is being re-verified")
                running = None
                if self.system is not None:
                    running = (self.system.slot_source(self.system.booted()), self.platform.os_version())
                return updates.download(plan, runner.download_stop(self._stop_downloads), running=running)

            action = await self._until_stopped(asyncio.to_thread(runner.step, download), halt)
            changed = changed or runner.job.seq != seq
            if action is Action.ATTEST:
                # The server checks the quote against the release the device says it runs.
                await self._until_stopped(self._report(state, transport), halt)
                if attestor is None:
                    raise ConfigError("attestation before commit needs a TPM")
                self.attested = await self._until_stopped(attestor.attest(transport, state.device_id), halt)
                action = await asyncio.to_thread(runner.attestation_result, self.attested)
                changed = True
            if action is Action.REBOOTING:
                await self._reboot(state, transport, halt)
            if action is not Action.CONTINUE:
                break
        return changed

    async def _progress(self, state: AgentState, transport: DeviceTransport, halt: asyncio.Event) -> None:
        """Report an update phase as it starts, best effort: a report that cannot go out
        now does not hold the update back (the next check-in reports it)."""
        try:
            await self._until_stopped(self._report(state, transport), halt)
        except (TransportError, ServerRefused) as exc:
            log.debug("progress report not sent: %s", exc)

    async def _reboot(self, state: AgentState, transport: DeviceTransport, halt: asyncio.Event) -> None:
        """The OS goes down: tell the server (best effort, at most REBOOT_REPORT_SECONDS: a
        slow link or a loaded server must not hold a rollback back), then stop. The phase is
        on disk; the agent reports it again after the boot."""
        self.rebooting = True
        try:
            await asyncio.wait_for(self._report(state, transport), REBOOT_REPORT_SECONDS)
        except (TransportError, ServerRefused, _Stopped, TimeoutError) as exc:
            log.info("going down for the reboot without telling the server: %s", exc or "no answer in time")
        finally:
            halt.set()

    async def _watchdog(self, state: AgentState, transport: DeviceTransport, halt: asyncio.Event) -> None:
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
                        await self._reboot(state, transport, halt)
                    return
                await pause(halt, 1.0 if remaining is None else min(remaining, 1.0))

    async def _loop(self, state: AgentState, transport: DeviceTransport, stop: asyncio.Event) -> None:
        settings = self.settings
        assert state.device_id is not None
        attestor = None
        if self.tpm is not None:
            attestor = Attestor(self.tpm, settings.event_log or self.platform.event_log(), settings.ek_certificate_file)
        self.health = HealthMonitor(self._health_sources(state), settings.health_interval_seconds)
        watch_health = self.health.run(stop, lambda verdict: self._health_changed(verdict, state, transport, stop))
        helpers = [asyncio.ensure_future(self._forward_stop(stop)), asyncio.ensure_future(watch_health)]
        if self.tokens is not None:
            helpers.append(asyncio.ensure_future(self.tokens.run(transport, state.device_id, lambda: self.attested)))
        if self.runner is not None:
            helpers.append(asyncio.ensure_future(self._watchdog(state, transport, stop)))
        try:
            await self._check_in_until(stop, state, transport, attestor)
        finally:
            # However the loop ends (a stop, a reboot, an error), its helpers end with it:
            # none may outlive the telemetry buffer and the transport they use.
            for helper in helpers:
                helper.cancel()
            for outcome in await asyncio.gather(*helpers, return_exceptions=True):
                # A helper that was reporting when the loop ended (a reboot, a stop) ends
                # with _Stopped: expected, not a failure.
                if isinstance(outcome, Exception) and not isinstance(outcome, _Stopped):
                    log.error("agent task failed: %s", outcome, exc_info=outcome)

    async def _health_changed(self, verdict: device_health.Verdict, state: AgentState, transport: DeviceTransport,
                              stop: asyncio.Event) -> None:
        """Logged, and reported at once: a rollout baking on this device must not wait a poll."""
        log.log(logging.INFO if verdict.state == "healthy" else logging.WARNING, "health: %s", verdict.summary())
        if self.recorder is not None:
            self.recorder.event("health", state=verdict.state, failing=[f.name for f in verdict.findings])
        await self._progress(state, transport, stop)

    def _configured_checks(self) -> list[HealthCheck]:
        """The device's own checks besides the image's: the settings', health.d's, the named units."""
        settings = self.settings
        return (parse_checks(settings.health_checks) + health_d_checks(settings.health_dir)
                + unit_checks(settings.health_units))

    def _checks(self) -> list[HealthCheck]:
        """What makes this device healthy in steady state: the same checks as a trial boot's."""
        image = self.system.image_health_checks() if self.system is not None else []
        return parse_checks(image) + self._configured_checks()

    def _health_sources(self, state: AgentState) -> HealthSources:
        def buffer() -> tuple[int, int]:
            recorder = self.recorder
            return (recorder.buffer.figures().bytes if recorder is not None else 0), self.settings.telemetry_max_bytes

        return HealthSources(checks=self._checks, workloads=lambda: self._workload_statuses() or [], buffer=buffer,
                             attested=lambda: self.attested, state_dir=self.dir.path, untrusted=lambda: self.untrusted,
                             unsigned=lambda: self.unsigned,
                             probe=self.runner.workloads_probe if self.runner is not None else None)

    async def _check_in_until(self, stop: asyncio.Event, state: AgentState, transport: DeviceTransport,
                              attestor: Attestor | None) -> None:
        """Check in, report, attest and drive updates until ``stop``."""
        settings = self.settings
        assert state.device_id is not None
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
                    await self._until_stopped(self._report(state, transport), stop)
                    next_report = self.clock.monotonic() + settings.status_interval_seconds
                if attestor is not None and self.clock.monotonic() >= self._next_attest:
                    if not identity_bound:
                        await self._until_stopped(attestor.enroll(transport, state.device_id), stop)
                        identity_bound = True
                    self.attested = await self._until_stopped(attestor.attest(transport, state.device_id), stop)
                    self._next_attest = (self.clock.monotonic()
                                         + settings.attestation_interval_seconds * self.rng.uniform(0.85, 1.0))
                    await self._until_stopped(self._report(state, transport), stop)
                if self.runner is not None and self.runner.job.active and \
                        await self._drive_update(state, transport, attestor, stop):
                    await self._until_stopped(self._report(state, transport), stop)
                if stop.is_set():
                    break
                desired, failed = await self._poll_desired(state, transport, stop)
                if failed:
                    next_report = self.clock.monotonic()
                self.checkins += 1
                self.last_contact = time.time()
                if desired is not None:
                    state.desired, self.invalid_desired = usable(desired.document)
                    state.desired_version = desired.version
                    self.dir.save(state)
                    log.info("received desired state version %d%s", desired.version,
                             f", not applied: {self.untrusted}" if self.untrusted else "")
                    next_report = next_update = self.clock.monotonic()
                if self.updates is not None and self.clock.monotonic() >= next_update:
                    before = (state.update_state, state.update_error)
                    await self._check_update(state, self.updates)
                    await asyncio.to_thread(self._apply_os_config, state)  # verified against the director
                    await self._apply_workloads(state, self.updates)
                    if self._mark_applied(state, self.updates):
                        await self._apply_manifests(state.desired.get("config"))
                    next_update = self.clock.monotonic() + settings.update_check_seconds
                    if self.runner is not None and self.runner.job.active:
                        await self._drive_update(state, transport, attestor, stop)
                    if (state.update_state, state.update_error) != before:
                        next_report = self.clock.monotonic()
                if self.clock.monotonic() >= next_report and not stop.is_set():
                    await self._until_stopped(self._report(state, transport), stop)
                    next_report = self.clock.monotonic() + settings.status_interval_seconds
                if not stop.is_set() and (attestor is None or self.attested) and self.renewer.due():
                    await self._renew(state.device_id, transport, stop)
                backoff.reset()
                self.last_error = None
                delay = (jittered(settings.checkin_interval_seconds, self.rng) if settings.long_poll_seconds == 0
                         else self.rng.uniform(0, 1))
            except (TransportError, ServerRefused) as exc:
                if isinstance(exc, ServerRefused) and exc.code == "decommissioned":
                    raise  # the end of this device's identity: run() erases it
                hint = refusal_hint(exc, has_tpm=attestor is not None)
                repeated = self.last_error == str(exc) + hint
                self.last_error = str(exc) + hint  # the technician's page shows it too
                self.last_refused = isinstance(exc, ServerRefused)
                delay = max(backoff.next_delay(), exc.retry_after if isinstance(exc, Throttled) else 0.0)
                # The same failure again and again (a quarantined device, a long outage) is
                # logged once, then at debug level: edge disks and links are small.
                level = logging.ERROR if isinstance(exc, ServerRefused) else logging.WARNING
                if isinstance(exc, ServerRefused) and exc.code == "attestation_required" and attestor is not None:
                    self._next_attest = self.clock.monotonic()  # it lapsed: attest again now, then go on
                    level = logging.WARNING
                if isinstance(exc, ServerRefused) and exc.code == "quarantined":  # the server's verdict, expected
                    level = logging.WARNING
                log.log(logging.DEBUG if repeated else level, "check-in failed, retrying in %.1fs: %s%s", delay, exc,
                        hint)
            await pause(stop, delay)

    async def _renew(self, device_id: str, transport: DeviceTransport, stop: asyncio.Event) -> None:
        """Renew the certificate (a refusal is retried later; a network failure goes to the
        check-in's backoff)."""
        transports = [transport] + ([self._telemetry_transport] if self._telemetry_transport is not None else [])
        try:
            await self._until_stopped(self.renewer.renew(device_id, transports), stop)
        except ServerRefused as exc:
            self.renewer.refused(exc)

    def _attest_ahead(self, expires_in: float | None) -> None:
        """Re-attest before the server's freshness runs out: by a margin longer than the
        time to the next status report and check-in, with jitter, so that no check-in
        meets the 403 (the fleet's devices do not all come back at the same second)."""
        if expires_in is None or self.tpm is None or self.attested is not True:
            return  # no freshness required, no TPM, or quarantined (its quotes are judged on schedule)
        settings = self.settings
        reach = settings.status_interval_seconds + (settings.long_poll_seconds or settings.checkin_interval_seconds)
        margin = (reach + REATTEST_SLACK_SECONDS) * self.rng.uniform(1.0, 1.5)
        self._next_attest = min(self._next_attest, self.clock.monotonic() + max(0.0, expires_in - margin))

    async def _forward_stop(self, stop: asyncio.Event) -> None:
        """Let a download or a health check running in a worker thread see the stop request."""
        await stop.wait()
        self._stop_downloads.set()
        if self.runner is not None:
            self.runner.shutdown()

    def _details(self, state: AgentState) -> dict[str, object]:
        details: dict[str, object] = {"agent_version": __version__}
        if self.attested is not None:
            details["attestation"] = "passed" if self.attested else "failed"
        if state.update_error:
            details["update_error"] = state.update_error
        if self.untrusted:
            details["config_refused"] = self.untrusted
        return details

    def _os_config_dir(self) -> Path:
        return self.settings.os_config_dir or self.platform.os_config_dir()

    def _apply_os_config(self, state: AgentState) -> None:
        """Put the rendered OS configuration in place when it differs from what is there.

        The configuration must be exactly the director's signed config target (length and
        sha256 of its canonical bytes); otherwise it waits. A device without TUF roots
        applies none (fail closed: ``untrusted``).
        """
        config = state.desired.get("config")
        if not isinstance(config, dict) or not isinstance(config.get("os"), dict):
            return
        if osconfig.in_sync(self._os_config_dir(), config["os"]):
            return
        if self.updates is None or not self._director_signed(config, self.updates):
            log.warning("configuration in the desired state is not what the director signed; not applied")
            state.update_error = "config_not_signed"
            return
        osconfig.apply(self._os_config_dir(), config["os"], instance=str(config.get("os_hash", ""))[:16])
        log.info("applied OS configuration of commit %s", (config.get("commits") or {}))

    def _mark_applied(self, state: AgentState, updates: UpdateClient) -> bool:
        """The agent has acted on the desired state it holds, unless its configuration waits
        for the director's signature; returns whether it has."""
        config = state.desired.get("config")
        signed = not isinstance(config, dict) or self._director_signed(config, updates)
        self._note_unsigned(state, signed)
        if state.desired_version < 0 or not signed:
            return False
        self._applied = state.desired_version
        return True

    def _note_unsigned(self, state: AgentState, config_signed: bool) -> None:
        """Say (a health finding, and the log once) what of the desired state this device
        ignores because the director did not sign it: a configuration other than the signed
        one, or any instruction outside it (an older server's unsigned ``update`` or
        ``maintenance``, or a forged one)."""
        ignored = ([] if config_signed else ["config"]) + sorted(set(state.desired) - SIGNED_PARTS)
        reasons = ([f"not signed by the director, ignored: {', '.join(ignored)}"] if ignored else []) + (
            [f"not a valid desired state, ignored: {self.invalid_desired}"] if self.invalid_desired else [])
        why = "; ".join(reasons) or None
        if why != self.unsigned:
            if why is not None:
                log.warning("desired state version %d: %s", state.desired_version, why)
            self.unsigned = why
            if self.health is not None:
                self.health.wake.set()

    @staticmethod
    def _director_signed(config: dict[str, object], updates: UpdateClient) -> bool:
        """Is ``config`` exactly the director's signed config target (length and sha256 of
        its canonical bytes)?"""
        signed = updates.assigned_config()
        data = canonical(config)
        return signed is not None and signed.length == len(data) and \
            signed.hashes.get("sha256") == hashlib.sha256(data).hexdigest()

    async def _apply_workloads(self, state: AgentState, updates: UpdateClient) -> None:
        """Run exactly the workloads of the director-signed configuration, their artifacts
        fetched from the image repository and verified. A workload whose artifacts cannot
        be fetched now keeps running as it is; one that does not verify is refused."""
        config = state.desired.get("config")
        if self.workloads is None or not isinstance(config, dict):
            return
        declared, invalid = _declared(config)
        if not declared and self.workloads.idle:
            return
        if not self._director_signed(config, updates):
            return  # the configuration step logs and reports it
        if self.tokens is not None:
            self.tokens.want(wanted_tokens(spec for _, spec in declared))
        for why in invalid:
            log.error("a workload in the configuration is invalid, left out: %s", why)
        wanted, keep = [], set()
        for _, spec in declared:
            try:
                artifacts, changed = await asyncio.to_thread(updates.artifacts, spec.targets)
            except UpdateRefused as exc:
                self.workloads.refuse(spec, exc.message)
                keep.add(spec.name)
                continue
            except TransportError as exc:
                log.warning("workload %s: artifacts unreachable now, keeping what runs: %s", spec.name, exc)
                keep.add(spec.name)
                continue
            wanted.append((spec, artifacts))
            if changed:
                self._workloads_changed.add(spec.name)  # drift: reported once, then healed
        await self.workloads.apply(wanted, keep)

    def _workloads_probe(self, state: AgentState, loop: asyncio.AbstractEventLoop) -> Probe:
        """A ``workloads`` health check (run in a worker thread): passes once every workload
        of the configuration runs, verified and healthy; fails at once when one failed."""

        async def verdict() -> Verdict:
            config = state.desired.get("config")
            workloads = config.get("workloads") if isinstance(config, dict) else None
            report = self._config_report(state)
            statuses = [s.model_dump() for s in self.workloads.status()] if self.workloads is not None else []
            return judge(workloads if isinstance(workloads, dict) else None,
                         report.parts if report is not None else {}, statuses)

        def probe(timeout: float, cancel: threading.Event) -> tuple[bool, str]:
            deadline = time.monotonic() + timeout
            while True:
                found = asyncio.run_coroutine_threadsafe(verdict(), loop).result(timeout)
                if found.phase == "committed":
                    return True, "every workload of the configuration runs"
                if found.phase == "failed":
                    return False, found.reason or "a workload failed"
                if cancel.is_set() or time.monotonic() >= deadline:
                    return False, f"workloads not all running and healthy after {timeout:g}s"
                cancel.wait(0.2)

        return probe

    async def _apply_manifests(self, config: object) -> None:
        """The group's Kubernetes manifests of the director-signed configuration, to the
        device's cluster or to the repository its Argo CD / Flux watch."""
        if self.manifests is None or not isinstance(config, dict):
            return
        workloads = config.get("workloads")
        manifests = workloads.get("manifests") if isinstance(workloads, dict) else None
        if isinstance(manifests, list):
            await asyncio.to_thread(self.manifests.sync, str(config.get("group")), manifests, self.clock.monotonic())

    def _workload_statuses(self) -> list[WorkloadStatus] | None:
        found = self.workloads.status() if self.workloads is not None else []
        kubernetes = self.manifests.status() if self.manifests is not None else None
        return [*found, *([kubernetes] if kubernetes else [])][:32] or None

    def _config_report(self, state: AgentState) -> ConfigReport | None:
        """The OS configuration on disk, and each declared workload that runs exactly as
        declared (its part is left out otherwise: the server sees the difference)."""
        config = state.desired.get("config")
        if not isinstance(config, dict):
            return None
        parts = osconfig.observe(self._os_config_dir())
        for entry, spec in _declared(config)[0]:
            if self.workloads is not None and self.workloads.runs(spec) and spec.name not in self._workloads_changed:
                name, digest = workload_part(entry)
                parts[name] = digest
        return ConfigReport(parts=parts)

    def local_view(self) -> dict[str, Any]:
        """What the technician's page shows, from the agent alone (the uplink may be down)."""
        state = self.dir.load()
        report = self._update_report(state)
        recorder = self.recorder
        figures = recorder.buffer.figures() if recorder is not None else None
        return {
            "device_id": state.device_id, "site": self.site, "os_version": self.platform.os_version(),
            "desired_version": state.desired_version, "applied": self._applied, "update_state": state.update_state,
            "update_error": state.update_error, "update_refused": state.update_refused,
            "update": None if report is None else report.model_dump(mode="json", exclude={"events", "health_checks"}),
            "history": [] if report is None else [e.model_dump(mode="json") for e in reversed(report.events)],
            "health_checks": [] if report is None else report.health_checks,
            "attested": self.attested, "checkins": self.checkins, "last_contact": self.last_contact,
            "last_error": self.last_error, "last_refused": self.last_refused,
            "telemetry": None if figures is None else {
                "queued": figures.queued, "bytes": figures.bytes, "dropped": figures.dropped,
                "oldest_age_seconds": figures.oldest_age_seconds,
                "last_ship": self.shipper.last_success if self.shipper is not None else None},
            "logs": [] if recorder is None else [{"at": at, "level": level, "source": source, "message": message}
                                                 for at, level, source, message in reversed(recorder.recent)][:100],
        }

    def _update_report(self, state: AgentState) -> UpdateReport | None:
        runner = self.runner
        if runner is None:
            return None
        job = runner.job
        return UpdateReport(
            phase=str(job.phase), release=job.version, from_slot=job.from_slot, to_slot=job.to_slot,
            booted_slot=self.system.booted() if self.system is not None else None, reason=job.reason,
            refused=state.update_refused, failed_releases=sorted(runner.failed)[-64:],
            health_checks=runner.last_checks[:64],
            events=[UpdateEvent.model_validate(event) for event in job.history],
            delivery=None if job.delivery is None else UpdateDelivery.model_validate(job.delivery),
        )

    async def _record(self, state: AgentState) -> None:
        """Events and the agent's own figures into telemetry, with each status report."""
        recorder = self.recorder
        if recorder is None:
            return
        if state.update_state != self._reported_phase:
            recorder.event("update_phase", phase=state.update_state, error=state.update_error)
            self._reported_phase = state.update_state
        figures = await asyncio.to_thread(recorder.buffer.figures)
        health = BufferHealth(figures, self.shipper.last_success if self.shipper is not None else None)
        for name, value in health.samples().items():
            recorder.metric(f"edgefleet_agent_telemetry_{name}", value)
        if self.settings.metrics_file is not None:
            await asyncio.to_thread(self._write_metrics_file, self.settings.metrics_file, health)

    @staticmethod
    def _write_metrics_file(path: Path, health: BufferHealth) -> None:
        from edgefleet.telemetry.health_metrics import write_textfile  # prometheus_client, when asked for

        try:
            write_textfile(path, "edgefleet_agent_telemetry", health)
        except OSError as exc:
            log.warning("cannot write the metrics file %s: %s", path, exc)

    async def _report(self, state: AgentState, transport: DeviceTransport) -> None:
        assert state.device_id is not None
        await self._record(state)
        verdict = self.health.verdict if self.health is not None else None
        for _ in range(2):
            state.status_seq += 1
            self.dir.save(state)
            report = StatusReport(
                seq=state.status_seq,
                running_version=self.platform.os_version(),
                health=verdict.state if verdict is not None else "unknown",
                health_findings=list(verdict.findings) if verdict is not None else [],
                update_state=state.update_state,
                desired_version_applied=self._applied if self._applied >= 0 else None,
                details=self._details(state),
                update=self._update_report(state),
                config=self._config_report(state),
                workloads=self._workload_statuses(),
            )
            ack = await transport.report_status(state.device_id, report)
            self.reports += 1
            self._attest_ahead(ack.attestation_expires_in_seconds)
            self._reported_job_seq = self.runner.job.seq if self.runner is not None else None
            if self._applied == state.desired_version:  # a report the server judges drift on
                self._workloads_changed.clear()  # the server has seen them out of sync once
            if ack.accepted or ack.seq < state.status_seq:
                return
            # The server has seen a higher seq than ours (state restored from an old
            # backup): continue above it rather than being ignored forever.
            log.warning("server holds status seq %d above ours (%d); skipping ahead", ack.seq, state.status_seq)
            state.status_seq = ack.seq


def refusal_hint(exc: EdgefleetError, *, has_tpm: bool) -> str:
    """What the person reading the agent's log can do about a refusal ("" when nothing)."""
    code = exc.code if isinstance(exc, ServerRefused) else ""
    if code == "quarantined":
        return " (an operator releases it: edgefleet devices release-quarantine)"
    if code == "ek_pending_approval":
        return " (it attests once an operator approves its TPM: edgefleet devices pending, edgefleet devices approve)"
    if code == "attestation_required" and not has_tpm:
        return (" (the server requires attestation and this agent has no TPM: set tpm to its TCTI in the agent's "
                "settings, e.g. tpm = \"device:/dev/tpmrm0\")")
    return ""
