"""A configuration's workloads are read one way by the server and the agent: the server
refuses a desired state naming a workload the agent could not run (typed 422, nothing
stored), and the agent, given one anyway (an older server), runs the valid ones and says
which it left out and why: in its log once, and as a health finding while it lasts."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from pathlib import Path
from typing import Any, cast

import pytest
from tuf.api.metadata import TargetFile

from edgefleet.agent import device_health
from edgefleet.agent.configuration import Configuration
from edgefleet.agent.device_health import HealthSources
from edgefleet.agent.settings import AgentSettings
from edgefleet.agent.state import AgentState
from edgefleet.agent.updates import UpdateClient
from edgefleet.clock import SystemClock
from edgefleet.credentials import Role
from edgefleet.protocol.hashing import canonical
from edgefleet.protocol.v1 import HealthFinding
from edgefleet.protocol.workloads import declared
from edgefleet.workloads.supervisor import Supervisor
from tests.conftest import Fleet

METER = {"name": "meter", "kind": "WasmModule", "target": "artifacts/1.0/meter.wasm"}


def config(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"group": "tills", "workloads": {"wasm": list(entries)}}


def test_a_configuration_reads_its_valid_workloads_and_names_why_each_invalid_one_is_left_out() -> None:
    found, invalid = declared(config(
        METER,
        {**METER, "name": "raw-kind", "kind": "wasm"},  # the spec's kind, not the configuration's
        {**METER, "name": "listed-kind", "kind": ["WasmModule"]},
        {**METER, "name": "greedy", "limits": {"memory_mib": -1}},
    ))
    assert [(entry["name"], spec.kind) for entry, spec in found] == [("meter", "wasm")]
    assert invalid[0] == "raw-kind: kind 'wasm' is not one of WasmModule, MicroVM, NativeService"
    assert invalid[1].startswith("listed-kind: kind ['WasmModule'] is not one of")
    assert invalid[2].startswith("greedy: limits.memory_mib: ")
    assert declared({"group": "tills"}) == ([], [])


def test_the_server_refuses_a_desired_state_with_an_invalid_workload_and_keeps_the_last_one(tmp_path: Path,
                                                                                          fleet: Fleet) -> None:
    device = fleet.enroll()
    operator = fleet.client(role=Role.OPERATOR)
    path = f"/api/v1/admin/devices/{device.id}/desired"
    accepted = operator.put(path, json={"document": {"config": config(METER)}})
    assert accepted.status_code == 200, accepted.text
    refused = operator.put(path, json={"document": {"config": config({**METER, "kind": "wasm"})}})
    assert refused.status_code == 422
    assert refused.json()["error"]["code"] == "invalid_workload"
    assert "meter: kind 'wasm' is not one of WasmModule" in refused.json()["error"]["message"]
    kept = operator.get(path).json()
    assert (kept["version"], kept["document"]["config"]) == (accepted.json()["version"], config(METER))


def test_workloads_the_agent_left_out_degrade_its_health_naming_them(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(device_health, "disk_findings", lambda path: [])  # not this machine's disk
    monkeypatch.setattr(device_health, "memory_findings", lambda: [])
    why = "raw-kind: kind 'wasm' is not one of WasmModule, MicroVM, NativeService"
    sources = HealthSources(checks=list, workloads=list, buffer=lambda: (0, 1 << 20), attested=lambda: None,
                            state_dir=tmp_path, invalid_workloads=lambda: why)
    verdict = sources.evaluate()
    assert verdict.state == "degraded"
    assert verdict.findings == (HealthFinding(name="invalid-workloads", required=False, detail=why),)


class SignedConfig:
    """Stands in for the device's update client: the director signed exactly ``config``
    (the real path is tested in test_workload_delivery and test_drift)."""

    def __init__(self, config: dict[str, Any]) -> None:
        data = canonical(config)
        self.target = TargetFile(len(data), {"sha256": hashlib.sha256(data).hexdigest()}, "config/x.json")

    def assigned_config(self) -> TargetFile:
        return self.target


def test_an_agent_given_an_invalid_signed_workload_runs_none_of_it_and_says_why_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    woken: list[None] = []
    settings = AgentSettings(server_url="https://fleet.invalid", ca_file=tmp_path / "ca.pem",
                             state_dir=tmp_path / "state")
    configuration = Configuration(settings, tmp_path / "os", SystemClock(), on_unsigned=lambda: woken.append(None))
    bad = config({**METER, "kind": "wasm"})
    state = AgentState(desired={"config": bad})

    async def apply_twice_then_clear() -> None:
        configuration.workloads = Supervisor(tmp_path / "data", tmp_path / "logs")
        updates = cast(UpdateClient, SignedConfig(bad))
        await configuration.apply_workloads(state, updates)
        await configuration.apply_workloads(state, updates)  # the same: not said again
        assert configuration.workloads.idle  # nothing runs
        state.desired = {"config": {"group": "tills"}}
        await configuration.apply_workloads(state, cast(UpdateClient, SignedConfig(state.desired["config"])))

    with caplog.at_level(logging.ERROR, logger="edgefleet.agent"):
        asyncio.run(apply_twice_then_clear())
    said = [r.getMessage() for r in caplog.records if "invalid, left out" in r.getMessage()]
    assert said == ["workloads of the configuration are invalid, left out: "
                    "meter: kind 'wasm' is not one of WasmModule, MicroVM, NativeService"]
    assert configuration.invalid_workloads is None  # cleared by the configuration that followed
    assert len(woken) == 2  # the health verdict heard of both changes at once
