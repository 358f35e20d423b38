"""Kubernetes manifests of a group on the device's own cluster (K3s, MicroK8s), two ways.

``KubectlApplier``: server-side apply of the group's verified manifests, and pruning of
what the group no longer declares, by the ApplySet convention (KEP-3659): a parent
ConfigMap ``edgefleet-<group>`` carries the apply set's id and the group-kinds it has ever
contained; every object carries the label ``applyset.kubernetes.io/part-of=<id>``. After
an apply, live objects of those kinds with that label and not in the set are deleted.
Objects anyone else created (no label, or another set's) are never touched. Health comes
from the live objects' status (ready replicas, pod readiness, job success).

``GitHandoff``: for a cluster run by an on-device Argo CD or Flux, the manifests are
committed, one file per object, into a local Git repository those tools watch; files of
objects no longer declared are removed in the same commit, and the tools prune.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import logging
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.errors import PeerError
from edgefleet.protocol.hashing import config_hash
from edgefleet.protocol.workloads import WorkloadStatus

log = logging.getLogger("edgefleet.workloads.kubernetes")
PART_OF = "applyset.kubernetes.io/part-of"
APPLYSET_ID = "applyset.kubernetes.io/id"
CONTAINS = "applyset.kubernetes.io/contains-group-kinds"
TOOLING = "applyset.kubernetes.io/tooling"
FIELD_MANAGER = "edgefleet"
PARENT_NAMESPACE = "kube-system"

Run = Callable[[Sequence[str], bytes | None], bytes]  # a command and its stdin -> its stdout


class KubernetesError(PeerError):
    """kubectl failed, or the cluster answered something unusable."""

    code = "kubernetes_failed"


@dataclass(frozen=True, order=True)
class Ref:
    group_kind: str  # "Deployment.apps", "ConfigMap"
    namespace: str  # "" for cluster-scoped objects
    name: str

    def arg(self) -> str:
        return f"{self.group_kind}/{self.name}"


def group_kind(obj: Mapping[str, Any]) -> str:
    api_version = str(obj.get("apiVersion", ""))
    group = api_version.split("/", 1)[0] if "/" in api_version else ""
    return f"{obj.get('kind')}.{group}" if group else str(obj.get("kind"))


CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                            "PersistentVolume", "StorageClass", "PriorityClass"})
DEFAULT_NAMESPACE = "default"  # of a namespaced object that names none


def ref(obj: Mapping[str, Any]) -> Ref:
    metadata = obj.get("metadata") or {}
    namespace = "" if obj.get("kind") in CLUSTER_SCOPED else str(metadata.get("namespace") or DEFAULT_NAMESPACE)
    return Ref(group_kind(obj), namespace, str(metadata.get("name")))


def applyset_id(group: str) -> str:
    """KEP-3659's id of the parent ConfigMap ``edgefleet-<group>`` in kube-system."""
    digest = hashlib.sha256(f"edgefleet-{group}.{PARENT_NAMESPACE}.ConfigMap.".encode()).digest()
    return f"applyset-{base64.urlsafe_b64encode(digest).decode().rstrip('=')}-v1"


@dataclass(frozen=True)
class ApplyPlan:
    group: str
    objects: list[dict[str, Any]]  # labelled, namespaced; the parent ConfigMap first
    digests: dict[Ref, str]  # each declared object's sha256 (canonical JSON, as declared)

    @property
    def id(self) -> str:
        return applyset_id(self.group)

    def refs(self) -> set[Ref]:
        return set(self.digests)


def plan_apply(group: str, manifests: Sequence[Mapping[str, Any]], previous_kinds: Sequence[str] = ()) -> ApplyPlan:
    """The objects to apply: each manifest labelled as part of the group's apply set (in
    namespace ``default`` unless it names one), and the parent ConfigMap that lists every
    group-kind the set contains now or contained before (so pruning looks there too)."""
    set_id = applyset_id(group)
    objects, digests = [], {}
    for manifest in manifests:
        obj = copy.deepcopy(dict(manifest))
        key = ref(obj)
        metadata = obj.setdefault("metadata", {})
        if key.namespace:
            metadata["namespace"] = key.namespace
        metadata.setdefault("labels", {})[PART_OF] = set_id
        digests[key] = config_hash(manifest)
        objects.append(obj)
    kinds = sorted({r.group_kind for r in digests} | set(previous_kinds))
    parent = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": f"edgefleet-{group}", "namespace": PARENT_NAMESPACE,
                           "labels": {APPLYSET_ID: set_id},
                           "annotations": {TOOLING: "edgefleet/v1", CONTAINS: ",".join(kinds)}}}
    return ApplyPlan(group, [parent, *objects], digests)


