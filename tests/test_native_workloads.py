"""Native services as real child processes: a program of the OS image or a signed
artifact runs with only its declared environment, in its own directory; limits stop what
exceeds them; a crash loop backs off; stopping ends everything the service started; a
tampered or missing program never starts."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

from edgefleet.protocol.workloads import NativeWorkload
from edgefleet.workloads.supervisor import Supervisor
from tests.test_wasm_workloads import run_with
from tests.wasm_modules import settled, signed_target

SCRIPT = b"#!/bin/sh\necho \"meter $1 reading $(cat reading 2>/dev/null || echo none)\"\n"


def service(name: str, **fields: Any) -> NativeWorkload:
    return NativeWorkload.model_validate({"name": name, "kind": "native", **fields})


def test_an_os_program_runs_with_only_the_declared_environment_in_its_own_directory(tmp_path: Path) -> None:
    spec = service("env", command=["/bin/sh", "-c", "echo \"$GREETING in $PWD\"; env | cut -d= -f1 | sort"],
                   env={"GREETING": "hello"}, restart={"policy": "never"})

    async def scenario(supervisor: Supervisor) -> None:
        await supervisor.apply([(spec, [])])
        status = await settled(supervisor, "env", lambda s: s.state == "exited")
        assert (status.last_exit, status.exit_code) == ("exited", 0)
        assert status.output[0] == f"hello in {tmp_path / 'data' / 'env'}"
        assert set(status.output[1:]) <= {"GREETING", "HOME", "PATH", "PWD", "SHLVL"}

    run_with(tmp_path, scenario)


def test_a_signed_program_runs_and_a_tampered_one_never_starts(tmp_path: Path) -> None:
    spec = service("meter", target="workloads/meter.sh", command=["north"], restart={"policy": "never"})
    (tmp_path / "data" / "meter").mkdir(parents=True)
    (tmp_path / "data" / "meter" / "reading").write_text("42")

    async def scenario(supervisor: Supervisor) -> None:
        tampered = SCRIPT.replace(b"meter", b"evil!")
        await supervisor.apply([(spec, [(tampered, signed_target("workloads/meter.sh", SCRIPT))])])
        [refused] = supervisor.status()
        assert refused.state == "refused"
        assert "does not match its signed target" in (refused.detail or "")
        assert not (tmp_path / "logs" / "meter.stdout").exists()
        await supervisor.apply([(spec, [(SCRIPT, signed_target("workloads/meter.sh", SCRIPT))])])
        status = await settled(supervisor, "meter", lambda s: s.state == "exited")
        assert status.output == ["meter north reading 42"]
        [kept] = (tmp_path / "data" / ".artifacts").iterdir()
        assert oct(kept.stat().st_mode)[-3:] == "555"  # read-only, executable

    run_with(tmp_path, scenario)


def test_a_missing_program_is_refused(tmp_path: Path) -> None:
    async def scenario(supervisor: Supervisor) -> None:
        await supervisor.apply([(service("gone", command=["/nonexistent/bin/meter"]), [])])
        [status] = supervisor.status()
        assert status.state == "refused"
        assert "/nonexistent/bin/meter is not an executable program" in (status.detail or "")

    run_with(tmp_path, scenario)


def test_cpu_and_wall_time_limits_stop_a_service_and_say_why(tmp_path: Path) -> None:
    spinner = service("spin", command=["/bin/sh", "-c", "while :; do :; done"], limits={"cpu_seconds": 1},
                      restart={"policy": "never"})
    sleeper = service("sleep", command=["/bin/sleep", "30"], limits={"wall_seconds": 0.5},
                      restart={"policy": "never"})

    async def scenario(supervisor: Supervisor) -> None:
        await supervisor.apply([(spinner, []), (sleeper, [])])
        spun = await settled(supervisor, "spin", lambda s: s.state == "exited")
        assert spun.last_exit == "cpu_limit", spun
        slept = await settled(supervisor, "sleep", lambda s: s.state == "exited")
        assert (slept.last_exit, slept.detail) == ("wall_time", "stopped after 0.5 s")

    run_with(tmp_path, scenario)


def test_a_crash_looping_service_backs_off(tmp_path: Path) -> None:
    spec = service("flaky", command=["/bin/sh", "-c", "echo starting; exit 3"],
                   restart={"policy": "always", "initial_seconds": 0.2, "max_seconds": 1})

    async def scenario(supervisor: Supervisor) -> None:
        await supervisor.apply([(spec, [])])
        status = await settled(supervisor, "flaky", lambda s: s.restarts >= 3)
        assert (status.last_exit, status.exit_code) == ("exited", 3)
        assert status.output[-1] == "starting"
        await asyncio.sleep(1.2)
        later = next(s for s in supervisor.status() if s.name == "flaky")
        assert later.restarts <= status.restarts + 5  # backing off up to 1 s apart, not a busy loop

    run_with(tmp_path, scenario)


def test_stopping_a_service_ends_everything_it_started(tmp_path: Path) -> None:
    spec = service("tree", command=["/bin/sh", "-c", "/bin/sleep 3131 & /bin/sleep 3131"])

    def sleepers() -> list[str]:
        found = subprocess.run(["pgrep", "-f", "^/bin/sleep 3131$"], capture_output=True, text=True).stdout
        return found.split()

    async def scenario(supervisor: Supervisor) -> None:
        await supervisor.apply([(spec, [])])
        for _ in range(100):
            if len(sleepers()) == 2:
                break
            await asyncio.sleep(0.05)
        assert len(sleepers()) == 2
        await supervisor.apply([])  # removed from the configuration
        for _ in range(100):
            if not sleepers():
                break
            await asyncio.sleep(0.05)
        assert sleepers() == []

    run_with(tmp_path, scenario)


def test_a_service_with_a_health_marker_is_healthy_once_its_output_says_so(tmp_path: Path) -> None:
    spec = service("bridge", command=["/bin/sh", "-c", "echo warming; sleep 0.5; echo READY; exec sleep 30"],
                   health_marker="READY")

    async def scenario(supervisor: Supervisor) -> None:
        await supervisor.apply([(spec, [])])
        warming = await settled(supervisor, "bridge", lambda s: s.output == ["warming"])
        assert (warming.state, warming.healthy) == ("running", False)
        ready = await settled(supervisor, "bridge", lambda s: s.healthy is True)
        assert ready.output == ["warming", "READY"]

    run_with(tmp_path, scenario)
