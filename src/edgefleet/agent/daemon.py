"""The agent's main loop: enroll once, then check in, apply, and report, until stopped.

Every change of durable state is persisted before it is acted on: the status sequence
number is saved before a report is sent, so a crash can never make the agent reuse one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from edgefleet import __version__
from edgefleet.agent.backoff import Backoff, jittered
from edgefleet.agent.hardware.interfaces import Platform
from edgefleet.agent.settings import AgentSettings
from edgefleet.agent.state import AgentState, StateDir
from edgefleet.agent.transport import DeviceTransport, HttpsTransport
from edgefleet.clock import Clock, SystemClock
from edgefleet.errors import ConfigError, ServerRefused, TransportError
from edgefleet.pki import make_csr, new_device_key
from edgefleet.protocol.v1 import EnrollRequest, Inventory, StatusReport

log = logging.getLogger("edgefleet.agent")

T = TypeVar("T")
TransportFactory = Callable[[AgentSettings, StateDir, bool], DeviceTransport]


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
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self.platform = platform
        self.site = site
        self.labels = labels or {}
        self.dir = StateDir(settings.state_dir)
        self._transport_factory = transport_factory
        self.clock = clock or SystemClock()
        self.rng = rng or random.Random()
        self.device_id: str | None = None
        self.checkins = 0
        self.reports = 0
        self.last_error: str | None = None

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

    async def _pause(self, seconds: float, stop: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set.

        Raises:
            ServerRefused: enrollment was refused (bad or used token, site mismatch,
                hardware id already enrolled); retrying cannot help, an operator must act.
            ConfigError, PersistError: the agent cannot keep its state.
        """
        self.dir.path.mkdir(parents=True, exist_ok=True)
        state = self.dir.load()
        try:
            if state.device_id is None or not self.dir.cert.exists():
                state = await self._enroll(state, stop)
            self.device_id = state.device_id
            transport = self._transport_factory(self.settings, self.dir, True)
            try:
                await self._loop(state, transport, stop)
            finally:
                await transport.aclose()
        except _Stopped:
            pass
        log.info("agent %s stopped", self.device_id or "(not enrolled)")

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
                    await self._pause(delay, stop)
                    if stop.is_set():
                        raise _Stopped from None
        finally:
            await transport.aclose()
        self.dir.save_credentials(response.certificate_pem.encode(), response.ca_pem.encode())
        state.device_id = response.device_id
        self.dir.save(state)
        log.info("enrolled as %s at site %s", response.device_id, self.site)
        return state

    async def _loop(self, state: AgentState, transport: DeviceTransport, stop: asyncio.Event) -> None:
        settings = self.settings
        assert state.device_id is not None
        backoff = Backoff(settings.backoff_initial_seconds, settings.backoff_max_seconds, self.rng)
        next_report = self.clock.monotonic()  # report right away after (re)start
        while not stop.is_set():
            try:
                desired = await self._until_stopped(
                    transport.fetch_desired(state.device_id, state.desired_version, settings.long_poll_seconds), stop
                )
                self.checkins += 1
                if desired is not None:
                    state.desired, state.desired_version = desired.document, desired.version
                    self.dir.save(state)
                    log.info("received desired state version %d", desired.version)
                    next_report = self.clock.monotonic()
                if self.clock.monotonic() >= next_report:
                    await self._until_stopped(self._report(state, transport), stop)
                    next_report = self.clock.monotonic() + settings.status_interval_seconds
                backoff.reset()
                self.last_error = None
                delay = (jittered(settings.checkin_interval_seconds, self.rng) if settings.long_poll_seconds == 0
                         else self.rng.uniform(0, 1))
            except (TransportError, ServerRefused) as exc:
                self.last_error = str(exc)
                delay = backoff.next_delay()
                level = logging.ERROR if isinstance(exc, ServerRefused) else logging.WARNING
                log.log(level, "check-in failed, retrying in %.1fs: %s", delay, exc)
            await self._pause(delay, stop)

    async def _report(self, state: AgentState, transport: DeviceTransport) -> None:
        assert state.device_id is not None
        for _ in range(2):
            state.status_seq += 1
            self.dir.save(state)
            report = StatusReport(
                seq=state.status_seq,
                running_version=self.platform.os_version(),
                health="ok",
                update_state="idle",
                desired_version_applied=state.desired_version if state.desired_version >= 0 else None,
                details={"agent_version": __version__},
            )
            ack = await transport.report_status(state.device_id, report)
            self.reports += 1
            if ack.accepted or ack.seq < state.status_seq:
                return
            # The server has seen a higher seq than ours (state restored from an old
            # backup): continue above it rather than being ignored forever.
            log.warning("server holds status seq %d above ours (%d); skipping ahead", ack.seq, state.status_seq)
            state.status_seq = ack.seq
