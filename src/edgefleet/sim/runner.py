"""Runs a scenario: control plane processes, site links, the fleet, the timeline of faults
and the rollout; samples the fleet and the servers as it goes; ends with the outcome, the
expectations checked against it, and the reports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.console import Console

from edgefleet.client import AdminClient
from edgefleet.clock import ScaledClock
from edgefleet.credentials import Role
from edgefleet.errors import ConfigError, EdgefleetError
from edgefleet.protocol.v1 import RolloutView
from edgefleet.server.local import create_admin_token, init_server
from edgefleet.server.run import raise_open_files_limit
from edgefleet.server.settings import ServerSettings
from edgefleet.sim.checks import check_expectations
from edgefleet.sim.fleet import FleetBuilder, SimDevice, pick, power_cut, publish_releases, site_instances, site_matches
from edgefleet.sim.link import SiteLink
from edgefleet.sim.report import Sample, SimReport, write_reports
from edgefleet.sim.scenario import NetworkProfile, Scenario
from edgefleet.sim.servers import ServerPool, create_postgres_database, drop_postgres_database
from edgefleet.telemetry.buffer import open_buffer

log = logging.getLogger("edgefleet.sim")
STOPPED = ("halted", "completed", "aborted")


@dataclass
class Run:
    scenario: Scenario
    out_dir: Path
    console: Console
    clock: ScaledClock = field(default_factory=lambda: ScaledClock(1.0))
    pool: ServerPool | None = None
    client: AdminClient | None = None
    links: dict[str, SiteLink] = field(default_factory=dict)
    devices: list[SimDevice] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    rollout: RolloutView | None = None
    started: float = 0.0  # monotonic time of t=0 (the whole fleet checked in)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def t(self) -> float:
        return time.monotonic() - self.started if self.started else 0.0

    def note(self, what: str, **details: Any) -> None:
        virtual = {"virtual_t_s": round(self.t() * self.scenario.clock.speed)} if self.scenario.clock.speed > 1 else {}
        self.timeline.append({"t_s": round(self.t(), 2), "event": what, **virtual, **details})
        self.console.print(f"[dim]t={self.t():7.1f}s[/] {what} {' '.join(f'{k}={v}' for k, v in details.items())}")


async def run_scenario(scenario: Scenario, out_dir: Path, console: Console) -> SimReport:
    """Run ``scenario`` to its end; the report (also written to ``out_dir`` as JSON and HTML).

    Raises:
        ConfigError: the control plane or PostgreSQL could not be started or reached.
    """
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    raise_open_files_limit()
    run = Run(scenario, out_dir, console, clock=ScaledClock(scenario.clock.speed))
    data_dir = out_dir / "data"
    await asyncio.to_thread(shutil.rmtree, data_dir, ignore_errors=True)  # a previous run's
    db_name = None
    database_url = None
    if scenario.servers.database == "postgresql":
        db_name, database_url = await create_postgres_database()
    settings = ServerSettings(data_dir=data_dir, database_url=database_url, log_level="warning",
                              ek_trust="tofu")  # simulated TPMs: no vendor EK certificates
    began = time.monotonic()
    try:
        report = await _run(run, settings)
    finally:
        run.stop.set()
        await _shutdown(run)
        if db_name is not None:
            with contextlib.suppress(Exception):
                await drop_postgres_database(db_name)
    report.figures["wall_seconds"] = round(time.monotonic() - began, 1)
    write_reports(report, out_dir)
    return report


async def _run(run: Run, settings: ServerSettings) -> SimReport:
    scenario, out = run.scenario, run.console
    init_server(settings, run.clock.now())
    token = await create_admin_token(settings, name="sim", role=Role.ADMIN, now=run.clock.now(), ttl=None)
    env = {"EDGEFLEET_ROLLOUT_TICK_SECONDS": str(scenario.servers.rollout_tick_seconds),
           "EDGEFLEET_PRESENCE_FLUSH_SECONDS": "1",
           "EDGEFLEET_DEVICE_RATE_PER_SECOND": str(scenario.servers.device_rate_per_second),
           # a quote answers a nonce within this much virtual time: 10 s of real time at 60x
           "EDGEFLEET_ATTESTATION_NONCE_SECONDS": "600"}
    run.pool = await ServerPool(settings, scenario.servers.processes, env, log_dir=run.out_dir).start()
    out.print(f"[bold green]control plane[/]: {scenario.servers.processes} process(es) on {run.pool.url} "
              f"({scenario.servers.database})")
    run.client = client = AdminClient(run.pool.url, token, settings.pki.ca_cert, timeout=60)
    images = await asyncio.to_thread(publish_releases, scenario, settings.data_dir, client, run.clock.now())
    rng = random.Random(scenario.seed)
    sites = site_instances(scenario)
    for site in sites:
        profile = scenario.networks[site.spec.network] if site.spec.network else NetworkProfile()
        run.links[site.name] = await SiteLink(site.name, profile, ("127.0.0.1", run.pool.port), nat_address(site.index),
                                              random.Random(rng.random())).start()
    builder = FleetBuilder(scenario, settings.data_dir, client, lambda s: f"https://127.0.0.1:{run.links[s.name].port}",
                           settings.pki.ca_cert, run.clock)
    run.devices = await asyncio.to_thread(builder.build, images)
    out.print(f"{len(run.devices)} emulated devices in {len(sites)} sites; enrolling through their links ...")
    await _start_devices(run, builder)
    if scenario.clock.speed > 1:
        await _speed_up(run, settings, env)
    run.started = time.monotonic()
    run.note("fleet checked in", devices=len(run.devices))
    sampler = asyncio.ensure_future(_sample_forever(run))
    timeline = [asyncio.ensure_future(_fault(run, i)) for i in range(len(scenario.faults))]
    if scenario.rollout is not None:
        timeline.append(asyncio.ensure_future(_start_rollout(run)))
    try:
        await _until_done(run)
        run.note("ending: letting telemetry drain")
        telemetry = await _drain_telemetry(run)
    finally:
        for task in [*timeline, sampler]:
            task.cancel()
        await asyncio.gather(*timeline, sampler, return_exceptions=True)
    outcome = await _outcome(run, telemetry)
    checks = check_expectations(scenario.expect, outcome)
    return SimReport(scenario=scenario, outcome=outcome, checks=checks, samples=run.samples,
                     timeline=run.timeline, figures=_figures(run))


async def _speed_up(run: Run, settings: ServerSettings, env: dict[str, str]) -> None:
    """Start the virtual clock: the devices enrolled on real time (TLS checks certificates
    against real time); now the server processes restart on the shared virtual clock, and
    the devices reconnect to them as after any server restart."""
    assert run.pool is not None
    epoch = time.time()
    port = run.pool.port
    await run.pool.stop()
    clock_env = {**env, "EDGEFLEET_CLOCK_SPEED": str(run.scenario.clock.speed), "EDGEFLEET_CLOCK_EPOCH": str(epoch)}
    run.pool = await ServerPool(settings, run.scenario.servers.processes, clock_env, log_dir=run.out_dir,
                                port=port).start()
    run.clock.start(epoch)
    run.console.print(f"[bold green]virtual clock[/]: {run.scenario.clock.speed:g} virtual seconds per second "
                      "(servers restarted on it; devices reconnect)")


def nat_address(index: int) -> str:
    """The address site ``index`` reaches the control plane from (a loopback address of its own)."""
    return f"127.{1 + index // 62500}.{1 + index // 250 % 250}.{1 + index % 250}"


async def _start_devices(run: Run, builder: FleetBuilder) -> None:
    """Bootstrap tokens for all, then power the devices on in batches (a fleet does not
    come up in one instant) and wait until every one has checked in."""
    assert run.client is not None
    client = run.client

    def tokens() -> list[str]:
        return [client.create_bootstrap_token(d.device.site, d.device.labels, 7 * 86400).token for d in run.devices]

    for device, token in zip(run.devices, await asyncio.to_thread(tokens), strict=True):
        builder.arm(device, token)
    for index, device in enumerate(run.devices):
        device.task = asyncio.create_task(device.run(run.stop), name=f"device-{device.device.hardware_id()}")
        if index % 50 == 49:
            await asyncio.sleep(0.2)
    deadline = time.monotonic() + 120 + len(run.devices) / 10
    def up(d: SimDevice) -> bool:
        """Enrolled and answered: checked in, or told it is quarantined (its attestation failed)."""
        return d.agent is not None and d.agent.device_id is not None and (d.agent.checkins > 0 or
                                                                          d.agent.attested is False)

    while not all(up(d) for d in run.devices):
        if time.monotonic() > deadline:
            missing = [d.device.hardware_id() for d in run.devices if not up(d)]
            raise ConfigError(f"{len(missing)} devices never checked in (e.g. {missing[:3]})")
        crashed = [d for d in run.devices if d.task is not None and d.task.done() and d.task.exception()]
        if crashed:
            raise ConfigError(f"device {crashed[0].device.hardware_id()} stopped: {crashed[0].task.exception()!r}")  # type: ignore[union-attr]
        await asyncio.sleep(0.5)


async def _at(run: Run, seconds: float) -> None:
    await asyncio.sleep(max(0.0, run.started + seconds - time.monotonic()))


async def _fault(run: Run, index: int) -> None:
    fault = run.scenario.faults[index]
    if fault.kind == "outage":
        sites = {s.name for s in site_instances(run.scenario) if site_matches(s, fault.sites)}
        await _at(run, fault.at_seconds)
        for name in sorted(sites):
            run.links[name].set_up(False)
        run.note("link outage", sites=len(sites), seconds=fault.duration_seconds)
        await asyncio.sleep(fault.duration_seconds)
        for name in sorted(sites):
            run.links[name].set_up(True)
        run.note("links back up", sites=len(sites))
    elif fault.kind == "power_cut":
        hit = pick(run.devices, fault.sites, random.Random(f"{run.scenario.seed}-power-{index}"))
        await _at(run, fault.at_seconds)
        run.note("power cut", devices=len(hit), seconds=fault.duration_seconds)
        await asyncio.gather(*(power_cut(d, fault.duration_seconds, run.stop) for d in hit))
        run.note("power restored", devices=len(hit))
    else:
        hit = [d for d in run.devices if fault.kind in d.faults]
        run.note(f"fault armed: {fault.kind}", devices=len(hit))


async def _start_rollout(run: Run) -> None:
    spec = run.scenario.rollout
    assert spec is not None
    assert run.client is not None
    await _at(run, spec.start_after_seconds)
    body = spec.model_dump(mode="json", exclude={"start_after_seconds"})
    answer = await asyncio.to_thread(run.client.call_json, "POST", "/api/v1/admin/rollouts", json=body)
    run.rollout = RolloutView.model_validate(answer)
    run.note("rollout started", release=spec.release, id=run.rollout.id, waves=len(spec.waves))


async def _refresh_rollout(run: Run) -> None:
    if run.rollout is None or run.client is None:
        return
    client, rollout_id = run.client, run.rollout.id
    previous = run.rollout
    with contextlib.suppress(EdgefleetError):
        answer = await asyncio.to_thread(client.call_json, "GET", f"/api/v1/admin/rollouts/{rollout_id}")
        run.rollout = RolloutView.model_validate(answer)
    if (run.rollout.status, run.rollout.wave) != (previous.status, previous.wave):
        run.note(f"rollout {run.rollout.status}", wave=run.rollout.wave,
                 **({"reason": run.rollout.reason} if run.rollout.reason else {}))


async def _until_done(run: Run) -> None:
    """Until the rollout has stopped and the fleet has settled, or the scenario's duration."""
    scenario = run.scenario
    stopped_at: float | None = None
    while run.t() < scenario.duration_seconds:
        await _refresh_rollout(run)
        rollout_over = scenario.rollout is None or (run.rollout is not None and run.rollout.status in STOPPED)
        if rollout_over and scenario.rollout is not None:
            stopped_at = stopped_at if stopped_at is not None else run.t()
            if run.t() - stopped_at >= scenario.settle_seconds and _links_up(run):
                return
        await asyncio.sleep(1.0)
    run.note("duration reached")