def to_prune(plan: ApplyPlan, live: Sequence[Mapping[str, Any]]) -> list[Ref]:
    """Live objects labelled as part of the plan's apply set that it no longer declares."""
    found, wanted = [], plan.refs()
    for obj in live:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if labels.get(PART_OF) != plan.id:
            continue
        key = ref(obj)
        if key not in wanted:
            found.append(key)
    return sorted(found)


def healthy(obj: Mapping[str, Any]) -> bool | None:
    """What a live object's status says: True ready, False not (yet), None no signal."""
    kind, spec, status = obj.get("kind"), obj.get("spec") or {}, obj.get("status") or {}
    if kind in ("Deployment", "StatefulSet", "ReplicaSet"):
        return int(status.get("readyReplicas") or 0) >= int(spec.get("replicas", 1))
    if kind == "DaemonSet":
        return int(status.get("numberReady") or 0) >= int(status.get("desiredNumberScheduled") or 0)
    if kind == "Pod":
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    if kind == "Job":
        return int(status.get("succeeded") or 0) > 0 if status.get("succeeded") or status.get("failed") else None
    return None


def run_command(command: Sequence[str], stdin: bytes | None) -> bytes:
    """Run a command to its end (blocking). Raises KubernetesError when it fails."""
    try:
        done = subprocess.run(list(command), input=stdin, capture_output=True, timeout=300, check=False)  # noqa: S603
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise KubernetesError(f"{command[0]}: {exc}") from exc
    if done.returncode != 0:
        raise KubernetesError(f"{' '.join(command[:4])} ... failed ({done.returncode}): "
                              f"{done.stderr.decode(errors='replace').strip()[-500:]}")
    return done.stdout


@dataclass
class Applied:
    digests: dict[Ref, str]
    pruned: list[Ref]
    health: dict[Ref, bool | None]


class KubectlApplier:
    def __init__(self, kubectl: str = "kubectl", kubeconfig: Path | None = None, run: Run = run_command) -> None:
        self.base = [kubectl, *(["--kubeconfig", str(kubeconfig)] if kubeconfig else [])]
        self.run = run

    def apply_command(self) -> list[str]:
        return [*self.base, "apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "--force-conflicts",
                "-o", "json", "-f", "-"]

    def list_command(self, set_id: str, kinds: Sequence[str]) -> list[str]:
        return [*self.base, "get", ",".join(kinds), "--all-namespaces", "-l", f"{PART_OF}={set_id}", "-o", "json"]

    def delete_command(self, target: Ref) -> list[str]:
        namespace = ["-n", target.namespace] if target.namespace else []
        return [*self.base, "delete", target.arg(), *namespace, "--ignore-not-found", "--wait=false"]

    def previous_kinds(self, group: str) -> list[str]:
        """The group-kinds the group's apply set contained so far (from its parent)."""
        try:
            parent = json.loads(self.run([*self.base, "get", "configmap", f"edgefleet-{group}", "-n",
                                          PARENT_NAMESPACE, "--ignore-not-found", "-o", "json"], None) or b"{}")
        except ValueError as exc:
            raise KubernetesError(f"unreadable apply set parent: {exc}") from exc
        listed = ((parent.get("metadata") or {}).get("annotations") or {}).get(CONTAINS, "")
        return [k for k in listed.split(",") if k]

    def apply(self, group: str, manifests: Sequence[Mapping[str, Any]]) -> Applied:
        """Apply, prune, read health. Raises KubernetesError (nothing is pruned unless the
        apply succeeded)."""
        plan = plan_apply(group, manifests, self.previous_kinds(group))
        document = {"apiVersion": "v1", "kind": "List", "items": plan.objects}
        self.run(self.apply_command(), json.dumps(document).encode())
        kinds = (plan.objects[0]["metadata"]["annotations"][CONTAINS] or "").split(",")
        live: list[dict[str, Any]] = []
        if kinds != [""]:
            try:
                live = json.loads(self.run(self.list_command(plan.id, kinds), None)).get("items", [])
            except ValueError as exc:
                raise KubernetesError(f"unreadable object list: {exc}") from exc
        pruned = to_prune(plan, live)
        for target in pruned:
            self.run(self.delete_command(target), None)
            log.info("pruned %s (no longer declared by group %s)", target.arg(), group)
        wanted = plan.refs()
        health = {key: healthy(obj) for obj in live
                  if (key := ref(obj)) in wanted}
        return Applied(plan.digests, pruned, health)


