"""GitOps against real git repositories with real SSH commit signatures and a real
control plane: what is accepted, what is refused and why, and that the last accepted
state stays in force."""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgefleet.credentials import Role
from tests.cli_helpers import cli, server_args
from tests.conftest import Fleet, start_fleet
from tests.gitops_world import FleetRepo, tools

GROUP = "selector: {matchLabels: {site: store-1}}\nrelease: '2026.12.0'\nmaintenance: {install: []}\n"
IGNITION = ('{"ignition": {"version": "3.3.0"}, "storage": {"files": [{"path": "/etc/motd", '
            '"contents": {"source": "data:,hello"}, "mode": 420}]}}')
CLOUD_INIT = "#cloud-config\nhostname: {{ hostname }}\nwrite_files:\n  - path: /etc/site\n    content: {{ site }}\n"
NO_PRIVILEGED = """name: no-privileged-pods
match: {kinds: [Pod]}
expression: >-
  object.spec.containers.all(c, !has(c.securityContext) || !has(c.securityContext.privileged)
  || !c.securityContext.privileged)
message: privileged containers are not allowed
"""
PINNED = """name: images-pinned-by-digest
match: {kinds: [Pod, Deployment]}
expression: >-
  (object.kind == 'Pod' ? object.spec.containers : object.spec.template.spec.containers)
  .all(c, c.image.contains('@sha256:'))
message: container images must be pinned by digest
"""
BASE = {"fleet.yaml": "self_heal: false\n", "groups/stores.yaml": GROUP, "os/stores/ignition.json": IGNITION,
        "os/stores/cloud-init.yaml.j2": CLOUD_INIT, "policies/no-privileged.yaml": NO_PRIVILEGED,
        "policies/pinned.yaml": PINNED}


def pod(name: str, image: str, privileged: bool = False) -> str:
    return (f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  containers:\n  - name: c\n"
            f"    image: {image}\n    securityContext: {{privileged: {str(privileged).lower()}}}\n")


@pytest.fixture
def repo(tmp_path: Path) -> FleetRepo:
    return FleetRepo(tmp_path / "git")


@pytest.fixture
def plane(tmp_path: Path, repo: FleetRepo) -> Iterator[Fleet]:
    fleet = start_fleet(tmp_path / "plane", None, gitops_interval_seconds=3600, gitops=[
        {"name": "platform", "kind": "root", "url": str(repo.path), "branch": "main",
         "allowed_signers": str(repo.allowed_signers("alice"))},
        {"name": "apps", "kind": "app", "url": str(repo.path), "branch": "apps",
         "allowed_signers": str(repo.allowed_signers("bob"))},
    ])
    yield fleet
    fleet.close()


def sync(plane: Fleet) -> list[dict[str, Any]]:
    response = plane.client(role=Role.OPERATOR).post("/api/v1/admin/gitops/sync")
    assert response.status_code == 200, response.text
    commits: list[dict[str, Any]] = response.json()["commits"]
    return commits


def config_of(plane: Fleet, device_id: str) -> dict[str, Any] | None:
    record = plane.client(role=Role.VIEWER).get(f"/api/v1/admin/devices/{device_id}").json()
    desired = plane.client(role=Role.OPERATOR).get(f"/api/v1/admin/devices/{device_id}/desired")
    assert record["id"] == device_id
    config: dict[str, Any] | None = desired.json()["document"].get("config")
    return config


def decided(plane: Fleet, commit: str) -> dict[str, Any]:
    """Sync now and return the decision on ``commit``: from this sync, or from the log when
    the server's own retry loop decided it a moment earlier (a slow start backs off 1, 2,
    4 ... s and may land in the middle of a test)."""
    for decision in sync(plane):
        if decision["commit"] == commit:
            return decision
    logged = plane.client(role=Role.VIEWER).get("/api/v1/admin/gitops/commits").json()["commits"]
    found = [c for c in logged if c["commit"] == commit]
    assert found, f"nothing was decided on {commit}"
    return found[0]  # type: ignore[no-any-return]


def refused(plane: Fleet, repo: FleetRepo, files: dict[str, str | None], *, signer: str | None,
            accepted: str) -> list[str]:
    """Commit, sync, expect a refusal; the branch is then put back (a fresh attempt)."""
    sha = repo.commit(files, "attempt", signer=signer)
    decision = decided(plane, sha)
    assert decision["sync"] == "platform"
    assert not decision["accepted"]
    repo.force_reset(accepted)
    reasons: list[str] = decision["reasons"]
    return reasons


