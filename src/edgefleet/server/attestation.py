"""The attestation service: TPM identity enrollment with credential activation, single-use
nonces, quote verification against the release policy, quarantine, and the gate.

Every refusal tells the device as little as possible (pass or fail, or a generic code); the
log and the device's attestation record name every failed check.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection
from tuf.api.metadata import Metadata, Targets

from edgefleet.attestation import reference
from edgefleet.attestation.credential import credential_digest, make_credential
from edgefleet.attestation.ekcert import load_vendor_pool, verify_ek_certificate
from edgefleet.attestation.structures import ClockInfo, PublicKey, parse_public
from edgefleet.attestation.verifier import (
    Evidence,
    Policy,
    QuoteRequest,
    Verdict,
    check_attestation_key,
    verify_quote,
)
from edgefleet.clock import Clock
from edgefleet.errors import ConfigError, Conflict, Forbidden, InvalidRequest, NotFound, StoreError, Unauthenticated
from edgefleet.releases.image import release_fields
from edgefleet.server.audit import AuditLog
from edgefleet.server.devicecache import DeviceCache
from edgefleet.server.metrics import Metrics
from edgefleet.server.nonces import NonceMint, ensure_secret_key
from edgefleet.server.repository import RepositoryService
from edgefleet.server.settings import ServerSettings
from edgefleet.store import Database
from edgefleet.store import approvals as approval_store
from edgefleet.store import attestation as store
from edgefleet.store.devices import DeviceAuth, changed, device_auth, get_device
from edgefleet.store.schema import Approval

log = logging.getLogger("edgefleet.attestation")
INLINE_EVENT_LOG = 64 * 1024  # bytes of event log verified on the event loop; larger ones in a thread


@dataclass(frozen=True)
class Challenge:
    id_object: bytes
    encrypted_secret: bytes


@dataclass(frozen=True)
class NonceIssued:
    nonce: bytes
    pcrs: tuple[int, ...]
    bank: str
    ttl: timedelta


POLICIES_HELD = 1024


@lru_cache(maxsize=64)
def load_reference_file(path: Path) -> reference.ReferenceValues:
    """A hardware model's reference values (read once per path).

    Raises ConfigError when the file is unreadable or invalid."""
    try:
        return reference.loads(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"attestation reference file {path}: {exc}") from exc
    except InvalidRequest as exc:
        raise ConfigError(f"attestation reference file {path}: {exc.message}") from exc


def ek_fingerprint(ek_public: bytes) -> str:
    return hashlib.sha256(ek_public).hexdigest()


@dataclass
class AttestationService:
    settings: ServerSettings
    db: Database
    clock: Clock
    repository: RepositoryService
    devices: DeviceCache
    metrics: Metrics
    audit: AuditLog | None = None  # quarantines are security decisions: recorded there

    def __post_init__(self) -> None:
        self.nonces = NonceMint(ensure_secret_key(self.settings.data_dir / "keys" / "nonce.key"))
        # Building an RSA key from its numbers costs more than verifying a signature with
        # it; a device quotes with the same attestation key every time.
        self.attestation_key = lru_cache(maxsize=65536)(parse_public)
        # One policy per release and hardware model while the published targets stay the
        # same: every quote of a release compares with one prepared object.
        self._policies: dict[tuple[str | None, str, Path | None], Policy] = {}
        self._policies_of: object = None

    async def enroll_identity(self, device_id: str, ek_public: bytes, ak_public: bytes,
                              ek_certificate: bytes | None = None) -> Challenge | None:
        """Bind a TPM identity to the device; returns the credential challenge, or None if
        this exact identity is already active (a reboot re-derives the same keys).

        Raises InvalidRequest (malformed keys, AK not an attestation key), Forbidden (EK not
        trusted) or Conflict (another identity is bound, or the EK belongs to another device).
        """
        ek, ak = parse_public(ek_public), parse_public(ak_public)
        problems = check_attestation_key(ak)
        if problems:
            raise InvalidRequest("; ".join(problems), code="not_an_attestation_key")
        fingerprint = ek_fingerprint(ek_public)
        trust = self.settings.ek_trust
        if trust == "approved" and fingerprint not in self.settings.approved_ek_fingerprints:
            raise Forbidden(f"EK {fingerprint} of {device_id} is not approved", code="ek_not_trusted")
        if trust == "vendor" and (why := await self._not_vendor_certified(ek_certificate, ek)) is not None:
            raise Forbidden(f"EK {fingerprint} of {device_id}: {why}", code="ek_not_trusted")
        if trust == "approval" and fingerprint not in self.settings.approved_ek_fingerprints and \
                (why := await self._not_vendor_certified(ek_certificate, ek)) is not None:
            await self._await_approval(device_id, fingerprint, why)  # not accepted by itself: an operator decides
        async with self.db.transaction(readonly=True) as conn:
            current = await store.identity(conn, device_id)
            owner = await store.identity_by_ek(conn, ek_public)
        if current is not None and current.state == "active":
            if current.ek_public == ek_public and current.ak_public == ak_public:
                return None
            raise Conflict(f"{device_id} is bound to another TPM identity; re-enrollment refused",
                           code="identity_mismatch")
        if owner is not None and owner.device_id != device_id:
            raise Conflict(f"EK {fingerprint} already belongs to {owner.device_id}", code="ek_in_use")
        credential = os.urandom(32)
        id_object, secret = make_credential(ek, credential, ak.name)
        async with self.db.transaction() as conn:
            await store.save_pending_identity(conn, device_id, ek_public, ak_public, credential_digest(credential),
                                              self.clock.now())
        return Challenge(id_object, secret)

    async def _not_vendor_certified(self, certificate: bytes | None, ek: PublicKey) -> str | None:
        """Why ``certificate`` does not make ``ek`` one a configured TPM vendor certified;
        None when it does."""
        roots = self.settings.tpm_vendor_roots
        if roots is None:
            return "no TPM vendor CA bundle is configured"
        if certificate is None:
            return "the TPM sent no EK certificate"
        pool = await asyncio.to_thread(load_vendor_pool, roots)
        try:
            verify_ek_certificate(certificate, ek, pool, self.clock.now())
        except Forbidden as exc:
            return exc.message
        return None

    async def _await_approval(self, device_id: str, fingerprint: str, why: str) -> None:
        """Return when an operator approved this EK for this device; otherwise raise
        Forbidden (``ek_pending_approval``, a request filed the first time, or
        ``ek_rejected``)."""
        now = self.clock.now()
        async with self.db.transaction() as conn:
            held = await approval_store.approval(conn, fingerprint)
            if held is not None and held.device_id != device_id and await get_device(conn, held.device_id):
                # Another enrolled device asked for this EK first: a second device presenting
                # it must not reset that device's request or decision.
                raise Conflict(f"EK {fingerprint} is already asked for by {held.device_id}", code="ek_in_use")
            if held is not None and held.device_id == device_id:
                if held.state == "approved":
                    return
                if held.state == "rejected":
                    raise Forbidden(f"EK {fingerprint} of {device_id} was rejected by {held.decided_by}",
                                    code="ek_rejected")
                filed = False
            else:
                device = await get_device(conn, device_id)
                facts = {} if device is None else {
                    "hardware_id": device.hardware_id, "site": device.site,
                    "hardware_type": str(device.inventory.get("hardware_type") or "")}
                await approval_store.request_approval(conn, "tpm", fingerprint, device_id, reason=why, facts=facts,
                                                      now=now)
                filed = True
        if filed:
            log.warning("EK %s of %s waits for an operator's approval: %s", fingerprint, device_id, why)
            if self.audit is not None:
                await self.audit.record(actor="enrollment", action="ek approval requested", subject=device_id,
                                        outcome="pending", details={"fingerprint": fingerprint, "reason": why})
        raise Forbidden(f"EK {fingerprint} of {device_id} waits for an operator's approval ({why}): "
                        f"edgefleet devices approve {device_id}", code="ek_pending_approval")

    async def decide_approval(self, device_id: str, fingerprint: str | None, *, approve: bool, by: str) -> Approval:
        """Approve or reject a device's pending request (a TPM to trust, a re-enrollment).
        Raises NotFound when none is pending."""
        async with self.db.transaction() as conn:
            decided = await approval_store.decide(conn, device_id, fingerprint, approve=approve, by=by,
                                                  now=self.clock.now())
        if decided is None:
            raise NotFound(f"nothing of {device_id} waits for approval"
                           + (f" with fingerprint {fingerprint}" if fingerprint else ""))
        log.warning("%s %s the %s request %s of %s", by, decided.state, decided.kind, decided.fingerprint, device_id)
        return decided

    async def activate(self, device_id: str, credential: bytes) -> None:
        """Raises Unauthenticated when the credential is not the one the TPM should have
        recovered (the AK is not in the same TPM as the EK)."""
        async with self.db.transaction() as conn:
            if not await store.activate_identity(conn, device_id, credential_digest(credential), self.clock.now()):
                raise Unauthenticated(f"credential activation of {device_id} failed", code="activation_failed")
            change = await conn.run_sync(changed, device_id, self.clock.now())  # its auth now has a TPM identity
        self.devices.forget(device_id)
        self.devices.applied.add(change)
        log.info("TPM identity of %s activated (EK and AK proven to share a TPM)", device_id)

    def issue_nonce(self, device_id: str, auth: DeviceAuth) -> NonceIssued:
        """A nonce bound to the device, expiring after ``attestation_nonce_seconds``
        (``server/nonces.py``: nothing is stored until it is spent). Raises Conflict
        when the device has no active TPM identity (as its cached auth says)."""
        if not auth.tpm_identity:
            raise Conflict(f"{device_id} has no active TPM identity", code="not_enrolled")
        ttl = timedelta(seconds=self.settings.attestation_nonce_seconds)
        nonce = self.nonces.issue(device_id, self.clock.now() + ttl)
        return NonceIssued(nonce, tuple(self.settings.attestation_pcrs), "sha256", ttl)

    async def prune_nonces(self, interval: float) -> None:
        """Forget spent nonces once they have expired (an expired nonce is refused anyway)."""
        while True:
            await asyncio.sleep(interval)
            try:
                async with self.db.transaction() as conn:
                    await store.prune_nonces(conn, self.clock.now())
            except StoreError as exc:
                log.warning("could not prune spent attestation nonces: %s", exc)

    def policy_for(self, running_version: str | None, inventory: dict[str, Any]) -> tuple[Policy, str | None]:
        """The release the device runs (its last report, else its enrollment inventory) and
        the PCR values that signed release and its hardware model require. A device that
        claims another release must then match that release's reference measurements; a
        release being rolled out to it is not the yardstick until it has installed it.
        Built once per release and hardware model for each version of the published
        targets (a new version starts afresh)."""
        release = running_version or inventory.get("os_version")
        hardware = str(inventory.get("hardware_type"))
        published = self.repository.published()
        if published is not self._policies_of:
            self._policies, self._policies_of = {}, published
        # The hardware model's reference file is named in the key: pointing the model at
        # another file (a re-recorded golden boot) takes effect at the next quote.
        golden = self.settings.attestation_reference_files.get(hardware)
        key = (release, hardware, golden)
        policy = self._policies.get(key)
        if policy is None:
            policy = self._build_policy(release, hardware, golden, published)
            if len(self._policies) >= POLICIES_HELD:  # device-reported names: bounded, oldest first out
                del self._policies[next(iter(self._policies))]
            self._policies[key] = policy
        return policy, release

    def _build_policy(self, release: str | None, hardware: str, golden: Path | None,
                      published: Metadata[Targets] | None) -> Policy:
        expected: dict[int, bytes] = {}
        baseline = self.settings.attestation_baselines.get(hardware, {})
        expected.update({int(pcr): bytes.fromhex(value) for pcr, value in baseline.items()})
        events = None
        if golden is not None:
            events = load_reference_file(golden)
        if release and published is not None:
            for target in published.signed.targets.values():
                fields = release_fields(target)
                if fields.get("version") != release:
                    continue
                measurements = fields.get("measurements")
                if isinstance(measurements, dict):
                    expected.update({int(pcr): bytes.fromhex(str(v)) for pcr, v in measurements.items()})
                predicted = fields.get("reference_values")
                if predicted is not None:
                    try:
                        signed = reference.from_document(predicted)
                    except InvalidRequest as exc:  # signed by the release owners, but unreadable
                        log.error("release %s: %s", release, exc.message)
                        continue
                    events = signed if events is None else signed.merged(events)
        if events is not None:
            expected.update(events.values())
        return Policy(expected, events)

    async def submit_quote(self, device_id: str, nonce: bytes, evidence: Evidence) -> bool:
        """Verify a quote; a failure quarantines the device. Returns pass or fail only.

        Raises Conflict for a wrong, replayed, expired or other device's nonce (nothing is
        recorded: the request is simply refused).
        """
        now = self.clock.now()
        expires = self.nonces.expiry(device_id, nonce)
        if expires is None or expires <= now:
            raise Conflict(f"nonce refused for {device_id} (not issued to it, or expired)", code="nonce_refused")
        context = await self.db.read(store.quote_context, device_id)
        if context is None:
            raise Unauthenticated(f"{device_id} is not enrolled", code="unknown_device")
        if context.identity_state != "active" or context.ak_public is None:
            raise Conflict(f"{device_id} has no active TPM identity", code="not_enrolled")
        policy, release = self.policy_for(context.running_version, context.inventory)
        previous_clock = ClockInfo(context.clock or 0, context.reset_count or 0, context.restart_count or 0,
                                   True) if context.judged else None
        was_quarantined = bool(context.quarantined)
        request = QuoteRequest(nonce, tuple(self.settings.attestation_pcrs))
        ak = self.attestation_key(context.ak_public)
        if len(evidence.event_log) <= INLINE_EVENT_LOG:
            # A boot's log (about a kilobyte) verifies in about 0.1 ms: less than handing
            # it to a thread and back costs. A large one must not hold the event loop.
            verdict = verify_quote(ak, request, evidence, policy, previous_clock)
        else:
            verdict = await asyncio.to_thread(verify_quote, ak, request, evidence, policy, previous_clock)
        if not policy.expected:
            # Stricter than "authentic and fresh": a quote proves nothing about what booted
            # unless there is something to compare it with.
            verdict = Verdict((*verdict.failures, f"policy: no reference measurements for release {release!r} "
                               "or hardware baseline"), verdict.clock, verdict.pcr_values)
        clock = verdict.clock or previous_clock
        quarantined = was_quarantined or not verdict.passed
        read_at = self.devices.generation
        change, auth = await self.db.write(_record_verdict, device_id, nonce, expires, now, verdict, release,
                                           quarantined, clock)
        # This process knows the device's new auth (attested, or quarantined): cached now,
        # unless another eviction overlapped the read. Its long poll has nothing new to hear.
        if auth is None or not self.devices.put(device_id, auth, read_at):
            self.devices.forget(device_id)
        self.devices.applied.add(change)
        self.metrics.attestations.labels("passed" if verdict.passed else "failed").inc()
        if verdict.passed:
            log.info("attestation of %s passed (release %s)", device_id, release)
        else:
            log.warning("attestation of %s FAILED, device quarantined: %s", device_id, "; ".join(verdict.failures))
            if not was_quarantined:
                self.metrics.quarantines.inc()
                if self.audit is not None:
                    await self.audit.record("attestation", "quarantine", subject=device_id,
                                            details={"release": release, "failures": list(verdict.failures)})
        return verdict.passed

    def gate(self, auth: DeviceAuth) -> None:
        """Refuse configuration to quarantined devices, and, when attestation is required,
        to devices without a fresh passing attestation (403, like EVE-OS)."""
        if auth.quarantined:
            raise Forbidden("device is quarantined after a failed attestation", code="quarantined")
        if self.settings.attestation_required and not self.fresh(auth):
            raise Forbidden("a fresh passing attestation is required", code="attestation_required")

    def expires_in(self, auth: DeviceAuth) -> float | None:
        """Seconds left of the device's fresh attestation (None where none is required)."""
        if not self.settings.attestation_required:
            return None
        if auth.attested_at is None:
            return 0.0
        left = self.settings.attestation_max_age_seconds - (self.clock.now() - auth.attested_at).total_seconds()
        return round(max(0.0, left), 3)

    def fresh(self, auth: DeviceAuth) -> bool:
        max_age = timedelta(seconds=self.settings.attestation_max_age_seconds)
        return auth.attested_at is not None and self.clock.now() - auth.attested_at <= max_age

    async def release_quarantine(self, device_id: str) -> None:
        async with self.db.transaction() as conn:
            await store.release_quarantine(conn, device_id)
            await conn.run_sync(changed, device_id, self.clock.now())
        self.devices.forget(device_id)


def _record_verdict(conn: Connection, device_id: str, nonce: bytes, expires: datetime, now: datetime,
                    verdict: Verdict, release: str | None, quarantined: bool,
                    clock: ClockInfo | None) -> tuple[int, DeviceAuth | None]:
    """Spend the nonce and store the verdict it earned, in one transaction: of two
    submissions of one nonce, the second finds it spent and stores nothing. Returns the
    change feed entry written and the device's auth as it now is."""
    if not store.spend_nonce(conn, nonce.hex(), device_id, expires, now):
        raise Conflict(f"nonce refused for {device_id} (already used)", code="nonce_refused")
    failures: dict[str, list[str]] = {"checks": list(verdict.failures)}
    if quarantined:  # why, kept until an operator releases it (read only on this rare path)
        failures["quarantined_for"] = store.quarantine_reason(conn, device_id) or list(verdict.failures)
    store.save_status(conn, device_id, passed=verdict.passed, attested_at=now,
                      failures=failures, release=release, quarantined=quarantined,
                      reset_count=clock.reset_count if clock else 0, restart_count=clock.restart_count if clock else 0,
                      clock=clock.clock if clock else 0)
    return changed(conn, device_id, now), device_auth(conn, device_id)
