"""How a device (an agent, or a hub enrolled as one) talks to the control plane: one
interface, one HTTPS implementation.

Error mapping at the boundary (httpx never leaks past this module): could not talk, or
the server failed (5xx) -> TransportError, worth retrying; the server refused (4xx) ->
ServerRefused, which retrying will not fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from pydantic import ValidationError

from edgefleet import __version__
from edgefleet.errors import BadAnswer, TransportError
from edgefleet.protocol.base import Strict
from edgefleet.protocol.telemetry import TelemetryAck
from edgefleet.protocol.v1 import (
    AttestationIdentityRequest,
    AttestationResult,
    CertificateRenewed,
    CheckInAnswer,
    CredentialActivation,
    CredentialChallenge,
    EnrollRequest,
    EnrollResponse,
    NonceIssuedView,
    QuoteSubmission,
    Reenroll,
    ReenrollAnswer,
    RenewCertificate,
    StatusAck,
    StatusReport,
    WorkloadToken,
)
from edgefleet.util.cancelsafe import CancelSafeTransport
from edgefleet.util.http import checked
from edgefleet.web.tls import tls_context

if TYPE_CHECKING:
    from edgefleet.web.channel import Channel


class DeviceTransport(Protocol):
    async def enroll(self, request: EnrollRequest) -> EnrollResponse: ...

    async def fetch_desired(self, device_id: str, known: int, wait: float) -> CheckInAnswer | None:
        """The desired state if newer than ``known`` and the remote sessions offered, else
        None (nothing new)."""
        ...

    async def open_session(self, device_id: str, session_id: str) -> Channel:
        """The device's side of a remote session its check-in offered."""
        ...

    async def report_status(self, device_id: str, report: StatusReport) -> StatusAck: ...

    async def bind_identity(self, device_id: str, identity: AttestationIdentityRequest) -> CredentialChallenge | None:
        """Present the TPM's EK and AK; the credential to activate, or None when the
        identity is bound already."""
        ...

    async def activate_credential(self, device_id: str, activation: CredentialActivation) -> None: ...

    async def attestation_nonce(self, device_id: str) -> NonceIssuedView: ...

    async def submit_quote(self, device_id: str, quote: QuoteSubmission) -> AttestationResult: ...

    async def workload_token(self, device_id: str, workload: str, audience: str) -> WorkloadToken: ...

    async def ship_telemetry(self, device_id: str, gzipped: bytes) -> TelemetryAck:
        """POST a gzip-compressed telemetry batch; how far the receiver has stored."""
        ...

    async def renew_certificate(self, device_id: str, request: RenewCertificate) -> CertificateRenewed: ...

    async def reenroll(self, device_id: str, request: Reenroll) -> ReenrollAnswer:
        """With an expired certificate (server-authenticated TLS): pending, or the new one."""
        ...

    async def reconnect(self) -> None:
        """Drop pooled connections: the next request shakes hands afresh (with a renewed
        certificate)."""
        ...

    async def aclose(self) -> None: ...


KEEPALIVE_SECONDS = 90.0  # above a jittered 60 s check-in interval, below the server's 120 s


