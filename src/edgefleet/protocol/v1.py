"""API v1 request and response bodies."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, StringConstraints

from edgefleet.protocol.base import MAX_INT, Audience, Count
from edgefleet.protocol.base import Name as Name
from edgefleet.protocol.base import ShortText as ShortText
from edgefleet.protocol.base import Strict as Strict
from edgefleet.protocol.desired import DesiredDocument
from edgefleet.protocol.sessions import MAX_OFFERS, SessionOffer
from edgefleet.protocol.workloads import WorkloadStatus

HardwareId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")]
LabelKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]([A-Za-z0-9./_-]{0,61}[A-Za-z0-9])?$")]
LabelValue = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._/-]{0,63}$")]
Labels = Annotated[dict[LabelKey, LabelValue], Field(max_length=32)]
# What a device says about itself is kept under this prefix: only the operator's labels (on
# the bootstrap token) select rollouts and policy. Its keys are short enough to take it.
DEVICE_LABEL_PREFIX = "device."
DeviceLabelKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9]([A-Za-z0-9./_-]{0,54}[A-Za-z0-9])?$")]
DeviceLabels = Annotated[dict[DeviceLabelKey, LabelValue], Field(max_length=16)]
Health = Literal["unknown", "healthy", "degraded", "unhealthy"]
FindingName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/@:-]{0,63}$")]


class HealthFinding(Strict):
    """One signal that fails on the device: a required one makes it unhealthy, a wanted
    one degraded (agent/device_health.py says which signals there are)."""

    name: FindingName
    required: bool
    detail: Annotated[str, StringConstraints(max_length=200)]


class Inventory(Strict):
    hardware_id: HardwareId
    hardware_type: HardwareId | None = None  # what releases name in their hardware ids
    site: Name
    labels: DeviceLabels = {}  # stored as ``device.<key>``
    hostname: ShortText | None = None
    agent_version: ShortText | None = None
    os_version: ShortText | None = None


class EnrollRequest(Strict):
    token: Annotated[str, StringConstraints(max_length=128)]
    csr_pem: Annotated[str, StringConstraints(max_length=8192)]
    inventory: Inventory


class EnrollResponse(Strict):
    device_id: str
    certificate_pem: str
    ca_pem: str


class DesiredState(Strict):
    version: int
    document: dict[str, Any]


class CheckInAnswer(Strict):
    """A check-in's 200: the newer desired state (``document`` None: unchanged, the answer
    carries remote sessions only) and the sessions the device is asked to open."""

    version: int
    document: dict[str, Any] | None = None
    sessions: Annotated[list[SessionOffer], Field(max_length=MAX_OFFERS)] = []


PhaseName = Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,32}$")]
Reason = Annotated[str, StringConstraints(max_length=1000)]


# The reason a device gives when it rolls back because its attestation against the new
# release failed; the rollout planner counts it as an attestation failure even when the
# server's attestation record has since moved on (the device attests again after rollback).
ATTESTATION_ROLLBACK = "attestation against the new release failed"


class UpdateEvent(Strict):
    """One transition of a device's A/B update, numbered per device."""

    seq: Annotated[int, Field(ge=1, le=MAX_INT)]
    phase: PhaseName
    at: datetime
    release: ShortText | None = None
    reason: Reason | None = None


class UpdateDelivery(Strict):
    """How the device got the image of its current update, and what that saved."""

    method: Literal["delta", "index", "full", "kept"]
    downloaded_bytes: Count
    image_bytes: Count
    saved_bytes: Count


class UpdateReport(Strict):
    """Where a device's A/B update stands, with its most recent transitions."""

    phase: PhaseName
    release: ShortText | None = None
    from_slot: Literal["a", "b"] | None = None
    to_slot: Literal["a", "b"] | None = None
    booted_slot: Literal["a", "b"] | None = None
    reason: Reason | None = None
    refused: Reason | None = None  # why the current assignment is not being installed
    failed_releases: Annotated[list[ShortText], Field(max_length=64)] = []
    health_checks: Annotated[list[dict[Name, Any]], Field(max_length=64)] = []
    events: Annotated[list[UpdateEvent], Field(max_length=64)] = []
    delivery: UpdateDelivery | None = None


Sha256Hex = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


PartName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,80}$")]


class ConfigReport(Strict):
    """Hashes of the configuration the device really has, per part, for drift detection:
    the OS configuration on disk (``ignition``, ``cloud_init``), and each workload that
    runs exactly as declared and verified (``workload.<name>``)."""

    parts: Annotated[dict[PartName, Sha256Hex], Field(max_length=48)] = {}


