"""The real agent against the real control plane, on an emulated device."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from edgefleet.agent import Agent, AgentSettings
from edgefleet.agent.enrollment import https_transport
from edgefleet.agent.hardware import VirtualDevice
from edgefleet.agent.state import StateDir
from edgefleet.credentials import Role
from edgefleet.errors import ServerRefused, Throttled, TransportError
from edgefleet.protocol.v1 import DesiredState
from edgefleet.util.ports import free_port
from edgefleet.web.device_client import DeviceTransport, HttpsTransport
from tests.conftest import Fleet, own_findings


def make_agent(fleet: Fleet, tmp_path: Path, *, token: str | None = None, site: str = "store-1",
               **overrides: object) -> Agent:
    device = VirtualDevice.create(tmp_path / "vdev", hardware_id=f"hw-{tmp_path.name}"[:60], site=site,
                                  os_version="2026.11.1")
    settings = AgentSettings(
        server_url=fleet.url, ca_file=fleet.settings.pki.ca_cert, state_dir=device.agent_dir,
        bootstrap_token=token or fleet.bootstrap_token(site), checkin_interval_seconds=0.1,
        backoff_initial_seconds=0.05, backoff_max_seconds=0.2, **overrides,
    )
    return Agent(settings, device, site=site)


async def run_until(agent: Agent, condition: Callable[[], bool], timeout: float = 20) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    deadline = time.monotonic() + timeout
    try:
        while not condition():
            if task.done():
                task.result()  # surface the agent's exception
            assert time.monotonic() < deadline, f"condition not met; last error {agent.last_error}"
            await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def test_agent_enrolls_checks_in_and_reports_its_running_version(fleet: Fleet, tmp_path: Path) -> None:
    agent = make_agent(fleet, tmp_path)
    asyncio.run(run_until(agent, lambda: agent.reports >= 1 and agent.checkins >= 2 and agent.health is not None
                          and agent.health.verdict is not None and agent.reports >= 2))
    record = fleet.client(role=Role.VIEWER).get(f"/api/v1/admin/devices/{agent.device_id}").json()
    assert record["running_version"] == "2026.11.1"
    # Judged by the agent: this emulated device ships no TUF roots, so it refuses all
    # configuration (fail closed) and says why; nothing else fails.
    assert record["health"] == "unhealthy"
    found = own_findings(record["health_findings"])
    assert [(f["name"], f["required"]) for f in found] == [("trust-roots", True)]
    assert found[0]["detail"].startswith("no TUF roots in ")
    assert record["status_seq"] >= 1
    state_dir = StateDir(agent.settings.state_dir)
    assert json.loads(state_dir.state_file.read_text())["device_id"] == agent.device_id
    assert state_dir.key.stat().st_mode & 0o777 == 0o600


def test_restarted_agent_keeps_its_identity_and_never_reuses_a_status_seq(fleet: Fleet, tmp_path: Path) -> None:
    agent = make_agent(fleet, tmp_path)
    asyncio.run(run_until(agent, lambda: agent.reports >= 1))
    first_id = agent.device_id
    seq_after_first = StateDir(agent.settings.state_dir).load().status_seq
    again = Agent(agent.settings, agent.platform, site="store-1")  # same (now spent) token
    asyncio.run(run_until(again, lambda: again.reports >= 1))
    assert again.device_id == first_id
    record = fleet.client(role=Role.VIEWER).get(f"/api/v1/admin/devices/{first_id}").json()
    assert record["status_seq"] > seq_after_first


def test_agent_in_long_poll_receives_desired_state_at_once_and_without_tuf_roots_applies_none_of_it(
    fleet: Fleet, tmp_path: Path
) -> None:
    """The push wakes the long poll at once. The device ships no TUF roots: it cannot
    verify the director's signature, so it applies nothing (it once applied configuration
    verified by mTLS alone: fail open), holds no token, and reports why."""
    agent = make_agent(fleet, tmp_path, long_poll_seconds=30, status_interval_seconds=0.2)
    intruder = {"config": {"group": "stores", "os": {"cloud_init": "#cloud-config\nusers: [{name: intruder}]\n"}}}
    operator = fleet.client(role=Role.OPERATOR)
    viewer = fleet.client(role=Role.VIEWER)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        for _ in range(400):
            if agent.reports >= 1:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # now parked in a 30 s long poll
        await asyncio.to_thread(operator.put, f"/api/v1/admin/devices/{agent.device_id}/desired",
                                json={"document": intruder})
        deadline = time.monotonic() + 5  # far below the 30 s poll: the push woke it
        while StateDir(agent.settings.state_dir).load().desired_version != 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        reports = agent.reports
        while agent.reports < reports + 2:  # reports after it arrived (every 0.2 s)
            assert time.monotonic() < deadline + 60
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())
    assert StateDir(agent.settings.state_dir).load().desired == intruder  # received
    record = viewer.get(f"/api/v1/admin/devices/{agent.device_id}").json()
    assert record["desired_version_applied"] is None  # and not acted on
    assert [f["name"] for f in own_findings(record["health_findings"])] == ["trust-roots"]
    assert not any(Path(agent.settings.state_dir).parent.rglob("user-data"))


class FlakyTransport:
    """The real HTTPS transport behind a link that is down for the first ``failures`` calls."""

    def __init__(self, inner: DeviceTransport, failures: int) -> None:
        self.inner = inner
        self.failures = failures
        self.calls = 0

    def _gate(self) -> None:
        self.calls += 1
        if self.calls <= self.failures:
            raise TransportError("link down")

    async def enroll(self, request):  # type: ignore[no-untyped-def]
        self._gate()
        return await self.inner.enroll(request)

    async def fetch_desired(self, device_id, known, wait):  # type: ignore[no-untyped-def]
        self._gate()
        return await self.inner.fetch_desired(device_id, known, wait)

    async def report_status(self, device_id, report):  # type: ignore[no-untyped-def]
        return await self.inner.report_status(device_id, report)

    async def ship_telemetry(self, device_id, gzipped):  # type: ignore[no-untyped-def]
        return await self.inner.ship_telemetry(device_id, gzipped)

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_agent_retries_with_backoff_through_a_dead_link_then_enrolls(fleet: Fleet, tmp_path: Path) -> None:
    flaky: list[FlakyTransport] = []

    def factory(settings, state_dir, enrolled):  # type: ignore[no-untyped-def]
        flaky.append(FlakyTransport(https_transport(settings, state_dir, enrolled), failures=3))
        return flaky[-1]

    agent = make_agent(fleet, tmp_path)
    agent._transport_factory = factory
    asyncio.run(run_until(agent, lambda: agent.reports >= 1 and agent.checkins >= 1))
    assert flaky[0].calls == 4  # three failed enrollment attempts, then success
    assert flaky[1].calls >= 4  # three failed check-ins, then success


def test_agent_with_a_refused_token_stops_with_a_clear_error(fleet: Fleet, tmp_path: Path) -> None:
    token = fleet.bootstrap_token()
    fleet.client().post("/api/v1/enroll", json=fleet.enroll_request(token))  # someone else used it
    agent = make_agent(fleet, tmp_path, token=token)
    with pytest.raises(ServerRefused) as refused:
        asyncio.run(agent.run(asyncio.Event()))
    assert refused.value.status == 401


def test_agent_command_enrolls_and_exits_cleanly_on_sigterm(fleet: Fleet, tmp_path: Path) -> None:
    device = VirtualDevice.create(tmp_path / "vdev", hardware_id=f"hw-cli-{os.getpid()}-{tmp_path.name}"[:60],
                                  site="store-1")
    config = tmp_path / "agent.toml"
    config.write_text(
        f'server_url = "{fleet.url}"\nca_file = "{fleet.settings.pki.ca_cert}"\n'
        f'state_dir = "{device.agent_dir}"\ndevice_dir = "{device.path}"\n'
        f'bootstrap_token = "{fleet.bootstrap_token()}"\ncheckin_interval_seconds = 0.2\n'
    )
    proc = subprocess.Popen([sys.executable, "-m", "edgefleet", "agent", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        state_dir = StateDir(device.agent_dir)
        deadline = time.monotonic() + 30
        while not (state_dir.state_file.exists() and state_dir.load().status_seq >= 1):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0]
    assert "stopped" in output



W = TypeVar("W", bound=FlakyTransport)


def wrap_enrolled_transport(agent: Agent, wrap: Callable[[DeviceTransport], W]) -> list[W]:
    """Put ``wrap`` around the real transport the agent makes once enrolled; the wrappers
    made, in order (one per run of the check-in loop)."""
    made: list[W] = []

    def factory(settings, state_dir, enrolled):  # type: ignore[no-untyped-def]
        inner = https_transport(settings, state_dir, enrolled)
        if not enrolled:
            return inner
        made.append(wrap(inner))
        return made[-1]

    agent._transport_factory = factory
    return made


class GarbledTransport(FlakyTransport):
    """The first ``failures`` check-in answers arrive cut short (a proxy dropped the rest):
    the real transport's parser reads them."""

    async def fetch_desired(self, device_id, known, wait):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls <= self.failures:
            HttpsTransport._parse(DesiredState, httpx.Response(200, content=b'{"version": 3, "docum'))
        return await self.inner.fetch_desired(device_id, known, wait)