class HttpsTransport:
    """mTLS once enrolled (``cert_file``/``key_file``), server-authenticated TLS before."""

    def __init__(
        self, server_url: str, ca_file: Path, *, cert_file: Path | None = None, key_file: Path | None = None,
        timeout: float = 30.0,
    ) -> None:
        self._context = tls_context(ca_file, cert_file, key_file)  # reloaded in place on renewal
        self._base_url, self._timeout = server_url.rstrip("/"), timeout
        self._client = self._new_client()

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self._base_url,
            timeout=self._timeout,
            headers={"user-agent": f"edgefleet-agent/{__version__}"},
            # The agent drops an idle connection before the server would (it keeps them 120 s
            # by default): a request never races the server closing the connection under it.
            # Requests are cancelled whenever the agent stops: no socket may outlive that.
            transport=CancelSafeTransport(verify=self._context, limits=httpx.Limits(
                max_connections=2, max_keepalive_connections=1, keepalive_expiry=KEEPALIVE_SECONDS)),
        )

    async def _request(self, method: str, path: str, *, timeout: float | None = None, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._client.request(method, path, timeout=timeout or self._timeout, **kwargs)
        except httpx.TransportError as exc:
            raise TransportError(f"{method} {path}: {exc.__class__.__name__}: {exc}") from exc
        return checked(response, method, path)

    @staticmethod
    def _parse(model: type[Any], response: httpx.Response) -> Any:
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise BadAnswer(f"unexpected {model.__name__} from server: {exc}") from exc

    async def enroll(self, request: EnrollRequest) -> EnrollResponse:
        response = await self._request("POST", "/api/v1/enroll", json=request.model_dump(mode="json"))
        result: EnrollResponse = self._parse(EnrollResponse, response)
        return result

    async def fetch_desired(self, device_id: str, known: int, wait: float) -> CheckInAnswer | None:
        params: dict[str, Any] = {"known": known}
        if wait > 0:
            params["wait"] = wait
        response = await self._request(
            "GET", f"/api/v1/devices/{device_id}/desired", params=params, timeout=self._timeout + wait
        )
        if response.status_code == 204:
            return None
        result: CheckInAnswer = self._parse(CheckInAnswer, response)
        return result

    async def open_session(self, device_id: str, session_id: str) -> Channel:
        from edgefleet.web.channel import connect_channel, websocket_url  # WebSockets: with the first session

        url = websocket_url(self._base_url, f"/api/v1/devices/{device_id}/sessions/{session_id}")
        return await connect_channel(url, self._context, headers={"user-agent": f"edgefleet-agent/{__version__}"},
                                     timeout=self._timeout)

    async def report_status(self, device_id: str, report: StatusReport) -> StatusAck:
        response = await self._request(
            "POST", f"/api/v1/devices/{device_id}/status", json=report.model_dump(mode="json")
        )
        result: StatusAck = self._parse(StatusAck, response)
        return result

    async def ship_telemetry(self, device_id: str, gzipped: bytes) -> TelemetryAck:
        response = await self._request("POST", f"/api/v1/devices/{device_id}/telemetry", content=gzipped,
                                       headers={"content-type": "application/json", "content-encoding": "gzip"})
        result: TelemetryAck = self._parse(TelemetryAck, response)
        return result

    async def _attestation(self, device_id: str, step: str, body: Strict | None) -> httpx.Response:
        return await self._request("POST", f"/api/v1/devices/{device_id}/attestation/{step}",
                                   json=None if body is None else body.model_dump(mode="json", exclude_none=True))

    async def bind_identity(self, device_id: str, identity: AttestationIdentityRequest) -> CredentialChallenge | None:
        response = await self._attestation(device_id, "identity", identity)
        if response.status_code == 204:
            return None
        result: CredentialChallenge = self._parse(CredentialChallenge, response)
        return result

    async def activate_credential(self, device_id: str, activation: CredentialActivation) -> None:
        await self._attestation(device_id, "activate", activation)

    async def attestation_nonce(self, device_id: str) -> NonceIssuedView:
        result: NonceIssuedView = self._parse(NonceIssuedView, await self._attestation(device_id, "nonce", None))
        return result

    async def submit_quote(self, device_id: str, quote: QuoteSubmission) -> AttestationResult:
        result: AttestationResult = self._parse(AttestationResult, await self._attestation(device_id, "quote", quote))
        return result

    async def workload_token(self, device_id: str, workload: str, audience: str) -> WorkloadToken:
        response = await self._request("GET", f"/api/v1/devices/{device_id}/workload-token",
                                       params={"workload": workload, "audience": audience})
        result: WorkloadToken = self._parse(WorkloadToken, response)
        return result

    async def renew_certificate(self, device_id: str, request: RenewCertificate) -> CertificateRenewed:
        response = await self._request("POST", f"/api/v1/devices/{device_id}/certificate",
                                       json=request.model_dump(mode="json"))
        result: CertificateRenewed = self._parse(CertificateRenewed, response)
        return result

    async def reenroll(self, device_id: str, request: Reenroll) -> ReenrollAnswer:
        response = await self._request("POST", f"/api/v1/devices/{device_id}/reenroll",
                                       json=request.model_dump(mode="json"))
        result: ReenrollAnswer = self._parse(ReenrollAnswer, response)
        return result

    async def reconnect(self) -> None:
        old, self._client = self._client, self._new_client()
        await old.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()