def _links_up(run: Run) -> bool:
    return all(link.up for link in run.links.values())


async def _sample_forever(run: Run) -> None:
    previous_checkins, previous_cpu, previous_at = 0, 0.0, time.monotonic()
    while True:
        await asyncio.sleep(run.scenario.sample_seconds)
        assert run.pool is not None
        now = time.monotonic()
        checkins = sum(d.agent.checkins for d in run.devices if d.agent is not None)
        servers = run.pool.samples()
        cpu = sum(s.cpu_seconds for s in servers)
        versions = Counter(d.running_version or "none" for d in run.devices)
        phases = Counter(_phase(d) for d in run.devices)
        waves = ({f"wave {w.wave}": dict(w.counts) for w in run.rollout.waves} if run.rollout is not None else {})
        elapsed = max(now - previous_at, 1e-6)
        run.samples.append(Sample(
            t_s=round(run.t(), 2), versions=dict(versions), phases=dict(phases), waves=waves,
            checkins_per_s=round(max(0, checkins - previous_checkins) / elapsed, 1),
            server_cpu_percent=round(100 * max(0.0, cpu - previous_cpu) / elapsed, 1),
            server_rss_mb=round(sum(s.rss_bytes for s in servers) / 2**20, 1),
            links_down=sum(1 for link in run.links.values() if not link.up)))
        previous_checkins, previous_cpu, previous_at = checkins, cpu, now