def test_signed_commit_is_rendered_into_the_desired_state_of_the_groups_devices(plane: Fleet,
                                                                                  repo: FleetRepo) -> None:
    inside, outside = plane.enroll(site="store-1"), plane.enroll(site="store-2")
    sha = repo.commit(BASE, "fleet", signer="alice")
    decisions = sync(plane)
    assert [(d["sync"], d["commit"], d["accepted"]) for d in decisions] == [("platform", sha, True)]
    config = config_of(plane, inside.id)
    assert config is not None
    assert config["commits"] == {"platform": sha}
    assert config["group"] == "stores"
    assert config["os"]["ignition"]["storage"]["files"][0]["path"] == "/etc/motd"
    assert config["os"]["cloud_init"].splitlines()[1] == f"hostname: {inside.id}"
    assert "content: store-1" in config["os"]["cloud_init"]
    assert config_of(plane, outside.id) is None
    assert sync(plane) == []  # each commit is processed once
    log = plane.client(role=Role.VIEWER).get("/api/v1/admin/gitops/commits").json()["commits"]
    assert [(c["commit"], c["accepted"]) for c in log] == [(sha, True)]


def test_unsigned_unknown_signer_rewritten_older_and_violating_commits_are_refused_and_nothing_changes(
    plane: Fleet, repo: FleetRepo
) -> None:
    device = plane.enroll(site="store-1")
    first = repo.commit(BASE, "fleet", signer="alice")
    decided(plane, first)
    accepted = repo.commit({"platform/stores/agent.yaml": pod("agent", "agent@sha256:" + "a" * 64)}, "agent",
                           signer="alice")
    assert decided(plane, accepted)["accepted"]
    in_force = config_of(plane, device.id)
    assert in_force is not None

    assert refused(plane, repo, {"groups/stores.yaml": GROUP + "priority: 5\n"}, signer=None,
                   accepted=accepted) == [f"commit {repo.git('rev-parse', 'HEAD@{1}')[:12]} ('attempt') changes "
                                          "groups/stores.yaml and is not signed"]
    reasons = refused(plane, repo, {"groups/stores.yaml": GROUP + "priority: 5\n"}, signer="mallory",
                      accepted=accepted)
    assert "signed by a key not allowed for the root sync 'platform'" in reasons[0]
    violations = refused(plane, repo, {"platform/stores/bad.yaml": pod("bad", "nginx:latest", privileged=True)},
                         signer="alice", accepted=accepted)
    assert sorted(v.split(":")[0] for v in violations) == ["images-pinned-by-digest", "no-privileged-pods"]
    assert all("Pod/bad in group stores (platform/stores/bad.yaml)" in v for v in violations)
    errors = refused(plane, repo, {"os/stores/ignition.json": IGNITION.replace("/etc/motd", "etc/motd")},
                     signer="alice", accepted=accepted)
    assert errors == ["os/stores/ignition.json:1: Ignition: error at $.storage.files.0.path: path not absolute"]
    errors = refused(plane, repo, {"os/stores/cloud-init.yaml.j2": CLOUD_INIT + "ntp: {{ ntp_servers }}\n"},
                     signer="alice", accepted=accepted)
    assert errors[0].startswith("os/stores/cloud-init.yaml.j2:6: template for ")
    assert "'ntp_servers' is undefined" in errors[0]
    # Maintenance windows are checked at sync: a typo fails here, not later on a device.
    for window, why in (("{cron: '0 2 * * *', timezone: Europe/Berln, duration_minutes: 60}",
                         "unknown time zone 'Europe/Berln'"),
                        ("{cron: '0 25 * * *', timezone: UTC, duration_minutes: 60}",
                         "bad cron expression '0 25 * * *'"),
                        ("{cron: '0 2 * * *', timezone: UTC, duration_minutes: 0}", "window duration must be"),
                        ("{cron: '0 2 * * *', timezone: UTC, duration_minutes: 60, days: 2}",  # not a field
                         "install.0.days: Extra inputs are not permitted")):
        group = GROUP.replace("maintenance: {install: []}", f"priority: 1\nmaintenance:\n  install: [{window}]")
        errors = refused(plane, repo, {"groups/stores.yaml": group}, signer="alice", accepted=accepted)
        assert errors[0].startswith(f"groups/stores.yaml:4: maintenance: {why}"), errors
    # A move back to an older commit, and a rewritten history (force push).
    repo.force_reset(first)
    decision = decided(plane, first)
    assert "older than the last accepted commit" in decision["reasons"][0]
    rewritten = repo.commit({"platform/stores/agent.yaml": pod("agent", "agent@sha256:" + "b" * 64)}, "rewrite",
                            signer="alice")
    decision = decided(plane, rewritten)
    assert "history was rewritten (force push)" in decision["reasons"][0]

    assert config_of(plane, device.id) == in_force  # the last accepted state stayed in force
    alerts = plane.client(role=Role.VIEWER).get("/api/v1/admin/alerts").json()["alerts"]
    assert len([a for a in alerts if a["kind"] == "gitops_refused"]) == 11
    commits = plane.client(role=Role.VIEWER).get("/api/v1/admin/gitops/commits").json()["commits"]
    assert [c["accepted"] for c in commits].count(False) == 11
    shown = cli("gitops", "log", *server_args(plane))
    assert "history was rewritten (force push)" in shown
    assert "gitops_refused" in cli("alerts", *server_args(plane))
    assert "0 devices out of sync" in cli("drift", *server_args(plane))


