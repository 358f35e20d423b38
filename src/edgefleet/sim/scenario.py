"""A simulation scenario, as written in YAML: the fleet (sites, their links), releases,
the rollout, the faults, how long to run, and the outcome the run must show.

    name: bad-release-canary
    servers: {processes: 1, database: sqlite}
    networks:
      store-dsl: {latency_ms: 40, bandwidth_kbps: 8000, loss: 0.01}
    sites:
      - {name: eu-store, count: 4, devices: 25, region: eu, network: store-dsl}
    releases:
      - {version: 2026.11.0, running: true}
      - {version: 2026.12.0, health: fail}
    rollout: {release: 2026.12.0, start_after_seconds: 15, waves: [{size: 2}, {size: 100%}]}
    faults:
      - {kind: outage, at_seconds: 20, duration_seconds: 30, sites: {region: us}}
    expect: {rollout_status: halted, halted_in_wave: 1}
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgefleet.errors import ConfigError
from edgefleet.protocol.v1 import RolloutRequest

Version = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkProfile(_Strict):
    """A site's link to the control plane. Every site reaches it from one address (its
    NAT), as a store or a factory line does."""

    latency_ms: float = Field(0.0, ge=0, le=10_000, description="one way")
    jitter_ms: float = Field(0.0, ge=0, le=10_000)
    bandwidth_kbps: float | None = Field(None, gt=0, description="each direction, shared by the site; None: no cap")
    loss: float = Field(0.0, ge=0, lt=1, description="chance that a segment is lost and resent (TCP: a delay)")


class SiteSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")
    count: int = Field(1, ge=1, le=10_000, description="sites of this kind: <name>-1 .. <name>-<count>")
    devices: int = Field(ge=1, le=100_000, description="devices per site")
    region: str = "default"
    labels: dict[str, str] = {}
    network: str | None = None


class ReleaseSpec(_Strict):
    version: Version
    running: bool = Field(False, description="what the devices run when the simulation starts (exactly one)")
    health: Literal["pass", "fail"] = Field("pass", description="the image's own health check")


class Selector(_Strict):
    """Which sites (by name or region) and how many of their devices a fault hits."""

    region: str | None = None
    site: str | None = None
    devices: int | None = Field(None, ge=1, description="that many devices of the matching sites; None: all")
    per_site: bool = Field(False, description="``devices`` in each matching site, not in all of them together")


class FaultSpec(_Strict):
    kind: Literal["outage", "tampered_boot", "failing_health", "power_cut", "clock_skew"]
    at_seconds: float = Field(0.0, ge=0, description="outage, power_cut: when it starts")
    duration_seconds: float = Field(0.0, ge=0, description="outage, power_cut: how long it lasts")
    skew_seconds: float = Field(0.0, description="clock_skew: how far the devices' clocks are off")
    sites: Selector = Selector()


class RolloutSpec(RolloutRequest):
    start_after_seconds: float = Field(10.0, ge=0, description="after every device has checked in")


class AgentTiming(_Strict):
    checkin_interval_seconds: float = Field(5.0, gt=0)
    long_poll_seconds: float = Field(0.0, ge=0)
    status_interval_seconds: float = Field(30.0, gt=0)
    update_check_seconds: float = Field(30.0, gt=0)
    telemetry_batch_seconds: float = Field(5.0, gt=0)
    backoff_max_seconds: float = Field(15.0, gt=0)
    trial_deadline_seconds: float = Field(120.0, gt=0)


class ServerSpec(_Strict):
    processes: int = Field(1, ge=1, le=16)
    database: Literal["sqlite", "postgresql"] = "sqlite"
    rollout_tick_seconds: float = Field(1.0, gt=0)
    device_rate_per_second: float = Field(2.0, ge=0)


class ClockSpec(_Strict):
    """A virtual clock for the control plane and the devices' wall clocks: the rollout's
    bake times, deadlines and offline grace, and maintenance windows, are virtual time;
    the scenario's own times (faults, start_after_seconds, duration) are real seconds."""

    speed: float = Field(1.0, ge=1, le=120, description="virtual seconds per real second")


