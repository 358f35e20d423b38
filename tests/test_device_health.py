"""The device's health verdict from its signals (agent/device_health.py): health.d's
layout, what degrades and what makes a device unhealthy, with real scripts and files."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from edgefleet.agent import device_health
from edgefleet.agent.device_health import (
    CLOCK_FLOOR,
    ClockSanity,
    HealthSources,
    buffer_findings,
    disk_findings,
    health_d_checks,
    judge,
    memory_findings,
    workload_findings,
)
from edgefleet.protocol.v1 import HealthFinding
from edgefleet.protocol.workloads import WorkloadStatus


@pytest.fixture(autouse=True)
def roomy_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The verdicts here do not depend on the disk and memory of the machine the tests run
    on (the functions that read them are tested on their own, below)."""
    monkeypatch.setattr(device_health, "disk_findings", lambda path: [])
    monkeypatch.setattr(device_health, "memory_findings", lambda: [])


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return path


def sources(tmp_path: Path, health_dir: Path, **overrides: object) -> HealthSources:
    values: dict[str, object] = {"checks": lambda: health_d_checks(health_dir, timeout=5), "workloads": list,
                                 "buffer": lambda: (0, 1 << 20), "attested": lambda: None, "state_dir": tmp_path}
    return HealthSources(**{**values, **overrides})  # type: ignore[arg-type]


def test_health_d_takes_executables_as_commands_and_other_files_as_unit_names(tmp_path: Path) -> None:
    (tmp_path / "required.d").mkdir()
    (tmp_path / "wanted.d").mkdir()
    script(tmp_path / "required.d" / "app-ready", "exit 0")
    (tmp_path / "required.d" / "chrony.service").write_text("")
    (tmp_path / "wanted.d" / ".hidden").write_text("")
    (tmp_path / "wanted.d" / "outside").symlink_to("/bin/true")  # links out of health.d do not count
    (tmp_path / "wanted.d" / "nested").mkdir()
    (tmp_path / "image-check.json").write_text("{}")  # the image's declared checks are read elsewhere
    checks = health_d_checks(tmp_path)
    assert [(c.name, c.kind, c.required) for c in checks] == [
        ("health.d/app-ready", "command", True), ("health.d/chrony.service", "systemd", True)]
    assert checks[1].unit == "chrony.service"
    assert health_d_checks(None) == []
    assert health_d_checks(tmp_path / "missing") == []


def test_a_failing_wanted_check_degrades_and_a_failing_required_one_makes_the_device_unhealthy(
        tmp_path: Path) -> None:
    health = tmp_path / "health.d"
    (health / "required.d").mkdir(parents=True)
    (health / "wanted.d").mkdir()
    script(health / "wanted.d" / "metrics", "echo 'exporter down' >&2; exit 2")
    degraded = sources(tmp_path, health).evaluate()
    assert degraded.state == "degraded"
    assert [(f.name, f.required) for f in degraded.findings] == [("health.d/metrics", False)]
    assert "exporter down" in degraded.findings[0].detail
    script(health / "required.d" / "app", "echo 'port in use' >&2; exit 1")
    unhealthy = sources(tmp_path, health).evaluate()
    assert unhealthy.state == "unhealthy"
    assert [f.name for f in unhealthy.findings] == ["health.d/app", "health.d/metrics"]  # required first
    assert unhealthy.summary().startswith("unhealthy: health.d/app (exit 1 port in use)")
    (health / "required.d" / "app").unlink()
    (health / "wanted.d" / "metrics").unlink()
    assert sources(tmp_path, health).evaluate().state == "healthy"


