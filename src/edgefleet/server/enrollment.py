"""Device enrollment: a single-use bootstrap token plus a CSR become a device certificate.

Order matters: everything that can be checked without the database (token shape, CSR) is
checked first, so a bad CSR never burns a token; then one transaction spends the token and
creates the device, so a refusal anywhere leaves both untouched.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping

from edgefleet.credentials import TokenKind, parse_token
from edgefleet.errors import Conflict, Forbidden, StoreError, Unauthenticated
from edgefleet.pki import issue_device_certificate
from edgefleet.protocol.v1 import DEVICE_LABEL_PREFIX, EnrollRequest, EnrollResponse
from edgefleet.server.state import ServerState
from edgefleet.store.devices import hardware_id_taken, insert_device
from edgefleet.store.tokens import claim_bootstrap, why_bootstrap_refused

log = logging.getLogger("edgefleet.server")


def device_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """A device's own labels, namespaced (the inventory's keys are short enough for it)."""
    return {DEVICE_LABEL_PREFIX + key: value for key, value in labels.items()}


def new_device_id() -> str:
    return "dev-" + secrets.token_hex(10)


async def enroll_device(state: ServerState, request: EnrollRequest) -> EnrollResponse:
    """Raises:
        Unauthenticated: malformed, unknown, used or expired token.
        InvalidRequest: bad CSR.
        Forbidden: the device claims another site than its token was issued for.
        Conflict: a device with this hardware id is already enrolled.
    """
    now = state.clock.now()
    try:
        token = parse_token(TokenKind.BOOTSTRAP, request.token)
    except Unauthenticated:
        state.metrics.enrollments.labels("refused").inc()
        raise
    device_id = new_device_id()
    cert_pem, cert = issue_device_certificate(  # the site is checked against the token's below
        state.ca, request.csr_pem, device_id, now, state.settings.device_cert_days, site=request.inventory.site
    )
    inventory = request.inventory
    try:
        async with state.db.transaction() as conn:
            claimed = await claim_bootstrap(conn, token, device_id, now)
            if claimed is None:
                raise Unauthenticated("bootstrap token refused", code="invalid_bootstrap_token")
            if claimed.site != inventory.site:
                raise Forbidden(
                    f"token {token.id} is for site {claimed.site}, device claims {inventory.site}",
                    code="site_mismatch",
                )
            if claimed.kind == "hub" and state.settings.hub_cert_days != state.settings.device_cert_days:
                cert_pem, cert = issue_device_certificate(state.ca, request.csr_pem, device_id, now,
                                                          state.settings.hub_cert_days, site=inventory.site)
            if await hardware_id_taken(conn, inventory.hardware_id):
                raise Conflict(f"hardware id {inventory.hardware_id} is already enrolled", code="already_enrolled")
            await insert_device(
                conn,
                id=device_id,
                hardware_id=inventory.hardware_id,
                site=inventory.site,
                # Only the operator's labels (on the token) select rollouts and policy: what the
                # device says about itself is kept under ``device.``, where no selector of
                # the operator's looks unless it names it.
                labels={**device_labels(inventory.labels), **claimed.labels},
                inventory=inventory.model_dump(exclude={"labels"}),
                kind=claimed.kind,
                cert_serial=cert.serial,
                cert_not_after=cert.not_after,
                enrolled_at=now,
                status_seq=0,
                health="unknown",
                update_state="idle",
                desired_version=0,
                desired={},
            )
    except Unauthenticated as exc:
        state.metrics.enrollments.labels("refused").inc()
        async with state.db.transaction() as conn:
            reason = await why_bootstrap_refused(conn, token, now)
        exc.message = f"bootstrap token {token.id} refused: {reason}"
        if reason != "unknown token id":  # a real token misused (spent, revoked, guessed secret): recorded
            await state.audit.record("enrollment", "enroll", subject=inventory.hardware_id, outcome="refused",
                                     details={"token_id": token.id, "reason": reason})
        raise
    except StoreError as exc:
        # A concurrent enrollment of the same hardware id lost the race on the unique index.
        state.metrics.enrollments.labels("refused").inc()
        if exc.code == "integrity_error":
            raise Conflict(f"hardware id {inventory.hardware_id} is already enrolled", code="already_enrolled") from exc
        raise
    except (Forbidden, Conflict):
        state.metrics.enrollments.labels("refused").inc()
        raise
    state.metrics.enrollments.labels("enrolled").inc()
    await state.audit.record("enrollment", "enroll", subject=device_id,
                             details={"token_id": token.id, "site": inventory.site, "kind": claimed.kind,
                                      "hardware_id": inventory.hardware_id})
    log.info("enrolled %s (hardware %s, site %s) with token %s", device_id, inventory.hardware_id,
             inventory.site, token.id)
    return EnrollResponse(device_id=device_id, certificate_pem=cert_pem.decode(), ca_pem=state.ca.cert_pem.decode())