class NonceIssuedView(Strict):
    nonce: str
    pcrs: list[int]
    bank: str
    expires_in_seconds: float


class StatusReport(Strict):
    seq: Annotated[int, Field(ge=1, le=MAX_INT)]
    running_version: ShortText | None = None
    health: Health = "unknown"
    health_findings: Annotated[list[HealthFinding], Field(max_length=32)] = []
    update_state: Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,32}$")] = "idle"
    desired_version_applied: Count | None = None
    details: Annotated[dict[Name, Any], Field(max_length=64)] = {}
    update: UpdateReport | None = None
    config: ConfigReport | None = None
    workloads: Annotated[list[WorkloadStatus], Field(max_length=32)] | None = None
    # The device quotes next (the report before an update's attestation): the answer brings
    # its nonce, which spares it a round trip for one.
    challenge: bool = False


class StatusAck(Strict):
    accepted: bool
    seq: int
    # Where the server requires fresh attestation: seconds left of the device's last passing
    # one (0 when it has none or it lapsed). The device re-attests ahead of it, rather than
    # meeting a 403 first.
    attestation_expires_in_seconds: float | None = None
    challenge: NonceIssuedView | None = None  # asked for (``StatusReport.challenge``) and a TPM identity is bound


class DeviceView(Strict):
    id: str
    hardware_id: str
    kind: str = "device"  # or "hub"
    site: str
    labels: dict[str, str]
    enrolled_at: datetime
    last_seen_at: datetime | None
    cert_not_after: datetime
    status_seq: int
    status_at: datetime | None
    running_version: str | None
    health: str
    health_findings: list[HealthFinding] = []
    update_state: str
    desired_version: int
    desired_version_applied: int | None
    inventory: dict[str, Any]
    attestation: dict[str, Any] | None = None
    update: dict[str, Any] | None = None  # the last reported UpdateReport, without its events
    workloads: list[WorkloadStatus] | None = None  # as the device last reported them
    revoked: RevocationView | None = None  # its certificate is on the fleet's revocation list (shown one by one)


class GitOpsCommitView(Strict):
    sync: str
    commit: str
    accepted: bool
    reasons: list[str]
    processed_at: datetime


class GitOpsLog(Strict):
    commits: list[GitOpsCommitView]  # newest first


class DriftView(Strict):
    device_id: str
    state: str
    differences: dict[str, Any]
    since: datetime
    heals: int


class DriftList(Strict):
    devices: list[DriftView]


class AlertView(Strict):
    id: int
    kind: str
    subject: str
    message: str
    details: dict[str, Any]
    created_at: datetime
    delivered_at: datetime | None
    attempts: int


class AlertList(Strict):
    alerts: list[AlertView]


