"""The fleet simulator: every shipped scenario runs to completion with the outcome it
expects (the real CLI, real server processes, real agents behind emulated links), and the
same scenario against 1, 2 and 4 server processes on PostgreSQL ends the same way."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgefleet.errors import ConfigError
from edgefleet.sim.checks import comparable
from edgefleet.sim.scenario import load_scenario
from tests.conftest import POSTGRES_ADMIN_URL

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "sim"


def simulate(scenario: str, out: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """``edgefleet sim`` as a user runs it; its exit code and report.json."""
    result = subprocess.run(
        [sys.executable, "-m", "edgefleet", "sim", str(EXAMPLES / scenario), "--out", str(out), *args],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "EDGEFLEET_SIM_POSTGRES_URL": POSTGRES_ADMIN_URL, "COLUMNS": "200"})
    assert (out / "report.json").exists(), result.stdout[-3000:] + result.stderr[-3000:]
    return result.returncode, json.loads((out / "report.json").read_text())


def failed_checks(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in report["checks"] if not c["held"]]


def test_shipped_scenarios_are_valid() -> None:
    names = sorted(p.name for p in EXAMPLES.glob("*.yaml"))
    assert names == ["bad-release-canary.yaml", "calm.yaml", "regional-outage.yaml", "rollout-3-regions.yaml"]
    for path in EXAMPLES.glob("*.yaml"):
        assert load_scenario(path).expect != type(load_scenario(path).expect)(), f"{path.name} expects nothing"


def test_a_scenario_that_is_not_one_is_refused_with_where_and_why(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsites: [{name: s, devices: 1, network: nowhere}]\nreleases: [{version: '1', "
                   "running: true}]\n")
    with pytest.raises(ConfigError, match="no network profile named nowhere"):
        load_scenario(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="YAML mapping"):
        load_scenario(bad)


def test_calm_fleet_attests_quarantines_the_tampered_device_and_loses_no_telemetry(tmp_path: Path) -> None:
    code, report = simulate("calm.yaml", tmp_path, "--scale", "0.1", "--duration", "20")
    assert code == 0, failed_checks(report)
    outcome = report["outcome"]
    assert outcome["quarantined"] == 1
    assert outcome["attested"] == outcome["devices"] - 1
    assert outcome["telemetry"]["written"] > outcome["devices"]  # every device shipped something
    html = (tmp_path / "report.html").read_text()
    assert html.count("<svg") >= 5
    assert "as expected" in html
    assert "Check-ins per second" in html


def test_bad_release_halts_at_the_canary_wave_and_no_other_device_gets_it(tmp_path: Path) -> None:
    code, report = simulate("bad-release-canary.yaml", tmp_path, "--scale", "0.2")
    assert code == 0, failed_checks(report)
    rollout = report["outcome"]["rollout"]
    assert rollout["status"] == "halted"
    assert rollout["wave"] == 1
    assert all(w["succeeded"] + w["failed"] + w["updating"] == 0 for w in rollout["waves"][1:])
    assert all("health check failed" in f["reason"] for f in rollout["failed"])


def test_outage_region_catches_up_after_the_link_returns_with_no_telemetry_lost(tmp_path: Path) -> None:
    code, report = simulate("regional-outage.yaml", tmp_path, "--scale", "0.2")
    assert code == 0, failed_checks(report)
    assert report["figures"]["link_refused_during_outages"] > 0  # devices did try while cut off
    down = [s for s in report["samples"] if s["links_down"]]
    assert down
    assert any(s["phases"].get("unreachable", 0) for s in down)
    assert report["outcome"]["telemetry"]["lost"] == 0
    assert report["outcome"]["rollout"]["waves"][0]["failed"] == 0  # offline never counted as failed


def test_rollout_across_three_regions_completes_wave_by_wave_through_power_cuts(tmp_path: Path) -> None:
    code, report = simulate("rollout-3-regions.yaml", tmp_path, "--scale", "0.1")
    assert code == 0, failed_checks(report)
    events = [e["event"] for e in report["timeline"]]
    assert "power cut" in events
    assert "power restored" in events
    assert [e.get("wave") for e in report["timeline"] if e["event"] == "rollout running"] == [1, 2, 3, 4]
    # the waves baked 10 minutes of the virtual clock (60x): about 10 s of real time each
    changes = [e for e in report["timeline"] if e["event"] in ("rollout baking", "rollout running")]
    bakes = [(b, r) for b, r in itertools.pairwise(changes)
             if b["event"] == "rollout baking" and r["event"] == "rollout running"]
    assert len(bakes) == 3
    # (a bake starts at the wave's last commit, which the controller sees a tick before the
    # status the simulator samples says "baking": the gap seen is shorter than the bake)
    assert all(r["virtual_t_s"] - b["virtual_t_s"] >= 300 for b, r in bakes)
    assert all(r["t_s"] - b["t_s"] < 60 for b, r in bakes)  # 3 x 600 s of baking took minutes, not half an hour


@pytest.mark.postgres
def test_the_same_scenario_on_1_2_and_4_server_processes_gives_the_same_outcome(
    tmp_path: Path, own_postgres_url: str
) -> None:
    outcomes = {}
    for processes in (1, 2, 4):
        code, report = simulate("bad-release-canary.yaml", tmp_path / str(processes), "--scale", "0.2",
                                "--database", "postgresql", "--servers", str(processes))
        assert code == 0, (processes, failed_checks(report))
        assert len(report["figures"]["server_cpu_seconds_per_process"]) == processes
        assert all(cpu > 0.5 for cpu in report["figures"]["server_cpu_seconds_per_process"])  # each one served
        outcomes[processes] = comparable(report["outcome"])
    assert outcomes[1] == outcomes[2] == outcomes[4]