def test_a_malformed_answer_makes_the_agent_back_off_and_retry_instead_of_exiting(
    fleet: Fleet, tmp_path: Path
) -> None:
    agent = make_agent(fleet, tmp_path, long_poll_seconds=0)  # plain check-ins: each answers at once
    garbled = wrap_enrolled_transport(agent, lambda inner: GarbledTransport(inner, failures=3))
    errors: list[str] = []

    def seen() -> bool:
        if agent.last_error:
            errors.append(agent.last_error)
        # The fourth answer is whole: checked in, and back to normal.
        return bool(garbled) and garbled[0].calls >= 4 and agent.checkins >= 1 and agent.last_error is None

    asyncio.run(run_until(agent, seen))  # fails if the agent's run ends
    assert any("unexpected DesiredState from server" in e for e in errors)


class ThrottledTransport(FlakyTransport):
    """The server says 429 with Retry-After to the first check-in."""

    def __init__(self, inner: DeviceTransport, retry_after: float) -> None:
        super().__init__(inner, failures=0)
        self.retry_after = retry_after
        self.at: list[float] = []

    async def fetch_desired(self, device_id, known, wait):  # type: ignore[no-untyped-def]
        self.at.append(time.monotonic())
        if len(self.at) == 1:
            raise Throttled("slow down", retry_after=self.retry_after)
        return await self.inner.fetch_desired(device_id, known, wait)