def _count_as_text(value: Any) -> Any:
    """A YAML file says ``size: 1``; the API says ``"1"``: both mean one device."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


Size = Annotated[str, BeforeValidator(_count_as_text),
                 StringConstraints(pattern=r"^[0-9]{1,6}%?$")]  # "25" devices or "25%"


class WaveRequest(Strict):
    size: Size
    selector: Annotated[dict[Name, ShortText], Field(max_length=16)] = {}
    success_threshold: Annotated[float, Field(ge=0, le=100)] = 100.0
    bake_seconds: Annotated[float, Field(ge=0, le=30 * 86400)] = 0.0
    deadline_seconds: Annotated[float, Field(gt=0, le=30 * 86400)] = 86400.0


class BudgetRequest(Strict):
    group_by: Name
    max_updating: Annotated[int, Field(ge=1, le=100000)]


class RolloutPlan(Strict):
    """How a release moves through a group: from the admin API, or a group's ``rollout:``
    in the fleet repository."""

    waves: Annotated[list[WaveRequest], Field(min_length=1, max_length=20)]
    failure_threshold: Size = "10%"
    attestation_failures_tolerated: Annotated[int, Field(ge=0, le=100000)] = 0
    budgets: Annotated[list[BudgetRequest], Field(max_length=8)] = []
    approval_between_waves: bool = False
    # A device told to update and not heard from for this long counts as offline: its wave
    # stops waiting for it (it catches up when it returns, or times out at the deadline).
    offline_after_seconds: Annotated[int, Field(ge=1, le=7 * 86400)] = 120


class RolloutRequest(RolloutPlan):
    release: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")]
    selector: Annotated[dict[Name, ShortText], Field(max_length=16)] = {}  # device labels; "site" too
    group: Name | None = None  # only devices the accepted fleet repository puts in this group
    # A selector that matches no device is refused (a typo would "complete" at once)
    # unless this says it is meant: a group in the fleet repository waiting for devices.
    allow_empty: bool = False
    # Only devices that run one of these releases when the rollout reaches them (e.g. the
    # releases a vulnerability affects); a device keeps its place once taken. Empty: any.
    from_releases: Annotated[list[Annotated[str, StringConstraints(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")]], Field(max_length=100)] = []


class RolloutWaveView(Strict):
    wave: int
    counts: dict[str, int]
    failed: list[dict[str, Any]]  # device_id, state, reason
    # A wave not started yet (one rollout's view, while it can still go on): who it would
    # take were it to start now, and how many (the first PREVIEW_LISTED ids).
    planned_count: int | None = None
    planned: list[str] | None = None


class RolloutView(Strict):
    id: str
    release: str
    status: str
    reason: str | None
    wave: int  # 1-based; 0 before the first wave
    waves: list[RolloutWaveView]
    group: str | None = None  # a rollout of a group of the fleet repository
    selector: dict[str, str] = {}  # the device labels (site too) it takes
    from_releases: list[str] = []  # only devices running one of these when taken
    created_by: str
    created_at: datetime
    updated_at: datetime


class RolloutWavePreview(Strict):
    wave: int  # 1-based
    count: int
    devices: list[str]  # the first PREVIEW_LISTED, by id


class RolloutPreview(Strict):
    """Who a rollout would take, wave by wave, were it started now (nothing is started)."""

    matched: int  # devices the selector (and group) match
    waves: list[RolloutWavePreview]


class RolloutList(Strict):
    rollouts: list[RolloutView]


class RolloutEventView(Strict):
    at: datetime
    kind: str
    device_id: str | None
    reason: str


class RolloutEvents(Strict):
    events: list[RolloutEventView]  # newest first


class RolloutAbort(Strict):
    revert: bool = False  # send devices already on the release back to their previous slot


class UpdateHistory(Strict):
    device_id: str
    events: list[UpdateEvent]  # newest first


class DeviceList(Strict):
    total: int
    devices: list[DeviceView]


class SetDesired(Strict):
    document: DesiredDocument


Base64 = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/=]*$", max_length=8192)]
HexBytes = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]*$", max_length=256)]


class AttestationIdentityRequest(Strict):
    """The device's TPM identity: EK and AK as base64 of marshalled TPMT_PUBLIC."""

    ek_public: Base64
    ak_public: Base64
    ek_certificate: Base64 | None = None  # DER, as stored in TPM NV index 0x01c00002

class CredentialChallenge(Strict):
    id_object: str
    encrypted_secret: str


class CredentialActivation(Strict):
    credential: Base64


class QuoteSubmission(Strict):
    nonce: HexBytes
    attest: Base64
    signature: Base64
    pcr_values: Annotated[dict[Annotated[str, StringConstraints(pattern=r"^[0-9]{1,2}$")], HexBytes],
                          Field(max_length=24)]
    event_log: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9+/=]*$", max_length=2_800_000)]


class AttestationResult(Strict):
    passed: bool


class WorkloadTokenQuery(Strict):
    """Which token: for which of the device's workloads, to present to which service."""

    workload: Name
    audience: Audience


# A root's TUF consistent-snapshot name (``N.root.json``), its version the group.
DIRECTOR_ROOT_FILE = re.compile(r"^([1-9][0-9]{0,8})\.root\.json$")


class DirectorBundleQuery(Strict):
    """What the device already holds of its director repository, verified."""

    root: Annotated[int, Field(ge=1, le=MAX_INT)]  # its trusted root's version
    snapshot: Annotated[int, Field(ge=0, le=MAX_INT)] = 0  # its verified snapshot's version (0: none)


class DirectorBundle(Strict):
    """A device's director repository in one answer: the newer roots (in order), the
    current timestamp and, unless the device holds them, the snapshot and targets it names,
    each file's exact text under its TUF consistent-snapshot name. A transport only: the
    device's TUF client verifies every file as if it had fetched it alone."""

    files: dict[str, str]
    # No root after this one exists (a TUF client's next-root probe ends here); None when
    # there are more than the bundle carries (the device reads the rest file by file).
    latest_root: int | None


class WorkloadToken(Strict):
    token: str  # a JWT-SVID
    spiffe_id: str
    expires_at: datetime
    expires_in_seconds: float  # the device schedules its refresh on this, not on its own clock


