"""The device's identity: enrolling with a bootstrap token, and asking to re-enroll when its
certificate has ended."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from edgefleet import __version__
from edgefleet.agent.hardware.interfaces import Platform
from edgefleet.agent.renewal import CertificateRenewer
from edgefleet.agent.settings import AgentSettings
from edgefleet.agent.state import AgentState, StateDir
from edgefleet.agent.stopping import Stopped, until_stopped
from edgefleet.errors import ConfigError, ServerRefused, TransportError
from edgefleet.pki import make_csr, new_device_key
from edgefleet.protocol.v1 import EnrollRequest, Inventory
from edgefleet.util.aio import pause
from edgefleet.util.backoff import Backoff
from edgefleet.web.device_client import DeviceTransport, HttpsTransport

log = logging.getLogger("edgefleet.agent")

TransportFactory = Callable[[AgentSettings, StateDir, bool], DeviceTransport]


def https_transport(settings: AgentSettings, state_dir: StateDir, enrolled: bool) -> DeviceTransport:
    if enrolled:
        return HttpsTransport(settings.server_url, state_dir.ca, cert_file=state_dir.cert, key_file=state_dir.key,
                              timeout=settings.request_timeout_seconds)
    return HttpsTransport(settings.server_url, settings.ca_file, timeout=settings.request_timeout_seconds)


class Enrollment:
    """Enrolls the device once, and re-enrolls it after its certificate ended; each failure
    goes to ``note_error`` (the technician's page shows it) and is retried with back-off."""

    def __init__(self, settings: AgentSettings, platform: Platform, state_dir: StateDir, renewer: CertificateRenewer,
                 transport_factory: TransportFactory, rng: random.Random, *, site: str, labels: dict[str, str],
                 note_error: Callable[[str], None]) -> None:
        self.settings, self.platform, self.dir, self.renewer = settings, platform, state_dir, renewer
        self.transport_factory, self.rng, self.site, self.labels = transport_factory, rng, site, labels
        self.note_error = note_error

    def _backoff(self) -> Backoff:
        return Backoff(self.settings.backoff_initial_seconds, self.settings.backoff_max_seconds, self.rng)

    def _bootstrap_token(self) -> str:
        if self.settings.bootstrap_token:
            return self.settings.bootstrap_token
        if self.settings.bootstrap_token_file is not None:
            try:
                return self.settings.bootstrap_token_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read bootstrap token file: {exc}") from exc
        raise ConfigError("not enrolled and no bootstrap token configured")

    async def enroll(self, state: AgentState, stop: asyncio.Event) -> AgentState:
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
        backoff = self._backoff()
        transport = self.transport_factory(self.settings, self.dir, False)
        try:
            while True:
                try:
                    response = await until_stopped(transport.enroll(request), stop)
                    break
                except TransportError as exc:
                    self.note_error(str(exc))
                    delay = backoff.next_delay()
                    log.warning("enrollment failed, retrying in %.1fs: %s", delay, exc)
                    await pause(stop, delay)
                    if stop.is_set():
                        raise Stopped from None
        finally:
            await transport.aclose()
        self.dir.save_credentials(response.certificate_pem.encode(), response.ca_pem.encode())
        state.device_id = response.device_id
        self.dir.save(state)
        log.info("enrolled as %s at site %s", response.device_id, self.site)
        return state

    async def reenroll(self, state: AgentState, stop: asyncio.Event) -> None:
        """The certificate ended (the device was off longer than it lives): ask to re-enroll,
        over server-authenticated TLS, until an operator approves it."""
        assert state.device_id is not None
        log.warning("the device certificate has ended: asking to re-enroll")
        backoff = self._backoff()
        transport = self.transport_factory(self.settings, self.dir, False)
        last: str | None = None
        try:
            while True:
                try:
                    if await until_stopped(self.renewer.reenroll(state.device_id, transport), stop):
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
                log.log(logging.DEBUG if why == last else logging.WARNING, "%s", why)
                last = why
                self.note_error(why)
                await pause(stop, backoff.next_delay())
                if stop.is_set():
                    raise Stopped
        finally:
            await transport.aclose()