def _phase(device: SimDevice) -> str:
    """What the device is doing, as its owner would see it from the site."""
    if not device.powered:
        return "powered off"
    if device.agent is not None and device.agent.last_error and device.agent.checkins:
        return "unreachable"
    if device.agent is None:
        return "booting"
    return device.agent.runner.job.phase.value if device.agent.runner is not None and \
        device.agent.runner.job.active else "idle"


async def _drain_telemetry(run: Run, timeout: float = 60.0) -> dict[str, int]:
    """How many records the devices had written by now, and how many of those the control
    plane holds after the shippers have had ``timeout`` seconds to deliver them."""
    assert run.client is not None
    client = run.client

    def written() -> dict[str, tuple[str, int]]:
        result = {}
        for d in run.devices:
            path = d.device.agent_dir / "telemetry.db"
            if d.agent is not None and d.agent.device_id is not None and path.exists():
                buffer = open_buffer(path, 64 << 20)
                try:
                    result[d.device.hardware_id()] = (d.agent.device_id, buffer.last_seq())
                finally:
                    buffer.close()
        return result

    wanted = await asyncio.to_thread(written)
    stored: dict[str, int] = {}
    deadline = time.monotonic() + timeout
    while True:
        missing = [(hw, dev, seq) for hw, (dev, seq) in wanted.items() if stored.get(hw, 0) < seq]
        if not missing or time.monotonic() > deadline:
            break
        for hw, device_id, _ in missing:
            with contextlib.suppress(EdgefleetError):
                page = await asyncio.to_thread(client.call_json, "GET",
                                               f"/api/v1/admin/devices/{device_id}/telemetry",
                                               params={"after": 1 << 40, "limit": 1})
                stored[hw] = int(page["stored_through"])
        await asyncio.sleep(1.0)
    total = sum(seq for _, seq in wanted.values())
    lost = sum(max(0, seq - stored.get(hw, 0)) for hw, (_, seq) in wanted.items())
    return {"written": total, "stored": total - lost, "lost": lost}