class AssignRelease(Strict):
    release: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")]
    force_reboot: bool = False  # install and reboot now, outside the maintenance window
    retry_failed: bool = False  # try again a release that failed on the device before


class AssignmentView(Strict):
    device_id: str
    release: str
    director_version: int


DeviceKind = Literal["device", "hub"]  # a hub is a site's regional hub, not a fleet device


class BootstrapTokenRequest(Strict):
    site: Name
    labels: Labels = {}
    ttl_seconds: Annotated[int, Field(ge=60, le=30 * 24 * 3600)] = 24 * 3600
    kind: DeviceKind = "device"  # what enrolls with it


class RenewCertificate(Strict):
    """A device's request for a new certificate: a CSR for a key it made for the purpose."""

    csr_pem: Annotated[str, StringConstraints(max_length=8192)]


class CertificateRenewed(Strict):
    certificate_pem: str
    not_after: datetime


class Reenroll(Strict):
    """A device whose certificate expired asks for a new one: its old certificate, a CSR
    for a new key, and the CSR signed with the old key (base64), proving it holds it."""

    certificate_pem: Annotated[str, StringConstraints(max_length=8192)]
    csr_pem: Annotated[str, StringConstraints(max_length=8192)]
    signature: Annotated[str, StringConstraints(max_length=1024)]


class ReenrollAnswer(Strict):
    state: Literal["pending", "issued"]
    certificate: CertificateRenewed | None = None  # when issued


class RevokeRequest(Strict):
    # One printable line: it goes into logs and the audit trail.
    reason: Annotated[str, StringConstraints(pattern=r"^[ -~]{1,256}$")] = "revoked by an operator"


Fingerprint = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class ApprovalView(Strict):
    """A request only an operator grants, and the decision: ``tpm``, an endorsement key no
    configured vendor CA certifies; ``reenroll``, a device whose certificate expired."""

    kind: Literal["tpm", "reenroll"]
    device_id: str
    fingerprint: str  # sha256: of the EK's TPMT_PUBLIC (tpm), of the new key's SubjectPublicKeyInfo (reenroll)
    state: Literal["pending", "approved", "rejected", "used"]
    reason: str  # why it was not granted by itself
    hardware_id: str | None = None
    site: str | None = None
    hardware_type: str | None = None
    requested_at: datetime
    decided_by: str | None = None
    decided_at: datetime | None = None


class ApprovalList(Strict):
    approvals: list[ApprovalView]


class ApprovalDecision(Strict):
    # The fingerprint the operator checked (an EK against the device's label or a factory
    # scan); without it, the device's newest pending request is decided.
    fingerprint: Fingerprint | None = None


class RevocationView(Strict):
    serial: str
    reason: str
    revoked_by: str
    revoked_at: datetime


class OidcInfo(Strict):
    """How the CLI signs in (``edgefleet login --oidc``): at this issuer, as this public client."""

    issuer: str
    client_id: str
    scope: str  # what to ask the provider for


# RFC 8693 names (not secrets)
TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"  # noqa: S105
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105


class TokenExchanged(Strict):
    """RFC 8693's answer: an admin token for the operator the ID token names."""

    access_token: str
    issued_token_type: str = ACCESS_TOKEN_TYPE
    token_type: str = "Bearer"  # noqa: S105
    expires_in: int
    role: str
    scope: str | None = None  # the devices it is limited to (protocol/scope.py)


class AdvisoryImport(Strict):
    """What an import of OSV advisories did: each is added, replaced by a newer
    ``modified``, left as it was, or refused with the reason."""

    added: int
    updated: int
    unchanged: int
    refused: list[dict[str, str]]  # {"id", "reason"}


class VexImport(Strict):
    stored: int


class FindingView(Strict):
    """A vulnerability of a package in a release's SBOM."""

    advisory: str
    aliases: list[str]
    severity: str
    summary: str
    ecosystem: str
    package: str
    version: str
    fixed_in: str | None  # the first version that fixes it (none yet: null)
    suppressed: str | None = None  # a VEX statement's status and justification: not counted as affected
    # The first published release after this one (by counter) whose SBOM it does not affect.
    fixed_by_release: str | None = None
    known_exploited: str | None = None  # the date a KEV catalogue added it


class AffectedDevice(Strict):
    device_id: str
    site: str
    release: str
    proven: bool  # its last attestation passed on this release (else: the release it reports)
    package: str
    version: str
    fixed_in: str | None


