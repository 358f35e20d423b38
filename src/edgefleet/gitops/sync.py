"""Deciding whether a fetched commit may become the fleet's desired state.

A sync is one remote branch, a set of path prefixes it owns, and the SSH allowed-signers
file pinned for it in the server's settings. Root syncs own the platform's paths (fleet
settings, groups, OS config, policies, platform manifests); application syncs own
``apps/``. A new tip is accepted only if:

1. it descends from the last accepted commit (no history rewrite dropping it, no move back
   to an older commit);
2. every new commit that changes a path this sync owns is signed by one of *this sync's*
   allowed signers (so an application team's key cannot change root paths, and the reverse);
3. the repository, as it would then be (this sync at the new tip, every other sync at its
   last accepted commit, each contributing only its own paths), renders without errors;
4. no rendered object violates a policy (policies come from the root sync).

Otherwise it is refused as a whole, with every reason, and the last accepted state stays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edgefleet.gitops.git import GitMirror
from edgefleet.gitops.policy import evaluate, load_policies
from edgefleet.gitops.render import DeviceInfo, Rendering, render

ROOT_PATHS = ("fleet.yaml", "groups/", "os/", "policies/", "platform/")
APP_PATHS = ("apps/",)


@dataclass(frozen=True)
class SyncSource:
    name: str
    kind: Literal["root", "app"]
    url: str
    branch: str
    allowed_signers: Path
    paths: tuple[str, ...]

    def owns(self, path: str) -> bool:
        return any(path == p or (p.endswith("/") and path.startswith(p)) for p in self.paths)


@dataclass
class Decision:
    sync: str
    commit: str
    accepted: bool
    reasons: list[str] = field(default_factory=list)
    rendering: Rendering | None = None


def _short(sha: str) -> str:
    return sha[:12]


def check_history(mirror: GitMirror, source: SyncSource, accepted: str | None, tip: str) -> list[str]:
    """Reasons to refuse ``tip`` on history and signatures alone (empty: fine)."""
    if accepted is not None:
        if not mirror.has(accepted):
            return [f"the last accepted commit {_short(accepted)} is gone from the repository (history rewritten)"]
        if not mirror.is_ancestor(accepted, tip):
            if mirror.is_ancestor(tip, accepted):
                return [f"{_short(tip)} is older than the last accepted commit {_short(accepted)}: "
                        "moving back is refused"]
            return [f"{_short(tip)} does not descend from the last accepted commit {_short(accepted)}: "
                    "history was rewritten (force push)"]
    reasons = []
    for commit in mirror.commits(tip, accepted, source.allowed_signers):
        owned = [p for p in mirror.changed(commit.sha) if source.owns(p)]
        if not owned or commit.signed_by_allowed:
            continue
        shown = ", ".join(owned[:3]) + (f" and {len(owned) - 3} more" if len(owned) > 3 else "")
        if commit.signature == "N":
            why = "is not signed"
        elif commit.signature == "B":
            why = "has a bad signature"
        else:
            why = f"is signed by a key not allowed for the {source.kind} sync {source.name!r}"
        reasons.append(f"commit {_short(commit.sha)} ({commit.subject!r}) changes {shown} and {why}")
    return reasons


def files_for(mirror: GitMirror, source: SyncSource, commit: str) -> dict[str, bytes]:
    """The files at ``commit`` that ``source`` owns, and nothing else."""
    prefixes = [p.rstrip("/") for p in source.paths]
    return {path: data for path, data in mirror.files(commit, prefixes).items() if source.owns(path)}


def decide(mirror: GitMirror, source: SyncSource, accepted: str | None, tip: str,
           other_files: Mapping[str, bytes], devices: Sequence[DeviceInfo], targets: Sequence[str]) -> Decision:
    """Whether ``tip`` of ``source`` may be accepted, given the other syncs' accepted files."""
    reasons = check_history(mirror, source, accepted, tip)
    if reasons:
        return Decision(source.name, tip, False, reasons)
    files = {**other_files, **files_for(mirror, source, tip)}
    rendering = render(files, devices)
    policies, policy_errors = load_policies(files)
    reasons = [str(e) for e in rendering.errors + policy_errors]
    reasons += [str(v) for v in evaluate(policies, rendering.objects, targets)]
    return Decision(source.name, tip, not reasons, reasons, rendering)