def test_an_application_commit_waits_for_the_platforms_first_commit_instead_of_being_refused(
        plane: Fleet, repo: FleetRepo) -> None:
    """The application team pushes before the platform team's first commit (or the server
    fetches in between): the app commit cannot be judged yet, and is not refused for good."""
    repo.git("checkout", "-q", "-b", "apps")
    app = repo.commit({"apps/stores/web.yaml": pod("web", "web@sha256:" + "c" * 64)}, "web", signer="bob")
    assert sync(plane) == []  # main does not exist yet; apps waits for it
    repo.git("checkout", "-q", "--orphan", "main")
    repo.git("rm", "-rfq", ".")
    root = repo.commit(BASE, "fleet", signer="alice")
    decisions = sync(plane)
    assert {d["sync"]: (d["commit"], d["accepted"]) for d in decisions} == {"platform": (root, True),
                                                                           "apps": (app, True)}


def test_root_and_application_syncs_cannot_write_each_others_paths(plane: Fleet, repo: FleetRepo) -> None:
    device = plane.enroll(site="store-1")
    root = repo.commit(BASE, "fleet", signer="alice")
    repo.git("checkout", "-q", "-b", "apps")
    app = repo.commit({"apps/stores/web.yaml": pod("web", "web@sha256:" + "c" * 64)}, "web", signer="bob")
    assert {d["sync"]: d["accepted"] for d in sync(plane)} == {"platform": True, "apps": True}
    config = config_of(plane, device.id)
    assert config is not None
    assert config["commits"] == {"platform": root, "apps": app}
    assert [m["metadata"]["name"] for m in config["workloads"]["manifests"]] == ["web"]
    # The application team changes a root path on its branch: the app sync does not read it.
    repo.commit({"groups/stores.yaml": "selector: {}\nrelease: evil\n", "apps/stores/web.yaml":
                 pod("web", "web@sha256:" + "d" * 64)}, "sneaky", signer="bob")
    assert [d["accepted"] for d in sync(plane)] == [True]
    config = config_of(plane, device.id)
    assert config is not None
    assert config["release"] == "2026.12.0"
    assert config["workloads"]["manifests"][0]["spec"]["containers"][0]["image"].endswith("d" * 64)
    # The platform team's key cannot change application paths, nor the app team's root paths.
    repo.git("checkout", "-q", "apps")
    alice_app = repo.commit({"apps/stores/web.yaml": pod("web", "web@sha256:" + "e" * 64)}, "alice", signer="alice")
    decision = decided(plane, alice_app)
    assert (decision["sync"], decision["commit"], decision["accepted"]) == ("apps", alice_app, False)
    assert "signed by a key not allowed for the app sync 'apps'" in decision["reasons"][0]
    repo.git("checkout", "-q", "main")
    bob = repo.commit({"groups/stores.yaml": GROUP.replace("2026.12.0", "evil")}, "bob on main", signer="bob")
    decision = decided(plane, bob)
    assert (decision["sync"], decision["accepted"]) == ("platform", False)
    assert "signed by a key not allowed for the root sync 'platform'" in decision["reasons"][0]


def test_push_webhook_needs_a_valid_signature(tmp_path: Path, repo: FleetRepo) -> None:
    fleet = start_fleet(tmp_path / "plane", None, gitops_interval_seconds=3600, gitops_webhook_secret="s3cret",
                        gitops=[{"name": "platform", "kind": "root", "url": str(repo.path),
                                 "allowed_signers": str(repo.allowed_signers("alice"))}])
    try:
        body = b'{"ref": "refs/heads/main"}'
        good = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        anonymous = fleet.client()
        assert anonymous.post("/api/v1/gitops/webhook", content=body,
                              headers={"x-hub-signature-256": "sha256=" + "0" * 64}).status_code == 401
        assert anonymous.post("/api/v1/gitops/webhook", content=body).status_code == 401
        assert anonymous.post("/api/v1/gitops/webhook", content=body,
                              headers={"x-hub-signature-256": good}).status_code == 202
    finally:
        fleet.close()


