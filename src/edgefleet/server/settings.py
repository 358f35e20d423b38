"""Control plane settings (``EDGEFLEET_*`` environment variables, TOML file, flags)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from edgefleet.pki import FleetPki
from edgefleet.protocol.scope import ScopeError, parse_scope
from edgefleet.store import default_sqlite_url


class GitSyncSettings(BaseModel):
    """One GitOps sync: a branch of a fleet repository and the signers allowed for it."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,63}$")
    kind: Literal["root", "app"]
    url: str = Field(description="anything git fetch takes: https://, ssh://, a path")
    branch: str = "main"
    allowed_signers: Path = Field(description="ssh allowed_signers file pinned on the server")


class OidcSettings(BaseModel):
    """Operators sign in at an OpenID Connect provider: the dashboard with the authorization
    code flow and PKCE (``client_id``, a confidential client), the CLI with the same flow
    from a loopback redirect (``cli_client_id``, a public client) and a token exchange at the
    control plane. Either way the operator gets a short-lived admin token whose role (and
    scope) come from the groups in the ID token."""

    model_config = ConfigDict(extra="forbid")
    issuer: str = Field(description="the provider's issuer URL (https; http only on the loopback interface)")
    client_id: str = "edgefleet"
    client_secret: str | None = Field(None, description="the dashboard client's secret (none: a public client)")
    cli_client_id: str = "edgefleet-cli"
    groups_claim: str = "groups"
    roles: dict[str, Literal["viewer", "operator", "admin"]] = Field(
        description="group -> role; a sign-in whose groups map to no role is refused")
    scopes: dict[str, str] = Field({}, description="group -> scope (protocol/scope.py): that group's role is "
                                                   "limited to it; a group without one acts on the whole fleet")
    session_hours: float = Field(12.0, gt=0, le=24 * 7, description="how long a sign-in's admin token lives")
    ca_file: Path | None = Field(None, description="CA bundle for the provider's TLS (default: the system's)")

    @property
    def request_scope(self) -> str:
        """What a sign-in asks the provider for: the ID token, the e-mail and the groups."""
        return "openid email profile " + self.groups_claim

    @model_validator(mode="after")
    def _checked(self) -> OidcSettings:
        url = urlparse(self.issuer)
        if url.scheme != "https" and not (url.scheme == "http" and url.hostname in ("127.0.0.1", "localhost", "::1")):
            raise ValueError(f"oidc.issuer must be https (http only on the loopback interface): {self.issuer}")
        for group, text in self.scopes.items():
            try:
                parse_scope(text)
            except ScopeError as exc:
                raise ValueError(f"oidc.scopes.{group}: {exc}") from None
        return self


class ServerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGEFLEET_", extra="forbid")

    data_dir: Path = Path("edgefleet-data")
    database_url: str | None = Field(None, description="default: SQLite in the data dir")
    host: str = "127.0.0.1"
    port: int = Field(8443, ge=0, le=65535)
    reuse_port: bool = Field(False, description="SO_REUSEPORT: several server processes share one port (the "
                                                "kernel spreads connections over them)")
    fleet_name: str = "edgefleet"
    server_names: list[str] = ["localhost", "127.0.0.1", "::1"]
    device_rate_per_second: float = Field(
        2.0, ge=0, description="requests each device may make per second, on average (0: no limit); by device "
                               "certificate, never by address: whole stores sit behind one NAT")
    device_rate_burst: int = Field(60, ge=1, description="requests a device may make at once after a quiet spell")
    keep_alive_seconds: float = Field(
        120.0, ge=1, le=3600, description="an idle connection stays open this long (agents keep theirs 90 s: a "
                                          "device checking in every minute does not pay a TLS handshake each time)")
    session_bytes_per_second: float = Field(
        4 * 1024 * 1024, gt=0, description="each direction of a remote session at most this fast")
    max_body_bytes: int = Field(64 * 1024, ge=1024, le=16 * 1024 * 1024)
    long_poll_max_seconds: float = Field(60.0, ge=0, le=900)
    max_long_polls: int = Field(10_000, ge=0)
    presence_flush_seconds: float = Field(1.0, gt=0)
    # A backstop only (the change feed evicts changed devices): well above the long-poll bound,
    # or every device's next long poll would miss the cache at once.
    device_cache_seconds: float = Field(600.0, ge=0, description="max age of a cached device entry; 0: no cache")
    device_cache_sync_seconds: float = Field(1.0, gt=0, description="staleness bound across server processes")
    device_cache_entries: int = Field(200_000, ge=1)
    device_cert_days: int = Field(30, ge=1, le=3650, description="device certificates' lifetime; agents renew "
                                  "them over mTLS a third before the end, while attested")
    hub_cert_days: int = Field(365, ge=1, le=3650, description="regional hubs' certificates (hubs do not renew yet)")
    trusted_proxies: list[str] = Field([], description="IPs whose client-cert header is believed")
    client_cert_header: str = "x-ssl-client-cert"
    graceful_shutdown_seconds: float = Field(10.0, ge=0)
    max_artifact_bytes: int = Field(16 * 1024**3, ge=1)
    # attestation
    attestation_required: bool = Field(
        True, description="refuse config and director metadata without a fresh passing attestation (set false only "
        "for fleets without TPMs)")
    attestation_max_age_seconds: float = Field(3600.0, gt=0)
    attestation_nonce_seconds: float = Field(60.0, gt=0, le=600)
    attestation_pcrs: list[int] = [0, 1, 2, 3, 4, 5, 6, 7]
    attestation_baselines: dict[str, dict[str, str]] = Field(
        {}, description="hardware type -> PCR index -> expected sha256 hex (firmware baseline)")
    attestation_reference_files: dict[str, Path] = Field(
        {}, description="hardware type -> reference values file (edgefleet-reference-values/1), event by event: "
                        "the firmware PCRs recorded from a golden device (`edgefleet image baseline`)")
    ek_trust: Literal["approval", "vendor", "approved", "tofu"] = Field(
        "approval", description="endorsement keys accepted: vendor-certified or approved by an operator (approval), "
        "vendor-certified only, listed fingerprints only, or any on first use (tofu: labs and demos)")
    tpm_vendor_roots: Path | None = Field(None, description="directory of TPM vendor root/intermediate certs")
    approved_ek_fingerprints: list[str] = Field(
        [], description="EK fingerprints approved ahead of time (a factory scan): approval and approved modes")
    oidc: OidcSettings | None = Field(None, description="operator sign-in through an OpenID Connect provider")
    trust_domain: str = "edgefleet.local"
    workload_token_seconds: int = Field(300, ge=30, le=3600)
    timestamp_check_seconds: float = Field(300.0, gt=0, description="how often to check timestamp expiry")
    exploited_check_seconds: float = Field(
        300.0, gt=0, description="how often to look for known-exploited vulnerabilities newly running in the fleet")
    log_level: str = "info"
    access_log: bool = False
    clock_speed: float = Field(1.0, ge=1, le=3600, description="simulation only: a virtual clock this many times "
                                                             "faster than real time (edgefleet sim)")
    clock_epoch: float | None = Field(None, description="simulation only: when (unix time) the virtual clock "
                                                         "starts running fast")
    rollout_tick_seconds: float = Field(2.0, gt=0, description="how often the rollout controller looks")
    gitops: list[GitSyncSettings] = Field([], description="fleet repository syncs (at most one root sync)")
    gitops_interval_seconds: float = Field(60.0, gt=0, description="fetch this often (and on each webhook)")
    gitops_webhook_secret: str | None = Field(None, description="HMAC key of the push webhook (GitHub style)")
    alert_webhooks: list[str] = Field([], description="URLs that receive every alert as signed JSON")
    alert_webhook_secret: str | None = Field(None, description="HMAC-SHA256 key for X-Edgefleet-Signature")

    @model_validator(mode="after")
    def _one_root_sync(self) -> ServerSettings:
        roots = [s for s in self.gitops if s.kind == "root"]
        if len(roots) > 1 or len({s.name for s in self.gitops}) != len(self.gitops):
            raise ValueError("gitops: at most one root sync, and unique sync names")
        return self

    @property
    def pki(self) -> FleetPki:
        return FleetPki(self.data_dir / "pki")

    @property
    def effective_database_url(self) -> str:
        return self.database_url or default_sqlite_url(self.data_dir)