async def _outcome(run: Run, telemetry: dict[str, int]) -> dict[str, Any]:
    """What the control plane says at the end, in terms that do not depend on timing."""
    assert run.client is not None
    client = run.client

    def fleet() -> list[Any]:
        devices, offset = [], 0
        while True:
            page = client.devices(limit=1000, offset=offset)
            devices += page.devices
            offset += len(page.devices)
            if not page.devices or offset >= page.total:
                return devices

    devices = await asyncio.to_thread(fleet)
    versions = Counter(d.running_version or "none" for d in devices)
    quarantined = sum(1 for d in devices if d.attestation and d.attestation.get("quarantined"))
    attested = sum(1 for d in devices if d.attestation and d.attestation.get("passed"))
    seen_after = run.clock.now() - timedelta(
        seconds=(3 * run.scenario.agent.checkin_interval_seconds + 10) * run.scenario.clock.speed)
    silent = sum(1 for d in devices if d.last_seen_at is None or d.last_seen_at < seen_after)
    rollout = None
    if run.rollout is not None:
        rollout = {"status": run.rollout.status, "wave": run.rollout.wave,
                   "reason": run.rollout.reason, "waves": [dict(w.counts) for w in run.rollout.waves],
                   "failed": [f for w in run.rollout.waves for f in w.failed]}
    return {"devices": len(devices), "versions": dict(sorted(versions.items())), "quarantined": quarantined,
            "attested": attested, "silent_at_end": silent, "rollout": rollout, "telemetry": telemetry}


def _figures(run: Run) -> dict[str, Any]:
    checkins = [s.checkins_per_s for s in run.samples]
    cpu = [s.server_cpu_percent for s in run.samples]
    return {
        "devices": len(run.devices),
        "server_processes": run.scenario.servers.processes,
        "clock_speed": run.scenario.clock.speed,
        "database": run.scenario.servers.database,
        "checkins_per_s_mean": round(sum(checkins) / len(checkins), 1) if checkins else 0.0,
        "server_cpu_percent_mean": round(sum(cpu) / len(cpu), 1) if cpu else 0.0,
        "server_rss_mb_max": max((s.server_rss_mb for s in run.samples), default=0.0),
        "server_cpu_seconds_per_process": [round(s.cpu_seconds, 1) for s in run.pool.samples()] if run.pool else [],
        "link_connections": sum(link.stats.connections for link in run.links.values()),
        "link_refused_during_outages": sum(link.stats.refused for link in run.links.values()),
        "link_bytes_down": sum(link.stats.bytes_down for link in run.links.values()),
    }


async def _shutdown(run: Run) -> None:
    tasks = [d.task for d in run.devices if d.task is not None]
    if tasks:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
    for link in run.links.values():
        await link.close()
    if run.client is not None:
        run.client.close()
    if run.pool is not None:
        await run.pool.stop()
