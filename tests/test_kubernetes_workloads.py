"""Kubernetes manifests on the device's cluster: the apply set (KEP-3659 labels and parent),
the pruning decisions, the kubectl commands, health from live status, and the hand-off to
an on-device Argo CD / Flux through a local Git repository (real git). Against a real
cluster when KUBECONFIG points at one (none can run on the CI machine: no Docker, and
K3s is not packaged for Debian)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from edgefleet.workloads.kubernetes import (
    CONTAINS,
    PART_OF,
    GitHandoff,
    KubectlApplier,
    KubernetesError,
    Ref,
    applyset_id,
    healthy,
    plan_apply,
    to_prune,
)


def deployment(name: str, namespace: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "c", "image": "pos@sha256:" + "0" * 64}]}}}}


def config_map(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": {"k": "v"}}


def test_the_apply_set_labels_every_object_and_its_parent_lists_every_kind_it_ever_held() -> None:
    manifests = [deployment("pos", "retail"), config_map("prices")]
    plan = plan_apply("stores", manifests, previous_kinds=["Service"])
    assert re.fullmatch(r"applyset-[A-Za-z0-9_-]{43}-v1", plan.id)
    assert plan.id == applyset_id("stores") != applyset_id("lab")
    parent, *objects = plan.objects
    assert (parent["kind"], parent["metadata"]["name"]) == ("ConfigMap", "edgefleet-stores")
    assert parent["metadata"]["labels"] == {"applyset.kubernetes.io/id": plan.id}
    assert parent["metadata"]["annotations"][CONTAINS] == "ConfigMap,Deployment.apps,Service"
    assert all(o["metadata"]["labels"][PART_OF] == plan.id for o in objects)
    assert [o["metadata"]["namespace"] for o in objects] == ["retail", "default"]
    assert plan.refs() == {Ref("Deployment.apps", "retail", "pos"), Ref("ConfigMap", "default", "prices")}
    assert "labels" not in manifests[1]["metadata"]  # the declared manifests are not changed


def test_only_objects_of_this_apply_set_that_it_no_longer_declares_are_pruned() -> None:
    plan = plan_apply("stores", [deployment("pos")])

    def live(obj: dict[str, Any], set_id: str | None) -> dict[str, Any]:
        labels = {PART_OF: set_id} if set_id else {}
        return {**obj, "metadata": {**obj["metadata"], "namespace": "default", "labels": labels}}

    cluster = [live(deployment("pos"), plan.id), live(deployment("old"), plan.id),
               live(deployment("theirs"), applyset_id("lab")), live(deployment("hand-made"), None),
               live(config_map("retired"), plan.id)]
    assert to_prune(plan, cluster) == [Ref("ConfigMap", "default", "retired"), Ref("Deployment.apps", "default", "old")]


def test_health_comes_from_the_live_objects_status() -> None:
    ready = {**deployment("pos"), "status": {"readyReplicas": 2}}
    assert healthy(ready) is True
    assert healthy({**deployment("pos"), "status": {"readyReplicas": 1}}) is False
    assert healthy({"kind": "Pod", "status": {"conditions": [{"type": "Ready", "status": "True"}]}}) is True
    assert healthy({"kind": "Job", "status": {"failed": 1}}) is False
    assert healthy(config_map("prices")) is None


class Recorder:
    """kubectl as a list of commands and canned answers (beside the real-cluster test)."""

    def __init__(self, live: list[dict[str, Any]], fail_apply: bool = False) -> None:
        self.commands: list[list[str]] = []
        self.live = live
        self.fail_apply = fail_apply

    def __call__(self, command: Sequence[str], stdin: bytes | None) -> bytes:
        self.commands.append(list(command))
        verb = next(word for word in command if word in ("apply", "get", "delete"))
        if verb == "apply":
            if self.fail_apply:
                raise KubernetesError("kubectl apply failed (1): admission webhook denied")
            assert stdin is not None
            assert json.loads(stdin)["kind"] == "List"
            return b"{}"
        if verb == "get" and "configmap" in command:
            return json.dumps({"metadata": {"annotations": {CONTAINS: "ConfigMap"}}}).encode()
        if verb == "get":
            return json.dumps({"items": self.live}).encode()
        return b""


def test_kubectl_applies_server_side_lists_by_label_and_deletes_only_what_was_removed() -> None:
    plan = plan_apply("stores", [deployment("pos")])
    old = {**config_map("retired"), "metadata": {"name": "retired", "namespace": "default",
                                                   "labels": {PART_OF: plan.id}}}
    pos = {**deployment("pos"), "metadata": {"name": "pos", "namespace": "default", "labels": {PART_OF: plan.id}},
           "status": {"readyReplicas": 2}}
    kubectl = Recorder([old, pos])
    applied = KubectlApplier("kubectl", Path("/etc/rancher/k3s/k3s.yaml"), run=kubectl).apply(
        "stores", [deployment("pos")])
    base = ["kubectl", "--kubeconfig", "/etc/rancher/k3s/k3s.yaml"]
    assert kubectl.commands == [
        [*base, "get", "configmap", "edgefleet-stores", "-n", "kube-system", "--ignore-not-found", "-o", "json"],
        [*base, "apply", "--server-side", "--field-manager=edgefleet", "--force-conflicts", "-o", "json", "-f", "-"],
        [*base, "get", "ConfigMap,Deployment.apps", "--all-namespaces", "-l", f"{PART_OF}={plan.id}", "-o", "json"],
        [*base, "delete", "ConfigMap/retired", "-n", "default", "--ignore-not-found", "--wait=false"]]
    assert applied.pruned == [Ref("ConfigMap", "default", "retired")]
    assert applied.health == {Ref("Deployment.apps", "default", "pos"): True}
    assert list(applied.digests) == [Ref("Deployment.apps", "default", "pos")]


def test_nothing_is_pruned_when_the_apply_fails() -> None:
    kubectl = Recorder([config_map("retired")], fail_apply=True)
    with pytest.raises(KubernetesError, match="admission webhook denied"):
        KubectlApplier(run=kubectl).apply("stores", [deployment("pos")])
    assert [c[1] for c in kubectl.commands] == ["get", "apply"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def test_manifests_are_handed_to_argo_or_flux_as_commits_of_a_local_repository(tmp_path: Path) -> None:
    handoff = GitHandoff(tmp_path / "gitops")
    first = handoff.publish("stores", [deployment("pos", "retail"), config_map("prices")], "edgefleet: config v1")
    assert first is not None
    assert sorted(git(tmp_path / "gitops", "ls-files").split()) == [
        "stores/default/configmap-prices.yaml", "stores/retail/deployment.apps-pos.yaml"]
    assert handoff.publish("stores", [deployment("pos", "retail"), config_map("prices")], "again") is None
    second = handoff.publish("stores", [deployment("pos", "retail")], "edgefleet: config v2")
    assert second not in (None, first)
    assert git(tmp_path / "gitops", "ls-files").split() == ["stores/retail/deployment.apps-pos.yaml"]
    assert git(tmp_path / "gitops", "log", "--format=%s").split("\n")[:2] == ["edgefleet: config v2",
                                                                               "edgefleet: config v1"]
    shown = json.loads((tmp_path / "gitops" / "stores/retail/deployment.apps-pos.yaml").read_text())
    assert shown == deployment("pos", "retail")


def test_apply_and_prune_on_a_real_cluster() -> None:
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig or shutil.which("kubectl") is None:
        pytest.skip("no cluster: KUBECONFIG does not point at one (none can run on the CI machine)")
    group = f"t{uuid.uuid4().hex[:8]}"
    applier = KubectlApplier(kubeconfig=Path(kubeconfig))
    try:
        applier.apply(group, [config_map(f"{group}-a"), config_map(f"{group}-b")])
        applied = applier.apply(group, [config_map(f"{group}-a")])
        assert applied.pruned == [Ref("ConfigMap", "default", f"{group}-b")]
        names = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "get", "configmaps", "-n", "default", "-l",
                                f"{PART_OF}={applyset_id(group)}", "-o", "name"], check=True, capture_output=True,
                               text=True).stdout.split()
        assert names == [f"configmap/{group}-a"]
    finally:
        applier.apply(group, [])
        subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "delete", "configmap", f"edgefleet-{group}", "-n",
                        "kube-system", "--ignore-not-found"], check=False, capture_output=True)


def test_a_device_hands_its_groups_manifests_to_a_local_repository_and_reports_it(tmp_path: Path) -> None:
    """apps/<group>/*.yaml -> director-signed configuration -> commits in the device's
    local repository for its Argo CD / Flux; a manifest removed from Git leaves it too."""
    from edgefleet.credentials import Role
    from tests.ab_world import AbWorld, run, until
    from tests.conftest import start_fleet
    from tests.gitops_world import FleetRepo
    from tests.test_gitops import BASE

    repo = FleetRepo(tmp_path / "git")
    prices = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: prices}\ndata: {currency: EUR}\n"
    repo.with_apps(BASE, {"apps/stores/prices.yaml": prices, "apps/stores/hours.yaml": prices.replace("prices",
                                                                                                     "hours")})
    plane = start_fleet(tmp_path / "plane", None, gitops_interval_seconds=3600, gitops=repo.syncs())
    local = tmp_path / "device-gitops"
    try:
        world = AbWorld(plane, tmp_path / "releases")
        world.publish("2026.12.0", 12)
        device = world.device("k8s", status_interval_seconds=0.3, update_check_seconds=0.5, kubernetes="git",
                              kubernetes_git_dir=local)
        operator = plane.client(role=Role.OPERATOR)

        def files() -> list[str]:
            # The agent may be creating the repository this very moment: not there yet.
            listed = subprocess.run(["git", "-C", str(local), "ls-files"], capture_output=True, text=True)
            return sorted(listed.stdout.split()) if listed.returncode == 0 and (local / ".git").exists() else []

        def reported() -> dict[str, Any]:
            assert device.agent is not None
            view = operator.get(f"/api/v1/admin/devices/{device.agent.device_id}").json()
            return next((w for w in view.get("workloads") or [] if w["name"] == "kubernetes"), {})

        async def steps() -> None:
            await until(lambda: device.agent is not None and device.agent.reports >= 1, what="enrollment")
            assert operator.post("/api/v1/admin/gitops/sync").status_code == 200
            await until(lambda: files() == ["stores/default/configmap-hours.yaml",
                                            "stores/default/configmap-prices.yaml"], what="handed over")
            await until(lambda: "2 objects handed to Argo CD / Flux" in (reported().get("detail") or ""),
                        what="reported")
            repo.commit_app({"apps/stores/hours.yaml": None}, "no more hours")
            assert operator.post("/api/v1/admin/gitops/sync").status_code == 200
            await until(lambda: files() == ["stores/default/configmap-prices.yaml"], what="removed")

        run(world, device, steps, timeout=90)
        assert len(git(local, "log", "--format=%H").split()) == 2
    finally:
        plane.close()