class VulnerabilityReport(Strict):
    release: str | None = None
    device: str | None = None
    cve: str | None = None
    findings: list[FindingView] = []
    devices: list[AffectedDevice] = []
    total: int  # findings (release, device) or affected devices (cve), before limit and offset


class AffectedRelease(Strict):
    release: str
    product: str  # the SBOM's subject (the image's name)
    package: str
    version: str
    fixed_in: str | None
    devices: int  # in the caller's scope


class CveReport(Strict):
    """What a vulnerability notification (EU CRA, article 14) asks of a manufacturer, for
    one advisory or CVE, over the caller's part of the fleet."""

    cve: str
    advisories: list[str]  # the advisory ids that name it (DSA-..., GHSA-..., or the CVE itself)
    aliases: list[str]
    severity: str
    summary: str
    published: datetime | None  # by the advisory's publisher
    first_seen: datetime | None  # when this fleet first imported an advisory naming it
    known_exploited: str | None  # the date a KEV catalogue added it
    affected_releases: list[AffectedRelease]
    affected_devices: int
    proven_devices: int  # of the affected, those whose last attestation proved the release
    affected_by_site: dict[str, int]
    fix_available: bool  # a fixed version of every affected package is known
    fixing_releases: list[str]  # published releases (after an affected one) that it does not affect
    first_fixed_release: str | None  # the first of those after every affected release
    fixed_devices: int  # devices on a fixing release
    fix_rolled_out_percent: float | None  # fixed / (fixed + affected); null when neither
    vex: list[str]  # VEX statements naming it: "status: justification (product)"
    generated_at: datetime


class SeverityCount(Strict):
    advisories: int  # distinct advisories affecting at least one device
    devices: int  # devices with at least one such finding


class FleetAdvisory(Strict):
    advisory: str
    aliases: list[str]
    severity: str
    summary: str
    devices: int
    releases: list[str]
    fixed_by_release: str | None
    known_exploited: str | None


class VulnerabilitySummary(Strict):
    """Findings over the caller's part of the fleet: counts per severity and every
    advisory that affects a device, most severe and widest first."""

    devices: int  # devices whose release is known
    severities: dict[str, SeverityCount]
    advisories: list[FleetAdvisory]
    total: int  # advisories, before limit and offset
    releases_without_sbom: list[str]  # run by devices, but no SBOM was published: not judged


class ExploitedImport(Strict):
    added: int
    alerts: int  # known-exploited vulnerabilities found running in the fleet and alerted


class RevokeResult(Strict):
    device_id: str
    serial: str  # of the certificate now on the fleet's revocation list


class BootstrapTokenCreated(Strict):
    token: str
    id: str
    site: str
    labels: dict[str, str]
    expires_at: datetime


class BootstrapTokenView(Strict):
    """A bootstrap token as operators see it (the secret was shown once, at creation)."""

    id: str
    site: str
    labels: dict[str, str]
    created_at: datetime
    created_by: str
    expires_at: datetime
    used_at: datetime | None
    device_id: str | None  # the device that spent it
    revoked_at: datetime | None
    state: Literal["unused", "used", "expired", "revoked"]


class BootstrapTokenList(Strict):
    tokens: list[BootstrapTokenView]  # newest first


class AdminTokenView(Strict):
    id: str
    name: str
    role: str
    scope: str | None = None  # the devices it is limited to (protocol/scope.py); None: the whole fleet
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    state: Literal["active", "expired", "revoked"]


class AdminTokenList(Strict):
    tokens: list[AdminTokenView]


class ErrorDetail(Strict):
    code: str
    message: str
    details: list[dict[str, Any]] | None = None


class ErrorBody(Strict):
    error: ErrorDetail


class AuditEntry(Strict):
    seq: int
    at: datetime
    actor: str  # the admin token's name, or the service that decided (enrollment, attestation)
    source: str | None  # the client's address
    action: str  # "POST /api/v1/admin/rollouts", "enroll", "quarantine", ...
    subject: str | None  # the device, rollout or token it concerned
    outcome: str  # "ok", or "refused <status>"
    details: dict[str, Any]
    digest: str


class AuditList(Strict):
    entries: list[AuditEntry]  # newest first


class AuditVerdict(Strict):
    intact: bool
    rows: int  # rows checked (up to the first bad one)
    first_bad_seq: int | None = None
    reason: str | None = None
    head_seq: int  # the last good row: note it elsewhere to see a truncation later
    head_digest: str