def test_agent_told_to_slow_down_waits_the_servers_retry_after_not_its_own_short_backoff(
    fleet: Fleet, tmp_path: Path
) -> None:
    agent = make_agent(fleet, tmp_path)  # its backoff: 0.05 s to 0.2 s
    throttled = wrap_enrolled_transport(agent, lambda inner: ThrottledTransport(inner, retry_after=1.0))
    asyncio.run(run_until(agent, lambda: bool(throttled) and len(throttled[0].at) >= 2))
    assert throttled[0].at[1] - throttled[0].at[0] >= 1.0


def test_the_technician_page_is_closed_before_the_agent_closes_what_it_reads(fleet: Fleet, tmp_path: Path) -> None:
    # It reads the telemetry buffer: a request while the agent stopped once met a closed
    # database (a 500 in the demo's last second).
    (tmp_path / "technician").write_text("open-sesame-42\n")
    port = free_port()
    page = f"http://127.0.0.1:{port}/login"
    agent = make_agent(fleet, tmp_path, local_ui=f"127.0.0.1:{port}", local_ui_token_file=tmp_path / "technician")
    closing = agent._stop_telemetry
    answered_while_closing: list[int] = []

    async def answer(client: httpx.AsyncClient) -> int | None:
        try:
            return (await client.get(page)).status_code
        except httpx.TransportError:
            return None  # nobody listens

    async def stop_telemetry(*args: object) -> None:
        async with httpx.AsyncClient() as client:
            status = await answer(client)
        if status is not None:
            answered_while_closing.append(status)
        await closing(*args)  # type: ignore[arg-type]

    agent._stop_telemetry = stop_telemetry  # type: ignore[method-assign]

    async def scenario() -> int | None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        deadline = time.monotonic() + 20
        async with httpx.AsyncClient() as client:
            while agent.reports < 1 or await answer(client) != 200:
                assert not task.done(), agent.last_error
                assert time.monotonic() < deadline, agent.last_error
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.wait_for(task, 10)
            return await answer(client)

    assert asyncio.run(scenario()) is None  # it served, and stopped with the agent
    assert answered_while_closing == []


def test_a_decommissioned_device_erases_its_credentials_and_stops(fleet: Fleet, tmp_path: Path) -> None:
    agent = make_agent(fleet, tmp_path)
    state_dir = StateDir(agent.settings.state_dir)

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        deadline = time.monotonic() + 20
        while agent.reports < 1:
            assert not task.done(), agent.last_error
            assert time.monotonic() < deadline, agent.last_error
            await asyncio.sleep(0.05)
        assert state_dir.key.exists()
        assert state_dir.cert.exists()
        admin = fleet.client(role=Role.ADMIN)
        ended = await asyncio.to_thread(admin.delete, f"/api/v1/admin/devices/{agent.device_id}")
        assert ended.status_code == 204
        with pytest.raises(ServerRefused) as refused:
            await asyncio.wait_for(task, 20)  # by itself, at its next check-in
        assert refused.value.code == "decommissioned"

    asyncio.run(scenario())
    assert not state_dir.key.exists()
    assert not state_dir.cert.exists()
    assert not state_dir.state_file.exists()
