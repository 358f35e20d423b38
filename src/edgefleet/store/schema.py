"""Tables. Every change here needs a migration in ``migrations/versions`` (a test checks)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer, LargeBinary, MetaData, String, TypeDecorator
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite has no time zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC) if dialect.name != "sqlite" else value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[str]: JSON(),
                           list[dict[str, Any]]: JSON()}


class Device(Base):
    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    hardware_id: Mapped[str] = mapped_column(String(128), unique=True)
    site: Mapped[str] = mapped_column(String(64), index=True)
    labels: Mapped[dict[str, Any]]
    inventory: Mapped[dict[str, Any]]
    # "device", or "hub" (a site's regional hub): from the operator's bootstrap token, never
    # from what the enrolling machine says. Hubs are not fleet devices: no rollout, count or
    # device list takes them.
    kind: Mapped[str] = mapped_column(String(16), index=True, server_default="device", default="device")
    cert_serial: Mapped[str] = mapped_column(String(64))
    cert_not_after: Mapped[datetime]
    # A renewed certificate the device has not presented yet: both work until it does, then
    # only the new one (the old goes on the revocation list).
    next_cert_serial: Mapped[str | None] = mapped_column(String(64))
    next_cert_not_after: Mapped[datetime | None]
    enrolled_at: Mapped[datetime]
    last_seen_at: Mapped[datetime | None]
    status_seq: Mapped[int] = mapped_column(BigInteger, default=0)
    status: Mapped[dict[str, Any] | None]
    status_at: Mapped[datetime | None]
    running_version: Mapped[str | None] = mapped_column(String(128))
    health: Mapped[str] = mapped_column(String(16), default="unknown")
    update_state: Mapped[str] = mapped_column(String(32), default="idle")
    desired_version: Mapped[int] = mapped_column(Integer, default=0)
    desired: Mapped[dict[str, Any]]
    desired_at: Mapped[datetime | None]


class DeviceChange(Base):
    """Append-only feed of writes that invalidate a device's cached check-in state, read
    by every server process sharing the database (see server/devicecache.py)."""

    __tablename__ = "device_changes"
    __table_args__ = {"sqlite_autoincrement": True}  # never reuse an id a process has seen

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    device_id: Mapped[str] = mapped_column(String(64))
    changed_at: Mapped[datetime]


class DirectorState(Base):
    """The director's signed metadata for one device (Uptane per-device targets)."""

    __tablename__ = "director_state"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    release: Mapped[str | None] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    targets: Mapped[bytes] = mapped_column(LargeBinary)
    snapshot: Mapped[bytes] = mapped_column(LargeBinary)
    timestamp_version: Mapped[int] = mapped_column(Integer)
    timestamp: Mapped[bytes] = mapped_column(LargeBinary)
    timestamp_expires: Mapped[datetime]
    assigned_at: Mapped[datetime]


class AttestationIdentity(Base):
    """A device's TPM identity: its EK and AK, bound at enrollment by credential activation."""

    __tablename__ = "attestation_identities"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    ek_public: Mapped[bytes] = mapped_column(LargeBinary, index=True)
    ak_public: Mapped[bytes] = mapped_column(LargeBinary)
    credential_digest: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # pending | active
    created_at: Mapped[datetime]
    activated_at: Mapped[datetime | None]


class AttestationNonce(Base):
    __tablename__ = "attestation_nonces"

    nonce: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class AttestationStatus(Base):
    """The last verdict per device; ``quarantined`` stays until an operator releases it."""

    __tablename__ = "attestation_status"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    passed: Mapped[bool]
    attested_at: Mapped[datetime]
    failures: Mapped[dict[str, Any]]
    release: Mapped[str | None] = mapped_column(String(128))
    reset_count: Mapped[int] = mapped_column(BigInteger)
    restart_count: Mapped[int] = mapped_column(BigInteger)
    clock: Mapped[int] = mapped_column(BigInteger)
    quarantined: Mapped[bool]