class GitHandoff:
    """Commit the manifests into a local Git repository an on-device Argo CD or Flux
    watches: ``<group>/<namespace>/<kind>-<name>.yaml`` (JSON is YAML), one commit per
    change, files of objects no longer declared removed in it."""

    def __init__(self, repository: Path, run: Run = run_command) -> None:
        self.repository = repository
        self.run = run

    def _git(self, *args: str) -> bytes:
        return self.run(["git", "-C", str(self.repository), *args], None)

    def publish(self, group: str, manifests: Sequence[Mapping[str, Any]], message: str) -> str | None:
        """Returns the new commit, or None when nothing changed."""
        if not (self.repository / ".git").exists():
            self.repository.mkdir(parents=True, exist_ok=True)
            self._git("init", "-q", "-b", "main")
        directory = self.repository / group
        wanted: dict[Path, bytes] = {}
        for manifest in manifests:
            key = ref(manifest)
            name = f"{key.group_kind.lower()}-{key.name}.yaml"
            wanted[directory / (key.namespace or "_cluster") / name] = json.dumps(manifest, indent=2,
                                                                                   sort_keys=True).encode() + b"\n"
        for path in sorted(directory.rglob("*.yaml")) if directory.exists() else []:
            if path not in wanted:
                path.unlink()
        for path, data in wanted.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists() or path.read_bytes() != data:
                path.write_bytes(data)
        self._git("add", "-A", group)
        if not self._git("status", "--porcelain", "--", group).strip():
            return None
        self._git("-c", "user.name=edgefleet agent", "-c", "user.email=agent@edgefleet.invalid",
                  "commit", "-q", "-m", message)
        return self._git("rev-parse", "HEAD").decode().strip()


class ManifestSync:
    """The agent's side: the group's manifests to the cluster (``kubectl``) or to the local
    repository (``git``) when they change, and again every ``resync_seconds`` (a server-side
    apply with forced conflicts puts back what someone changed in the cluster). Its status
    is reported beside the other workloads'."""

    def __init__(self, mode: str, kubeconfig: Path | None, git_dir: Path | None, resync_seconds: float) -> None:
        self.mode = mode
        self.kubectl = KubectlApplier(kubeconfig=kubeconfig)
        self.handoff = GitHandoff(git_dir) if git_dir is not None else None
        self.resync_seconds = resync_seconds
        self._digest: str | None = None
        self._at = 0.0
        self._status: WorkloadStatus | None = None

    def sync(self, group: str, manifests: Sequence[Mapping[str, Any]], now: float) -> None:
        """Blocking (run it in a worker thread). Never raises: failures are its status."""
        digest = config_hash({"manifests": list(manifests)})
        if digest == self._digest and now - self._at < self.resync_seconds:
            return
        try:
            if self.mode == "git":
                if self.handoff is None:
                    raise KubernetesError("kubernetes=git needs kubernetes_git_dir")
                commit = self.handoff.publish(group, manifests, f"edgefleet: {group} manifests {digest[:12]}")
                detail, health = f"{len(manifests)} objects handed to Argo CD / Flux" + (
                    f" in {commit[:12]}" if commit else ""), None
            else:
                applied = self.kubectl.apply(group, manifests)
                values = list(applied.health.values())
                health = None if all(v is None for v in values) else all(v is not False for v in values)
                detail = f"{len(applied.digests)} objects applied server-side, {len(applied.pruned)} pruned"
            self._status = WorkloadStatus(name="kubernetes", kind="kubernetes", targets=[], sha256=digest,
                                          state="running", detail=detail, healthy=health)
            self._digest, self._at = digest, now
        except KubernetesError as exc:
            log.error("group %s manifests not applied: %s", group, exc.message)
            self._status = WorkloadStatus(name="kubernetes", kind="kubernetes", targets=[], sha256=None,
                                          state="refused", last_exit="refused", detail=exc.message[:1000])
            self._digest = None

    def status(self) -> WorkloadStatus | None:
        return self._status