def test_repo_init_scaffold_renders_cleanly_and_its_policies_bite(tmp_path: Path) -> None:
    from edgefleet.gitops.policy import evaluate, load_policies
    from edgefleet.gitops.render import DeviceInfo, RenderedObject, render
    tools()
    cli("repo", "init", str(tmp_path / "fleet"))
    files = {str(p.relative_to(tmp_path / "fleet")): p.read_bytes() for p in (tmp_path / "fleet").rglob("*")
             if p.is_file() and ".git" not in p.parts}
    device = DeviceInfo("dev-1", "berlin-01", "pos-1", {"role": "store"})
    rendering = render(files, [device])
    policies, errors = load_policies(files)
    assert rendering.errors == []
    assert errors == []
    assert evaluate(policies, rendering.objects, []) == []
    assert "time1.example.net" in rendering.documents["dev-1"]["os"]["cloud_init"]
    assert (tmp_path / "fleet" / ".git").is_dir()
    unsigned = RenderedObject("WasmModule", "rules", "stores", "apps/stores/wasm.yaml",
                              {"kind": "WasmModule", "name": "rules", "target": "wasm/rules-1.wasm"})
    assert [v.policy for v in evaluate(policies, [unsigned], ["os/2026.12.0/2026.12.0.img"])] == [
        "wasm-modules-are-signed-targets"]
    assert evaluate(policies, [unsigned], ["wasm/rules-1.wasm"]) == []
    vm = RenderedObject("MicroVM", "edge-vm", "stores", "apps/stores/microvm.yaml",
                        {"kind": "MicroVM", "name": "edge-vm", "kernel": "vm/vmlinuz", "initrd": "vm/initrd.gz"})
    assert [v.policy for v in evaluate(policies, [vm], ["vm/vmlinuz"])] == ["microvms-are-signed-targets"]
    assert evaluate(policies, [vm], ["vm/vmlinuz", "vm/initrd.gz"]) == []


def test_microvms_services_and_modules_in_apps_render_as_the_workloads_the_device_runs() -> None:
    from edgefleet.gitops.render import DeviceInfo, render
    files = {"groups/stores.yaml": b"selector: {matchLabels: {site: s1}}\n",
             "apps/stores/wasm.yaml": b"- {name: meter, target: a/meter.wasm}\n",
             "apps/stores/microvm.yaml": b"- {name: edge-vm, kernel: a/vmlinuz, initrd: a/initrd.gz, vcpus: 2}\n",
             "apps/stores/services.yaml": b"- {name: printer, command: [/usr/bin/lpd, -F]}\n"}
    rendering = render(files, [DeviceInfo("dev-1", "s1", "h", {})])
    assert rendering.errors == []
    workloads = rendering.documents["dev-1"]["workloads"]
    assert workloads["microvm"] == [{"name": "edge-vm", "kind": "MicroVM", "kernel": "a/vmlinuz",
                                     "initrd": "a/initrd.gz", "vcpus": 2}]
    assert workloads["native"] == [{"name": "printer", "kind": "NativeService", "command": ["/usr/bin/lpd", "-F"]}]
    assert [o.kind for o in rendering.objects] == ["MicroVM", "NativeService", "WasmModule"]
    relative = render({**files, "apps/stores/services.yaml": b"- {name: printer, command: [lpd]}\n"}, [])
    assert "absolute path" in str(relative.errors[0])
    bad = render({**files, "apps/stores/microvm.yaml": b"- {name: edge-vm, kernel: a/vmlinuz, vcpus: 0}\n"}, [])
    assert [e.path for e in bad.errors] == ["apps/stores/microvm.yaml [0]"] * len(bad.errors)
    assert len(bad.errors) >= 1



def test_a_sync_whose_validator_did_not_start_is_retried_within_seconds(
        tmp_path: Path, repo: FleetRepo, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A validator that fails to spawn says nothing about the commit: the failure is logged,
    the sync is retried soon (not one interval later, here an hour) and the commit lands."""
    broken = tmp_path / "broken-bin"
    broken.mkdir()
    (broken / "ignition-validate").write_text("#!/nonexistent/interpreter\n")
    (broken / "ignition-validate").chmod(0o755)
    monkeypatch.setenv("PATH", f"{broken}:{os.environ['PATH']}")
    sha = repo.commit(BASE, "fleet", signer="alice")
    plane = start_fleet(tmp_path / "plane", None, gitops_interval_seconds=3600, gitops=[
        {"name": "platform", "kind": "root", "url": str(repo.path), "branch": "main",
         "allowed_signers": str(repo.allowed_signers("alice"))}])
    try:
        device = plane.enroll(site="store-1")
        deadline = time.monotonic() + 60
        while "ignition-validate did not run" not in caplog.text:
            assert time.monotonic() < deadline, "the failed spawn was not logged"
            time.sleep(0.1)
        assert config_of(plane, device.id) is None  # no verdict, nothing decided
        (broken / "ignition-validate").unlink()  # the real one (Debian's ignition) is next on PATH
        while (config := config_of(plane, device.id)) is None:
            assert time.monotonic() < deadline, "the failed sync was not retried"
            time.sleep(0.2)
        assert config["commits"] == {"platform": sha}
    finally:
        plane.close()