class BootstrapToken(Base):
    __tablename__ = "bootstrap_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    site: Mapped[str] = mapped_column(String(64))
    labels: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(128))
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]
    device_id: Mapped[str | None] = mapped_column(String(64))
    revoked_at: Mapped[datetime | None]
    kind: Mapped[str] = mapped_column(String(16), server_default="device", default="device")  # what it enrolls


class AdminToken(Base):
    __tablename__ = "admin_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    scope: Mapped[str | None] = mapped_column(String(1000))  # None: the whole fleet (protocol/scope.py)


class AdvisoryRow(Base):
    """A vulnerability advisory (OSV), the ecosystems' packages it names kept as JSON."""

    __tablename__ = "advisories"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    modified: Mapped[datetime]
    severity: Mapped[str] = mapped_column(String(16))
    summary: Mapped[str] = mapped_column(String(500))
    aliases: Mapped[list[str]]
    affected: Mapped[list[dict[str, Any]]]
    imported_at: Mapped[datetime]  # first imported: kept when a newer version replaces it
    published: Mapped[datetime | None]
    stored_at: Mapped[datetime | None]  # last stored (null: before migration 0019)


class AdvisoryPackage(Base):
    """Which advisories name a package (ecosystem without its release, package name)."""

    __tablename__ = "advisory_packages"

    ecosystem: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(256), primary_key=True)
    advisory_id: Mapped[str] = mapped_column(String(128), primary_key=True)


class VexStatement(Base):
    """An OpenVEX statement: a vulnerability's status for a product (a package URL)."""

    __tablename__ = "vex_statements"

    vulnerability: Mapped[str] = mapped_column(String(128), primary_key=True)
    product: Mapped[str] = mapped_column(String(512), primary_key=True)
    status: Mapped[str] = mapped_column(String(32))
    justification: Mapped[str] = mapped_column(String(500))
    imported_at: Mapped[datetime]


class KnownExploited(Base):
    """A vulnerability known to be exploited in the wild (an entry of a KEV catalogue),
    and when the fleet was alerted that it runs it."""

    __tablename__ = "known_exploited"

    cve: Mapped[str] = mapped_column(String(128), primary_key=True)
    date_added: Mapped[str] = mapped_column(String(32))  # as the catalogue gives it
    note: Mapped[str] = mapped_column(String(500))
    imported_at: Mapped[datetime]
    alerted_at: Mapped[datetime | None]


class SpentIdToken(Base):
    """An ID token exchanged for an admin token (``POST /api/v1/auth/oidc/token``): kept
    until it expires, so the same token signs in once."""

    __tablename__ = "spent_id_tokens"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the token, hex
    subject: Mapped[str] = mapped_column(String(256))
    expires_at: Mapped[datetime] = mapped_column(index=True)


class UpdateEventRow(Base):
    """A device's A/B update transitions as the device reported them, numbered per device."""

    __tablename__ = "update_events"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    phase: Mapped[str] = mapped_column(String(32))
    release: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(String(1000))
    at: Mapped[datetime]
    received_at: Mapped[datetime]


class GitOpsSync(Base):
    """The last accepted commit of each sync: the desired state in force comes from it."""

    __tablename__ = "gitops_syncs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    accepted_commit: Mapped[str] = mapped_column(String(64))
    accepted_at: Mapped[datetime]


class GitOpsCommit(Base):
    """Every commit a sync processed, with the verdict and all reasons: once, except that a
    commit accepted long ago is refused when the branch moves back to it."""

    __tablename__ = "gitops_commits"

    sync: Mapped[str] = mapped_column(String(64), primary_key=True)
    commit_sha: Mapped[str] = mapped_column(String(64), primary_key=True)
    accepted: Mapped[bool] = mapped_column(primary_key=True)
    reasons: Mapped[dict[str, Any]]
    processed_at: Mapped[datetime]


