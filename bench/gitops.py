"""What a GitOps sync costs: a signed fleet repository with 100 groups and 1,000 Kubernetes
manifests (plus an Ignition config and a cloud-init template per group, three CEL
policies), rendered for 1,000 devices.

Measured in this process, with the real git CLI and the real ignition-validate:
  - full sync: fetch into a fresh mirror, check every commit's SSH signature and history,
    read the files, render (Ignition validated per group, cloud-init per device), policy gate;
  - peak memory of that (Python allocations via tracemalloc, and the growth of max RSS);
  - CEL policy evaluations per second over the rendered objects, next to the same checks
    written as plain Python functions (the baseline).

    python bench/gitops.py [--groups 100] [--manifests 1000] [--devices 1000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from edgefleet.gitops.git import GitMirror
from edgefleet.gitops.policy import evaluate, load_policies
from edgefleet.gitops.render import DeviceInfo, RenderedObject
from edgefleet.gitops.sync import ROOT_PATHS, SyncSource, decide

POLICIES = {
    "policies/pinned.yaml": """name: images-pinned-by-digest
match: {kinds: [Deployment]}
expression: "object.spec.template.spec.containers.all(c, c.image.contains('@sha256:'))"
message: container images must be pinned by digest
""",
    "policies/no-privileged.yaml": """name: no-privileged
match: {kinds: [Deployment]}
expression: >-
  object.spec.template.spec.containers.all(c, !has(c.securityContext) ||
  !has(c.securityContext.privileged) || !c.securityContext.privileged)
message: privileged containers are not allowed
""",
    "policies/labels.yaml": """name: team-label
match: {kinds: [Deployment]}
expression: "has(object.metadata.labels) && 'team' in object.metadata.labels"
message: every deployment names its team
""",
}


def deployment(group: int, index: int) -> str:
    return f"""apiVersion: apps/v1
kind: Deployment
metadata:
  name: app-{index}
  labels: {{team: team-{group % 7}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: app-{index}}}}}
  template:
    metadata: {{labels: {{app: app-{index}}}}}
    spec:
      containers:
      - name: app
        image: registry.example/app-{index}@sha256:{index:064x}
        securityContext: {{privileged: false}}
        resources: {{limits: {{memory: 64Mi, cpu: 100m}}}}
"""


def build_repository(root: Path, groups: int, manifests: int) -> tuple[Path, Path]:
    """A fleet repository in ``root``; returns (repository, allowed signers file)."""
    key = root / "alice"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice", "-f", str(key)], check=True)
    signers = root / "allowed_signers"
    signers.write_text(f'alice@example namespaces="git" {(root / "alice.pub").read_text()}')
    repo = root / "fleet"
    files: dict[str, str] = {"fleet.yaml": "self_heal: false\nvariables: {ntp: time.example}\n", **POLICIES}
    per_group = manifests // groups
    for g in range(groups):
        name = f"group-{g:03d}"
        files[f"groups/{name}.yaml"] = f"selector: {{matchLabels: {{ring: r{g}}}}}\nrelease: '2026.12.{g}'\n"
        files[f"os/{name}/ignition.json"] = json.dumps({"ignition": {"version": "3.3.0"}, "storage": {"files": [
            {"path": "/etc/edgefleet-group", "contents": {"source": f"data:,{name}"}, "mode": 420}]}})
        files[f"os/{name}/cloud-init.yaml.j2"] = ("#cloud-config\nhostname: {{ hostname }}\nntp:\n  servers: "
                                                  "[{{ ntp }}]\nwrite_files:\n  - path: /etc/site\n"
                                                  "    content: {{ site }}\n")
        files[f"platform/{name}/apps.yaml"] = "---\n".join(deployment(g, g * per_group + i) for i in range(per_group))
    for path, content in files.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(content)
    git = ["git", "-C", str(repo), "-c", "user.name=bench", "-c", "user.email=b@example", "-c", "gpg.format=ssh",
           "-c", f"user.signingkey={key}"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-S", "-m", "fleet"], check=True)
    return repo, signers


def python_checks(obj: RenderedObject) -> int:
    """The three policies as plain Python: the baseline for the CEL figures."""
    containers = obj.body["spec"]["template"]["spec"]["containers"]
    failures = 0
    failures += not all("@sha256:" in c["image"] for c in containers)
    failures += not all(not c.get("securityContext", {}).get("privileged", False) for c in containers)
    failures += "team" not in obj.body.get("metadata", {}).get("labels", {})
    return failures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=100)
    parser.add_argument("--manifests", type=int, default=1000)
    parser.add_argument("--devices", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgefleet-gitops-") as tmp:
        root = Path(tmp)
        repo, signers = build_repository(root, args.groups, args.manifests)
        source = SyncSource("platform", "root", str(repo), "main", signers, ROOT_PATHS)
        devices = [DeviceInfo(f"dev-{i:05d}", f"site-{i % 50}", f"host-{i}", {"ring": f"r{i % args.groups}"})
                   for i in range(args.devices)]
        # Timed without tracing; then once more, from a fresh mirror, under tracemalloc.
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        started = time.perf_counter()
        mirror = GitMirror(root / "mirror.git", source.url, source.branch)
        tip = mirror.fetch()
        fetched = time.perf_counter()
        decision = decide(mirror, source, None, tip, {}, devices, [])
        finished = time.perf_counter()
        rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
        tracemalloc.start()
        traced = GitMirror(root / "traced.git", source.url, source.branch)
        decide(traced, source, None, traced.fetch(), {}, devices, [])
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert decision.accepted, decision.reasons[:5]
        assert decision.rendering is not None
        rendering = decision.rendering
        deployments = [o for o in rendering.objects if o.kind == "Deployment"]
        policies, errors = load_policies({k: v.encode() for k, v in POLICIES.items()})
        assert not errors
        rounds = 5
        cel_started = time.perf_counter()
        for _ in range(rounds):
            violations = evaluate(policies, deployments, [])
        cel_seconds = time.perf_counter() - cel_started
        assert not violations
        py_started = time.perf_counter()
        for _ in range(rounds):
            assert sum(python_checks(o) for o in deployments) == 0
        py_seconds = time.perf_counter() - py_started
    evaluations = rounds * len(deployments) * len(policies)
    figures: dict[str, Any] = {
        "groups": args.groups, "manifests": len(deployments), "devices": len(rendering.documents),
        "fetch_s": round(fetched - started, 3), "full_sync_s": round(finished - started, 3),
        "peak_python_mib": round(peak / 2**20, 1), "max_rss_growth_mib": round(rss_growth / 1024, 1),
        "cel_evaluations_per_s": round(evaluations / cel_seconds), "python_checks_per_s":
            round(evaluations / py_seconds),
    }
    print(f"repository: {args.groups} groups, {len(deployments)} manifests, rendered for "
          f"{len(rendering.documents)} devices")
    print(f"  fetch (fresh mirror):      {figures['fetch_s']:.2f} s")
    print(f"  full sync (fetch, verify signatures, read, render, validate, policy): {figures['full_sync_s']:.2f} s "
          "(goal: under 5 s)")
    print(f"  peak memory: {figures['peak_python_mib']} MiB of Python allocations, max RSS grew "
          f"{figures['max_rss_growth_mib']} MiB")
    print(f"  CEL policy evaluations: {figures['cel_evaluations_per_s']:,}/s (goal: 20,000/s); "
          f"the same checks in plain Python: {figures['python_checks_per_s']:,}/s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
