"""WebAssembly workloads under real wasmtime: signed modules run, tampered ones are refused,
limits stop what exceeds them, crash loops back off, versions are replaced atomically."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from edgefleet.protocol.workloads import WasmWorkload
from edgefleet.workloads.supervisor import Supervisor
from edgefleet.workloads.wasm import WasmModule
from tests.ab_world import until
from tests.wasm_modules import module, settled, signed_target


def spec(name: str, **fields: Any) -> WasmWorkload:
    return WasmWorkload.model_validate({"name": name, "kind": "wasm", "target": f"workloads/{name}.wasm", **fields})


def run_with(tmp: Path, scenario: Callable[[Supervisor], Awaitable[None]]) -> None:
    async def main() -> None:
        supervisor = Supervisor(tmp / "data", tmp / "logs")
        try:
            await asyncio.wait_for(scenario(supervisor), 30)
        finally:
            await supervisor.close()

    asyncio.run(main())


def test_a_signed_module_runs_with_its_output_captured(tmp_path: Path) -> None:
    data = module("hello", "hello from the edge")

    async def scenario(supervisor: Supervisor) -> None:
        await supervisor.apply([(spec("hello", restart={"policy": "never"}),
                                 [(data, signed_target("workloads/hello.wasm", data))])])
        status = await settled(supervisor, "hello", lambda s: s.state == "exited")
        assert (status.last_exit, status.exit_code) == ("exited", 0)
        assert status.output == ["hello from the edge"]
        assert status.sha256 == signed_target("workloads/hello.wasm", data).hashes["sha256"]

    run_with(tmp_path, scenario)


def test_a_module_that_does_not_match_its_signed_target_is_refused(tmp_path: Path) -> None:
    good = module("hello")
    tampered = good.replace(b"hello from wasm", b"jello from wasm")

    async def scenario(supervisor: Supervisor) -> None:
        await supervisor.apply([(spec("hello"), [(tampered, signed_target("workloads/hello.wasm", good))])])
        [status] = supervisor.status()
        assert status.state == "refused"
        assert status.detail is not None
        assert "does not match its signed target" in status.detail
        assert not (tmp_path / "logs" / "hello.stdout").exists()  # it never ran

    run_with(tmp_path, scenario)


def test_a_module_over_its_memory_limit_is_stopped_and_reported(tmp_path: Path) -> None:
    data = module("grows")

    async def scenario(supervisor: Supervisor) -> None:
        await supervisor.apply([(spec("grows", limits={"memory_mib": 2}, restart={"policy": "never"}),
                                 [(data, signed_target("workloads/grows.wasm", data))])])
        status = await settled(supervisor, "grows", lambda s: s.state == "exited")
        assert status.last_exit == "memory_limit"
        assert status.detail == "needed more than its 2 MiB of memory"

    run_with(tmp_path, scenario)


def test_a_module_over_its_cpu_or_wall_time_limit_is_stopped_and_reported(tmp_path: Path) -> None:
    data = module("spins")

    async def scenario(supervisor: Supervisor) -> None:
        target = signed_target("workloads/spins.wasm", data)
        await supervisor.apply([
            (spec("fuel", limits={"fuel": 5_000_000}, restart={"policy": "never"}), [(data, target)]),
            (spec("wall", limits={"wall_seconds": 0.3}, restart={"policy": "never"}), [(data, target)]),
        ])
        fuel = await settled(supervisor, "fuel", lambda s: s.state == "exited")
        assert (fuel.last_exit, fuel.detail) == ("cpu_limit", "used its 5000000 units of fuel")
        started = time.monotonic()
        wall = await settled(supervisor, "wall", lambda s: s.state == "exited")
        assert wall.last_exit == "wall_time"
        assert time.monotonic() - started < 5

    run_with(tmp_path, scenario)


def test_a_crash_looping_module_backs_off(tmp_path: Path) -> None:
    data = module("crashes")
    restart = {"policy": "always", "initial_seconds": 0.05, "max_seconds": 0.4}

    async def scenario(supervisor: Supervisor) -> None:
        await supervisor.apply([(spec("crashes", restart=restart), [(data, signed_target("workloads/c.wasm", data))])])
        await asyncio.sleep(2.0)
        status = await settled(supervisor, "crashes", lambda s: True)
        assert status.last_exit == "crashed"
        assert status.detail is not None
        assert status.detail.startswith("unreachable")
        # Without backoff it would have restarted hundreds of times; the delays double
        # (0.05, 0.1, 0.2, 0.4, 0.4, ...; each jittered down to half): at most about 10 in 2 s.
        assert 3 <= status.restarts <= 12, status.restarts

    run_with(tmp_path, scenario)


def test_a_new_version_replaces_the_running_one_only_once_it_verifies(tmp_path: Path) -> None:
    v1, v2 = module("serves", "v1 serving"), module("serves", "v2 serving")
    target_v2 = signed_target("workloads/svc.wasm", v2)

    async def scenario(supervisor: Supervisor) -> None:
        await supervisor.apply([(spec("svc"), [(v1, signed_target("workloads/svc.wasm", v1))])])
        first = await settled(supervisor, "svc", lambda s: s.state == "running" and "v1 serving" in s.output)
        # The new version's bytes are tampered with: refused, and v1 keeps serving.
        await supervisor.apply([(spec("svc"), [(v2.replace(b"v2 serving", b"v3 serving"), target_v2)])])
        kept = await settled(supervisor, "svc", lambda s: s.update_refused is not None)
        assert (kept.state, kept.sha256) == ("running", first.sha256)
        stdout = tmp_path / "logs" / "svc.stdout"
        size = stdout.stat().st_size
        await until(lambda: stdout.stat().st_size > size, what="v1 still serving")
        # The real new version: verified and compiled, then swapped in.
        await supervisor.apply([(spec("svc"), [(v2, target_v2)])])
        swapped = await settled(supervisor, "svc", lambda s: "v2 serving" in s.output)
        assert swapped.sha256 == target_v2.hashes["sha256"]
        assert swapped.update_refused is None
        assert swapped.state == "running"
        # Removed from the declared set: stopped.
        await supervisor.apply([])
        assert supervisor.status() == []

    run_with(tmp_path, scenario)


def test_a_module_gets_only_the_arguments_and_environment_declared(tmp_path: Path) -> None:
    data = module("hello")
    compiled = WasmModule(spec("env", args=["--port", "80"], env={"SITE": "store-1"}),
                          [(data, signed_target("workloads/env.wasm", data))])
    result = compiled.run(tmp_path / "data", tmp_path / "logs")
    assert (result.reason, result.exit_code) == ("exited", 0)
    compiled.stop()
    assert compiled.run(tmp_path / "data", tmp_path / "logs").reason == "stopped"  # a stopped version stays so


def test_more_services_than_worker_threads_all_run(tmp_path: Path) -> None:
    services = {f"svc{n}": module("serves", f"service {n}") for n in range(12)}

    async def scenario(supervisor: Supervisor) -> None:
        await supervisor.apply([(spec(name), [(data, signed_target(f"workloads/{name}.wasm", data))])
                                for name, data in services.items()])
        for n, name in enumerate(services):
            await settled(supervisor, name, lambda s, n=n: f"service {n}" in s.output)

    run_with(tmp_path, scenario)


def test_a_module_with_a_health_marker_is_healthy_once_its_output_says_so(tmp_path: Path) -> None:
    ready, silent = module("spins", "READY to serve"), module("spins", "warming up")

    async def scenario(supervisor: Supervisor) -> None:
        await supervisor.apply([(spec("ready", health_marker="READY"), [(ready, signed_target(
                                     "workloads/ready.wasm", ready))]),
                                (spec("silent", health_marker="READY"), [(silent, signed_target(
                                    "workloads/silent.wasm", silent))]),
                                (spec("plain"), [(silent, signed_target("workloads/plain.wasm", silent))])])
        healthy = await settled(supervisor, "ready", lambda s: s.healthy is True)
        assert healthy.state == "running"
        warming = await settled(supervisor, "silent", lambda s: s.output == ["warming up"])
        assert (warming.state, warming.healthy) == ("running", False)  # running, but it never said it is ready
        plain = await settled(supervisor, "plain", lambda s: s.output == ["warming up"])
        assert (plain.state, plain.healthy) == ("running", None)  # no health signal declared

    run_with(tmp_path, scenario)