class Alert(Base):
    """Something an engineer must hear about, with its webhook delivery state."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)
    subject: Mapped[str] = mapped_column(String(128))
    message: Mapped[str] = mapped_column(String(2000))
    details: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]


class DriftStatus(Base):
    """Per device: does what it reports running match its desired configuration?"""

    __tablename__ = "drift_status"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))  # in_sync | out_of_sync | unknown
    differences: Mapped[dict[str, Any]]
    since: Mapped[datetime]
    heals: Mapped[int] = mapped_column(Integer, default=0)


class RolloutRow(Base):
    """A rollout: its spec, the planner's state, and a version for compare-and-swap, so
    two controllers can never both act on the same step."""

    __tablename__ = "rollouts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    release: Mapped[str] = mapped_column(String(128))
    selector: Mapped[dict[str, Any]]
    spec: Mapped[dict[str, Any]]
    state: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(32), index=True)
    version: Mapped[int] = mapped_column(BigInteger)
    previous: Mapped[dict[str, Any]]  # device -> release it ran before the rollout told it
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class RolloutEvent(Base):
    """The audit trail: every decision of the controller and every operator verb, with why."""

    __tablename__ = "rollout_events"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    rollout_id: Mapped[str] = mapped_column(String(32), index=True)
    at: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(32))
    device_id: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(1000))


class TelemetryRecordRow(Base):
    """A device's telemetry record as the device numbered it (once: the key de-duplicates)."""

    __tablename__ = "telemetry_records"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime]
    body: Mapped[str] = mapped_column(String(16384))
    received_at: Mapped[datetime]


class TelemetryStream(Base):
    """Per device: the highest sequence number stored, and how many records the device's
    buffer dropped (its cumulative count, as last shipped)."""

    __tablename__ = "telemetry_streams"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    stored_through: Mapped[int] = mapped_column(BigInteger)
    dropped: Mapped[int] = mapped_column(BigInteger)
    batches: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime]


class AuditRow(Base):
    """One state-changing admin action or security decision. Append-only and chained:
    ``digest`` is an HMAC (the server's audit key, kept out of the database) over ``prev``,
    the previous row's digest, and this row's fields; ``seq`` has no gaps. A row deleted
    or altered breaks the chain (``edgefleet audit verify``)."""

    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime]
    actor: Mapped[str] = mapped_column(String(128), index=True)
    source: Mapped[str | None] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(128))
    subject: Mapped[str | None] = mapped_column(String(256), index=True)
    outcome: Mapped[str] = mapped_column(String(32))
    details: Mapped[dict[str, Any]]
    prev: Mapped[str] = mapped_column(String(64))
    digest: Mapped[str] = mapped_column(String(64))


class Revocation(Base):
    """A device certificate nobody may use again (``devices revoke``, decommission). The
    fleet CA's CRL lists them and hubs refuse them, offline too. Append-only: the largest
    ``id`` is the CRL's number, so every change gives a larger one."""

    __tablename__ = "revocations"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    serial: Mapped[str] = mapped_column(String(64), unique=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    reason: Mapped[str] = mapped_column(String(256))
    revoked_by: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[datetime]
    not_after: Mapped[datetime]  # the certificate's own end: past it, the CRL leaves it out


class Approval(Base):
    """A request only an operator may grant, and the decision. ``kind`` is ``tpm``: a TPM
    whose endorsement key no configured vendor CA certifies wants to bind an attestation
    identity (``ek_trust = "approval"``; ``fingerprint`` is the EK's); or ``reenroll``: a
    device whose certificate expired wants a new one, proving it holds the old key
    (``fingerprint`` is the new key's). ``facts`` are what the operator decides on."""

    __tablename__ = "approvals"

    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)  # pending, approved, rejected, used
    reason: Mapped[str] = mapped_column(String(256))
    facts: Mapped[dict[str, Any]]
    requested_at: Mapped[datetime]
    decided_by: Mapped[str | None] = mapped_column(String(128))
    decided_at: Mapped[datetime | None]