def test_a_failed_quote_and_a_crash_looping_workload_are_required_and_pressure_only_degrades(tmp_path: Path) -> None:
    empty = tmp_path / "none"
    assert sources(tmp_path, empty, attested=lambda: False).evaluate().findings == (
        HealthFinding(name="attestation", required=True, detail="the last quote failed its verification"),)
    looping = WorkloadStatus(name="meter", kind="wasm", targets=[], sha256=None, state="backing_off", restarts=7,
                             last_exit="crashed", detail="trap: unreachable")
    finished = looping.model_copy(update={"state": "exited", "last_exit": "exited", "detail": None})
    sick = looping.model_copy(update={"name": "pos", "state": "running", "healthy": False})
    assert [(f.name, f.required) for f in workload_findings([looping, finished, sick])] == [
        ("workload/meter", True), ("workload/pos", True)]
    assert "backing_off after 7 restarts: trap: unreachable" in workload_findings([looping])[0].detail
    full = buffer_findings(95, 100)
    assert [(f.name, f.required) for f in full] == [("telemetry-buffer", False)]
    assert buffer_findings(50, 100) == []
    verdict = sources(tmp_path, empty, buffer=lambda: (95 << 20, 100 << 20)).evaluate()
    assert (verdict.state, [f.name for f in verdict.findings]) == ("degraded", ["telemetry-buffer"])


def test_disk_and_memory_pressure_are_read_from_the_system(tmp_path: Path) -> None:
    usage = shutil.disk_usage(tmp_path)
    expected = usage.free < max(64 << 20, usage.total * 0.05)
    assert bool(disk_findings(tmp_path)) == expected
    assert disk_findings(tmp_path / "missing")[0].required  # cannot even read where the state lives
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       1000000 kB\nMemFree:          10000 kB\nMemAvailable:     20000 kB\n")
    low = memory_findings(meminfo)
    assert [(f.name, f.required, f.detail) for f in low] == [("memory", False, "19 MiB available of 976 MiB")]
    meminfo.write_text("MemTotal:       1000000 kB\nMemAvailable:    500000 kB\n")
    assert memory_findings(meminfo) == []
    assert memory_findings(tmp_path / "not-linux") == []
    if os.path.exists("/proc/meminfo"):
        memory_findings()  # the real file parses


def test_a_clock_before_the_build_or_gone_back_degrades() -> None:
    clock = ClockSanity()
    assert clock.findings(CLOCK_FLOOR + 86400) == []
    assert [f.name for f in clock.findings(CLOCK_FLOOR - 1)] == ["clock"]
    assert clock.findings(CLOCK_FLOOR + 86400 - 60) == []  # NTP's small steps are tolerated
    back = clock.findings(CLOCK_FLOOR + 3600)
    assert back[0].detail == "the wall clock went back 82800s"
    assert not back[0].required


def test_judge_orders_required_findings_first() -> None:
    wanted, required = (HealthFinding(name="a", required=False, detail="x"),
                        HealthFinding(name="z", required=True, detail="y"))
    assert judge([wanted, required]).findings == (required, wanted)
    assert judge([]).state == "healthy"


def test_a_shutdown_ends_a_hung_check_at_once(tmp_path: Path) -> None:
    health = tmp_path / "health.d"
    (health / "required.d").mkdir(parents=True)
    script(health / "required.d" / "hangs", "sleep 600")
    cancel = threading.Event()
    found = sources(tmp_path, health, cancel=cancel)
    timer = threading.Timer(0.5, cancel.set)
    timer.start()
    verdict = found.evaluate()
    timer.join()
    assert verdict.state == "unhealthy"
    assert "cancelled" in verdict.findings[0].detail


def test_the_health_d_example_of_the_docs_gives_the_checks_it_says(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "health.md").read_text()
    example = doc.split("```sh\n", 1)[1].split("```", 1)[0]
    root = tmp_path / "etc-edgefleet-health.d"
    for kind in ("required.d", "wanted.d"):
        (root / kind).mkdir(parents=True)
    script(tmp_path / "check-app", "exit 0")
    subprocess.run(["sh", "-ec", example.replace("/etc/edgefleet/health.d", str(root))], cwd=tmp_path, check=True)
    assert [(c.name, c.kind, c.required) for c in health_d_checks(root)] == [
        ("health.d/app-ready", "command", True), ("health.d/chrony.service", "systemd", False)]