class Expectations(_Strict):
    """What the run must show; each set one is checked, and the report says which held."""

    rollout_status: str | None = None
    halted_in_wave: int | None = Field(None, ge=1)
    devices_on_release: dict[str, int | Literal["all"]] = {}
    max_devices_on_release: dict[str, int] = {}
    telemetry_lost: int | None = Field(None, ge=0)
    all_checked_in_at_end: bool | None = None
    quarantined: int | None = Field(None, ge=0)
    attested: int | Literal["all_but_quarantined"] | None = None


class Scenario(_Strict):
    name: str
    description: str = ""
    seed: int = 1
    servers: ServerSpec = ServerSpec()
    clock: ClockSpec = ClockSpec()
    agent: AgentTiming = AgentTiming()
    networks: dict[str, NetworkProfile] = {}
    sites: Annotated[list[SiteSpec], Field(min_length=1)]
    releases: Annotated[list[ReleaseSpec], Field(min_length=1)]
    rollout: RolloutSpec | None = None
    faults: list[FaultSpec] = []
    duration_seconds: float = Field(120.0, gt=0, description="the run ends then, or when the rollout has ended "
                                                             "and settle_seconds have passed")
    settle_seconds: float = Field(15.0, ge=0)
    sample_seconds: float = Field(1.0, gt=0)
    image_bytes: int = Field(64 * 1024, ge=8192, le=64 << 20)
    expect: Expectations = Expectations()

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        running = [r for r in self.releases if r.running]
        if len(running) != 1:
            raise ValueError("exactly one release must be marked running: true")
        versions = [r.version for r in self.releases]
        if len(set(versions)) != len(versions):
            raise ValueError("release versions must be unique")
        if self.rollout is not None and self.rollout.release not in versions:
            raise ValueError(f"the rollout's release {self.rollout.release} is not among the releases")
        for site in self.sites:
            if site.network is not None and site.network not in self.networks:
                raise ValueError(f"site {site.name}: no network profile named {site.network}")
        if len({s.name for s in self.sites}) != len(self.sites):
            raise ValueError("site names must be unique")
        if self.rollout is not None:
            between = self.agent.checkin_interval_seconds * 1.2 * self.clock.speed  # virtual seconds
            if self.rollout.offline_after_seconds < 3 * between:
                raise ValueError(f"rollout.offline_after_seconds ({self.rollout.offline_after_seconds}) must be at "
                                 f"least 3 check-in intervals of virtual time ({3 * between:.0f} s), or devices "
                                 "that check in on time count as offline")
        return self

    @property
    def running_release(self) -> ReleaseSpec:
        return next(r for r in self.releases if r.running)

    @property
    def device_count(self) -> int:
        return sum(s.count * s.devices for s in self.sites)

    def scaled(self, factor: float) -> Scenario:
        """The same scenario with ``factor`` times the devices per site (at least one)."""
        if factor == 1:
            return self
        sites = [s.model_copy(update={"devices": max(1, round(s.devices * factor))}) for s in self.sites]
        return self.model_copy(update={"sites": sites})

    def with_servers(self, processes: int | None, database: str | None) -> Scenario:
        update: dict[str, Any] = {}
        if processes is not None:
            update["processes"] = processes
        if database is not None:
            update["database"] = database
        if not update:
            return self
        return self.model_copy(update={"servers": ServerSpec.model_validate({**self.servers.model_dump(), **update})})


def load_scenario(path: Path) -> Scenario:
    """Read and check a scenario file.

    Raises:
        ConfigError: unreadable file, not YAML, or not a valid scenario (with where and why).
    """
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read scenario {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a scenario is a YAML mapping")
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        where = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise ConfigError(f"{path}: not a valid scenario: {where}") from exc
