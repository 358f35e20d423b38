"""A group's release in the fleet repository goes out as a wave rollout with the group's own
plan: started once per release, only to the group's devices, superseding the group's older
rollout, waiting for a release that is not published yet, and refusing a bad plan."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.credentials import Role
from tests.ab_world import HARDWARE, AbWorld, eventually
from tests.cli_helpers import cli
from tests.conftest import Fleet, start_fleet
from tests.gitops_world import FleetRepo, tools

STORES = """selector: {matchLabels: {role: store}}
release: '%s'
rollout:
  waves: [{size: 1, bake_seconds: 0}, {size: 100%%}]
  failure_threshold: 1
  budgets: [{group_by: site, max_updating: 5}]
"""
LAB = "selector: {matchLabels: {role: store, lab: 'yes'}}\npriority: 20\n"


@pytest.fixture
def repo(tmp_path: Path) -> FleetRepo:
    tools()
    return FleetRepo(tmp_path / "git")


@pytest.fixture
def world(tmp_path: Path, repo: FleetRepo) -> Iterator[AbWorld]:
    plane = start_fleet(tmp_path / "plane", None, gitops_interval_seconds=3600, rollout_tick_seconds=0.2, gitops=[
        {"name": "platform", "kind": "root", "url": str(repo.path), "branch": "main",
         "allowed_signers": str(repo.allowed_signers("alice"))}])
    world = AbWorld(plane, tmp_path / "world")
    yield world
    plane.close()


def api(plane: Fleet, method: str, path: str) -> Any:
    response = plane.client(role=Role.OPERATOR).request(method, path)
    assert response.status_code == 200, response.text
    return response.json()


def git_rollouts(plane: Fleet) -> list[dict[str, Any]]:
    return [r for r in api(plane, "GET", "/api/v1/admin/rollouts")["rollouts"] if r["created_by"].startswith("gitops")]


def assigned(plane: Fleet, device_id: str) -> str | None:
    release: str | None = api(plane, "GET", f"/api/v1/admin/devices/{device_id}/desired")["document"].get("release")
    return release


def test_group_release_in_git_rolls_out_in_the_groups_waves_to_the_groups_devices_only(
        world: AbWorld, repo: FleetRepo) -> None:
    plane = world.plane
    world.publish("2026.12.0", 12)
    stores = [plane.enroll(site=f"store-{i % 2}", labels={"role": "store"}, hardware_type=HARDWARE) for i in range(3)]
    lab = plane.enroll(site="store-0", labels={"role": "store", "lab": "yes"}, hardware_type=HARDWARE)
    sha = repo.commit({"groups/stores.yaml": STORES % "2026.12.0", "groups/lab.yaml": LAB}, "roll", signer="alice")
    api(plane, "POST", "/api/v1/admin/gitops/sync")
    [started] = git_rollouts(plane)
    source = (started["release"], started["group"], started["created_by"])
    assert source == ("2026.12.0", "stores", f"gitops@{sha[:12]}")
    assert len(started["waves"]) == 2
    eventually(lambda: api(plane, "GET", f"/api/v1/admin/rollouts/{started['id']}")["wave"] == 1, what="wave 1")
    # Wave 1 is one device; nobody reports, so the rollout stays there (deadline 24 h).
    eventually(lambda: sum(assigned(plane, d.id) == "2026.12.0" for d in stores) == 1, what="the canary told")
    assert assigned(plane, lab.id) is None  # the lab group has priority, and no release
    view = api(plane, "GET", f"/api/v1/admin/rollouts/{started['id']}")
    assert sum(view["waves"][0]["counts"].values()) == 1
    shown = " ".join(cli("rollout", "status", started["id"], *world.server).split())
    assert "of group stores" in shown
    assert f"gitops@{sha[:12]}" in shown

    # Syncing again starts nothing new: a group's release is rolled out once.
    api(plane, "POST", "/api/v1/admin/gitops/sync")
    assert [r["id"] for r in git_rollouts(plane)] == [started["id"]]

    # A release that is not published yet waits; publishing it lets the next pass start it,
    # and the group's older rollout is superseded.
    repo.commit({"groups/stores.yaml": STORES % "2026.12.1"}, "next", signer="alice")
    api(plane, "POST", "/api/v1/admin/gitops/sync")
    assert [r["release"] for r in git_rollouts(plane)] == ["2026.12.0"]
    world.publish("2026.12.1", 13)
    api(plane, "POST", "/api/v1/admin/gitops/sync")
    newest, older = git_rollouts(plane)
    assert (newest["release"], newest["group"]) == ("2026.12.1", "stores")
    assert older["status"] == "aborted"
    assert f"superseded by {newest['id']}" in older["reason"]


def test_a_bad_rollout_plan_in_git_is_refused_with_its_file(world: AbWorld, repo: FleetRepo) -> None:
    plane = world.plane
    world.publish("2026.12.0", 12)
    bad = "selector: {matchLabels: {role: store}}\nrelease: '2026.12.0'\nrollout: {waves: [{size: lots}]}\n"
    repo.commit({"groups/stores.yaml": bad}, "bad plan", signer="alice")
    [decision] = api(plane, "POST", "/api/v1/admin/gitops/sync")["commits"]
    assert not decision["accepted"]
    assert any(r.startswith("groups/stores.yaml") and "size" in r for r in decision["reasons"]), decision["reasons"]
    assert git_rollouts(plane) == []


def test_overlapping_rollouts_are_refused_and_a_group_waits_for_the_operators_rollout(
        world: AbWorld, repo: FleetRepo) -> None:
    plane = world.plane
    world.publish("2026.12.0", 12)
    plane.enroll(site="store-0", labels={"role": "store"}, hardware_type=HARDWARE)
    client = plane.client(role=Role.OPERATOR)
    body = {"release": "2026.12.0", "selector": {"role": "store"}, "waves": [{"size": "100%"}]}
    first = client.post("/api/v1/admin/rollouts", json=body)
    assert first.status_code == 201, first.text
    overlapping = client.post("/api/v1/admin/rollouts", json={**body, "selector": {"site": "store-0"}})
    assert overlapping.status_code == 409
    assert overlapping.json()["error"]["code"] == "rollout_overlap"
    assert first.json()["id"] in overlapping.json()["error"]["message"]

    repo.commit({"groups/stores.yaml": STORES % "2026.12.0"}, "roll", signer="alice")
    api(plane, "POST", "/api/v1/admin/gitops/sync")
    assert git_rollouts(plane) == []  # the operator's rollout has the devices: the group waits
    aborted = client.post(f"/api/v1/admin/rollouts/{first.json()['id']}/abort/now", json={})
    assert aborted.status_code == 200, aborted.text
    api(plane, "POST", "/api/v1/admin/gitops/sync")
    assert [r["group"] for r in git_rollouts(plane)] == ["stores"]
