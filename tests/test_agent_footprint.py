"""An idle agent pays only for what it runs: a real agent process (its own interpreter) on
an emulated device enrolls at a real control plane, checks in and reports, and then lists
the modules it loaded. None of the workload runtimes, the delta code, the technician
page's web framework, the metrics library, control-plane code, the remote-session verbs
and their WebSocket client, or httpx's command-line client (click, pygments, rich) may be
among them: they load when a workload, an update, the page, a metrics file or a session
needs them, and httpx's CLI never. The figures are
bench/agent_footprint.py's."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.hardware import VirtualDevice
from tests.conftest import Fleet, start_fleet

UNTIL_NEEDED = ("wasmtime", "fastcdc", "bsdiff4", "prometheus_client", "fastapi", "starlette", "uvicorn", "jinja2",
                "sqlalchemy", "cyclonedx", "edgefleet.delta", "edgefleet.workloads.wasm", "edgefleet.workloads.microvm",
                "edgefleet.localpage", "edgefleet.telemetry.health_metrics", "edgefleet.server", "edgefleet.cli",
                "edgefleet.hub", "edgefleet.agent.remote_verbs", "edgefleet.agent.pty_session", "edgefleet.web.channel",
                "websockets", "rich", "click", "pygments")  # the last three: httpx's CLI, which the agent never runs

IDLE_AGENT = """
import asyncio, json, sys
from pathlib import Path
from edgefleet.agent.main import build_agent
from edgefleet.agent.settings import AgentSettings
from edgefleet.settings import load_settings

agent = build_agent(load_settings(AgentSettings, Path(sys.argv[1]), {}))

async def idle():
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    for _ in range(600):
        if agent.checkins >= 3 and agent.reports >= 1 or task.done():
            break
        await asyncio.sleep(0.05)
    stop.set()
    await task

asyncio.run(idle())
print(json.dumps({"checkins": agent.checkins, "modules": sorted(sys.modules)}))
"""


@pytest.fixture
def plane(tmp_path: Path) -> Iterator[Fleet]:
    fleet = start_fleet(tmp_path / "plane", None)
    yield fleet
    fleet.close()


def test_an_idle_agent_loads_no_workload_runtime_delta_code_web_framework_or_metrics_library(
        plane: Fleet, tmp_path: Path) -> None:
    VirtualDevice.create(tmp_path / "device", hardware_id="hw-idle", site="store-1")
    config = tmp_path / "agent.toml"
    config.write_text(f'server_url = "{plane.url}"\nca_file = "{plane.settings.pki.ca_cert}"\n'
                      f'state_dir = "{tmp_path / "state"}"\ndevice_dir = "{tmp_path / "device"}"\n'
                      f'bootstrap_token = "{plane.bootstrap_token("store-1")}"\nlong_poll_seconds = 1\n'
                      'backoff_initial_seconds = 0.05\nbackoff_max_seconds = 0.2\n')
    done = subprocess.run([sys.executable, "-c", IDLE_AGENT, str(config)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["checkins"] >= 3, done.stderr  # it ran: enrolled, checked in
    loaded = [m for m in found["modules"] if m.startswith(UNTIL_NEEDED) and
              (m in UNTIL_NEEDED or m.startswith(tuple(f"{n}." for n in UNTIL_NEEDED)))]
    assert loaded == []
