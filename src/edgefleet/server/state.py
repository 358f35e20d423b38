"""Everything a request handler may touch, built once per app (no module globals)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from starlette.requests import HTTPConnection

from edgefleet.clock import Clock
from edgefleet.pki import DeviceCertificate, IssuedCertificate, device_identity_from_pem
from edgefleet.server.alerts import Alerts
from edgefleet.server.attestation import AttestationService
from edgefleet.server.audit import AuditLog
from edgefleet.server.devicecache import ChangeFeed, DeviceCache
from edgefleet.server.director import DirectorService
from edgefleet.server.gitops import GitOpsService
from edgefleet.server.longpoll import LongPolls
from edgefleet.server.metrics import Metrics
from edgefleet.server.oidc import OidcSignIn
from edgefleet.server.presence import Presence
from edgefleet.server.ratelimit import DeviceRateLimiter
from edgefleet.server.repository import RepositoryService
from edgefleet.server.revocations import RevocationPublisher
from edgefleet.server.rollouts import RolloutController
from edgefleet.server.rolloutviews import RolloutViews
from edgefleet.server.sessions import RemoteSessions
from edgefleet.server.settings import ServerSettings
from edgefleet.server.views import Freshness
from edgefleet.server.vulns import Vulnerabilities
from edgefleet.server.workload import WorkloadIssuer
from edgefleet.store import Database


@dataclass
class ServerState:
    settings: ServerSettings
    db: Database
    ca: IssuedCertificate
    clock: Clock
    metrics: Metrics
    presence: Presence
    long_polls: LongPolls
    devices: DeviceCache
    changes: ChangeFeed
    repository: RepositoryService
    director: DirectorService
    attestation: AttestationService
    workload: WorkloadIssuer
    alerts: Alerts
    audit: AuditLog
    revocations: RevocationPublisher
    gitops: GitOpsService
    rollouts: RolloutController
    rollout_views: RolloutViews
    rate_limits: DeviceRateLimiter
    vulns: Vulnerabilities = field(init=False)
    sessions: RemoteSessions = field(init=False)
    oidc: OidcSignIn | None = None  # operator sign-in, when settings.oidc names a provider
    ready: bool = False
    identity_of: Callable[[str], DeviceCertificate] = field(init=False)

    def __post_init__(self) -> None:
        # Parsing a certificate costs more than the rest of a check-in; each device
        # presents the same one on every request.
        self.identity_of = lru_cache(maxsize=65536)(device_identity_from_pem)
        self.vulns = Vulnerabilities(self.db, self.repository, self.clock, self.alerts)
        self.sessions = RemoteSessions(self.db, self.clock, self.attestation, self.long_polls, self.audit,
                                       self.settings.data_dir / "sessions", self.settings.session_bytes_per_second,
                                       self.metrics.remote_sessions)

    def freshness(self) -> Freshness:
        """How long a passing attestation counts, as of now (a device view's "stale")."""
        return Freshness(self.settings.attestation_max_age_seconds, self.clock.now())


def server_state(request: HTTPConnection) -> ServerState:
    state: ServerState = request.app.state.edgefleet
    return state
