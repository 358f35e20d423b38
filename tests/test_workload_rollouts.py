"""A group's workload set moves through the group's waves like a release: canary first,
judged on what the devices report of their workloads, halted when the canary's workload
fails, reverted on request, and completed wave by wave when healthy."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from edgefleet.credentials import Role
from edgefleet.gitops.render import render
from edgefleet.protocol.hashing import workload_part
from edgefleet.protocol.workload_verdicts import judge, revision
from tests.ab_world import AbWorld, until
from tests.conftest import Fleet, start_fleet
from tests.gitops_world import FleetRepo
from tests.test_gitops import BASE
from tests.wasm_modules import module

PLANNED = """selector: {matchLabels: {site: store-1}}
maintenance: {install: []}
rollout:
  waves: [{size: 1, bake_seconds: 1}, {size: 100%}]
  failure_threshold: 1
"""
ENTRY = {"name": "meter", "kind": "WasmModule", "target": "artifacts/1/meter.wasm"}
SET = {"manifests": [], "wasm": [ENTRY]}


def meter(version: str, policy: str = "on-failure") -> str:
    return (f"- {{name: meter, target: artifacts/{version}/meter.wasm,\n"
            f"   restart: {{policy: {policy}, initial_seconds: 0.2, max_seconds: 0.5}}}}\n")


def status(**fields: Any) -> dict[str, Any]:
    return {"name": "meter", "kind": "wasm", "state": "running", "restarts": 0, "last_exit": None,
            "exit_code": None, **fields}


def test_a_device_has_taken_a_workload_set_when_it_runs_each_declared_version_and_none_failed() -> None:
    part, digest = workload_part(ENTRY)
    assert judge(SET, {part: digest}, [status()]).phase == "committed"
    assert judge(SET, {part: digest}, [status(state="exited", last_exit="exited", exit_code=0)]).phase == "committed"
    assert judge(SET, {}, [status()]).phase == "installing"  # an older version still runs
    assert judge(SET, None, None).phase == "installing"  # nothing reported yet
    assert judge(SET, {part: digest}, [status(healthy=False)]).phase == "installing"  # not healthy yet
    crashed = judge(SET, {part: digest}, [status(state="backing_off", last_exit="crashed", restarts=3,
                                                 detail="unreachable")])
    assert (crashed.phase, crashed.reason) == ("failed", "workload meter crashed: unreachable (restarts: 3)")
    assert judge(SET, {part: digest}, [status(last_exit="exited", exit_code=2)]).phase == "failed"
    refused = judge(SET, {}, [status(update_refused="hash mismatch")])  # the old version runs on
    assert (refused.phase, refused.reason) == ("failed", "workload meter refused: hash mismatch")
    assert judge({"manifests": [], "wasm": [], "microvm": []}, None, None).phase == "committed"
    assert revision(SET) != revision({"manifests": [], "wasm": [], "microvm": []})


def test_a_workload_update_rolls_out_in_waves_halts_on_the_canarys_failure_and_reverts(tmp_path: Path) -> None:
    repo = FleetRepo(tmp_path / "git")
    repo.with_apps({**BASE, "groups/stores.yaml": PLANNED}, {"apps/stores/wasm.yaml": meter("2026.12.1")})
    plane: Fleet = start_fleet(tmp_path / "plane", None, gitops_interval_seconds=3600, rollout_tick_seconds=0.2,
                               gitops=repo.syncs())
    operator = plane.client(role=Role.OPERATOR)
    world = AbWorld(plane, tmp_path / "releases")
    sha = {}
    for version, kind in (("1", "hello"), ("2", "crashes"), ("3", "hello")):
        path = tmp_path / version / "meter.wasm"
        path.parent.mkdir()
        path.write_bytes(module(kind, f"meter {version}"))
        sha[version] = hashlib.sha256(path.read_bytes()).hexdigest()
        world.publish(f"2026.12.{version}", 12 + int(version), artifacts=[path])
    devices = [world.device(f"wl{n}", status_interval_seconds=0.3, update_check_seconds=0.5) for n in range(3)]

    def runs() -> dict[str, str | None]:
        """Which meter each device reports running (its sha256)."""
        found = {}
        for device in devices:
            assert device.agent is not None
            assert device.agent.device_id is not None
            view = operator.get(f"/api/v1/admin/devices/{device.agent.device_id}").json()
            found[device.agent.device_id] = next((w["sha256"] for w in view.get("workloads") or []
                                                  if w["name"] == "meter" and w["state"] != "refused"), None)
        return found

    def rollouts() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = operator.get("/api/v1/admin/rollouts").json()["rollouts"]
        return [r for r in found if r["release"].startswith("workloads-")]

    def rollout_of(version: str) -> dict[str, Any] | None:
        rendered = render({"groups/stores.yaml": PLANNED.encode(),
                           "apps/stores/wasm.yaml": meter(f"2026.12.{version}").encode()}, [])
        wanted = revision(rendered.workloads["stores"])
        return next((r for r in rollouts() if r["release"] == wanted), None)

    def publish_meter(version: str) -> None:
        repo.commit_app({"apps/stores/wasm.yaml": meter(f"2026.12.{version}")}, f"meter {version}")
        assert operator.post("/api/v1/admin/gitops/sync").status_code == 200

    async def scenario() -> None:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(d.run(stop)) for d in devices]
        try:
            await until(lambda: all(d.agent is not None and d.agent.reports >= 1 for d in devices), what="enrolled")
            assert operator.post("/api/v1/admin/gitops/sync").status_code == 200
            await until(lambda: set(runs().values()) == {sha["1"]}, what="meter 1 on every device")
            await until(lambda: (rollout_of("1") or {}).get("status") == "completed", what="rollout of meter 1")

            # A crashing meter 2: the canary takes it and fails (at once, or while its wave
            # bakes if its first report caught it running), and the rollout halts there.
            await asyncio.to_thread(publish_meter, "2")
            await until(lambda: (rollout_of("2") or {}).get("status") == "halted", what="the halt")
            halted = rollout_of("2")
            assert halted is not None
            assert halted["wave"] == 1  # wave 2 never started
            await asyncio.sleep(1.5)  # the others are never told
            running = runs()
            [canary] = [device for device, version in running.items() if version == sha["2"]]
            assert sorted(running.values()) == sorted([sha["1"], sha["1"], sha["2"]])
            # A canary that succeeded and then crashed while its wave baked fails like one
            # that crashed at once: the planner watches succeeded devices.
            assert halted["reason"] == "1 devices failed or timed out, threshold 1"
            events = operator.get(f"/api/v1/admin/rollouts/{halted['id']}/events").json()["events"]
            assert any(e["device_id"] == canary and "workload meter crashed" in e["reason"] for e in events), [
                (e["device_id"], e["reason"]) for e in events]
            [failed] = halted["waves"][0]["failed"]
            assert failed["device_id"] == canary
            assert failed["reason"].startswith("update failed on the device: workload meter crashed"), failed

            # Abort with revert: the canary goes back to meter 1.
            response = operator.post(f"/api/v1/admin/rollouts/{halted['id']}/abort/now", json={"revert": True})
            assert response.status_code == 200, response.text
            await until(lambda: runs()[canary] == sha["1"], what="the canary back on meter 1")

            # A good meter 3 goes wave by wave to every device.
            await asyncio.to_thread(publish_meter, "3")
            await until(lambda: (rollout_of("3") or {}).get("status") == "completed", what="rollout of meter 3")
            assert set(runs().values()) == {sha["3"]}
            done = rollout_of("3")
            assert done is not None
            assert [sum(w["counts"].values()) for w in done["waves"]] == [1, 2]
            assert [w["counts"]["succeeded"] for w in done["waves"]] == [1, 2]
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)

    try:
        asyncio.run(asyncio.wait_for(scenario(), 120))
        events = operator.get(f"/api/v1/admin/rollouts/{rollout_of('3')['id']}/events").json()["events"]  # type: ignore[index]
        kinds = [e["kind"] for e in reversed(events)]
        assert kinds.index("baking") < kinds.index("wave_started", kinds.index("wave_started") + 1)
    finally:
        plane.close()
