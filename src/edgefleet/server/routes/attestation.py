"""Device API v1 for attestation (mTLS): TPM identity, credential activation, nonces,
quotes, workload tokens; and the public JWKS for services that verify the tokens."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from starlette.responses import JSONResponse

from edgefleet.attestation.verifier import Evidence
from edgefleet.errors import Forbidden, InvalidRequest
from edgefleet.protocol.v1 import (
    AttestationIdentityRequest,
    AttestationResult,
    CredentialActivation,
    CredentialChallenge,
    NonceIssuedView,
    QuoteSubmission,
    WorkloadToken,
    WorkloadTokenQuery,
)
from edgefleet.server.auth import AuthenticatedDevice, CurrentDevice
from edgefleet.server.bodies import bounded_model
from edgefleet.server.state import server_state
from edgefleet.store.devices import device_site

router = APIRouter(tags=["attestation"])
MAX_QUOTE_BODY = 4 * 1024 * 1024


def _b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise InvalidRequest(f"{what} is not base64", code="invalid_request") from exc


@router.post("/api/v1/devices/{device_id}/attestation/identity", responses={204: {"description": "already active"}})
async def identity(device: CurrentDevice, body: AttestationIdentityRequest, request: Request) -> Response:
    """Present the TPM's EK and AK; answers the credential the TPM must activate."""
    certificate = None if body.ek_certificate is None else _b64(body.ek_certificate, "ek_certificate")
    challenge = await server_state(request).attestation.enroll_identity(
        device.id, _b64(body.ek_public, "ek_public"), _b64(body.ak_public, "ak_public"), certificate)
    if challenge is None:
        return Response(status_code=204)
    view = CredentialChallenge(id_object=base64.b64encode(challenge.id_object).decode(),
                               encrypted_secret=base64.b64encode(challenge.encrypted_secret).decode())
    return JSONResponse(view.model_dump())


@router.post("/api/v1/devices/{device_id}/attestation/activate", status_code=204)
async def activate(device: CurrentDevice, body: CredentialActivation, request: Request) -> Response:
    """Return the activated credential: proves the AK and the EK share a TPM."""
    await server_state(request).attestation.activate(device.id, _b64(body.credential, "credential"))
    return Response(status_code=204)


def challenge(device: AuthenticatedDevice, request: Request) -> NonceIssuedView:
    """A single-use nonce for this device, and the PCRs to quote. Raises Conflict when
    the device has no active TPM identity."""
    issued = server_state(request).attestation.issue_nonce(device.id, device.auth)
    return NonceIssuedView(nonce=issued.nonce.hex(), pcrs=list(issued.pcrs), bank=issued.bank,
                           expires_in_seconds=issued.ttl.total_seconds())


@router.post("/api/v1/devices/{device_id}/attestation/nonce")
async def nonce(device: CurrentDevice, request: Request) -> NonceIssuedView:
    """A single-use nonce for this device, and the PCRs to quote."""
    return challenge(device, request)


@router.post("/api/v1/devices/{device_id}/attestation/quote")
async def quote(device: CurrentDevice, request: Request) -> AttestationResult:
    """Submit a quote and the boot event log; the answer is pass or fail, nothing more."""
    body = await bounded_model(request, QuoteSubmission, MAX_QUOTE_BODY)
    try:
        values = {int(k): bytes.fromhex(v) for k, v in body.pcr_values.items()}
        nonce_bytes = bytes.fromhex(body.nonce)
    except ValueError as exc:
        raise InvalidRequest("PCR values and nonce are hex", code="invalid_request") from exc
    evidence = Evidence(_b64(body.attest, "attest"), _b64(body.signature, "signature"), values,
                        _b64(body.event_log, "event_log"))
    state = server_state(request)
    passed = await state.attestation.submit_quote(device.id, nonce_bytes, evidence)
    if not passed:
        state.rollouts.wake()  # a rollout halts on it now, not at its next tick
    return AttestationResult(passed=passed)


@router.get("/api/v1/devices/{device_id}/workload-token")
async def workload_token(device: CurrentDevice, request: Request,
                         query: Annotated[WorkloadTokenQuery, Query()]) -> WorkloadToken:
    """A short-lived JWT-SVID for one of the device's workloads, for one audience; only
    while the device's last attestation is fresh and passed."""
    state = server_state(request)
    if device.auth.quarantined or not state.attestation.fresh(device.auth):
        raise Forbidden(f"{device.id} has no fresh passing attestation", code="attestation_required")
    site = device.site or await state.db.read(device_site, device.id)
    if site is None:
        raise Forbidden(f"{device.id} is not enrolled", code="unknown_device")
    now = state.clock.now()
    token, spiffe_id, expires = state.workload.issue(
        site=site, device_id=device.id, workload=query.workload, audience=query.audience,
        release=device.auth.attested_release, now=now)
    return WorkloadToken(token=token, spiffe_id=spiffe_id, expires_at=expires,
                         expires_in_seconds=(expires - now).total_seconds())


@router.get("/.well-known/jwks.json")
async def jwks(request: Request) -> JSONResponse:
    """Public keys that verify workload tokens: the signing key, the next one ahead of
    its first use, and the previous one while tokens it signed may still be valid."""
    state = server_state(request)
    return JSONResponse(state.workload.jwks(state.clock.now()))
