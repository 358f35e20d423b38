"""The verdict on a device's workloads, which the agent (its own health) and the rollout
controller (a workload rollout's observation) both compute. A group's workload set (its
rendered ``workloads``) moves through the group's waves like a release; what a device
reports about its workloads, judged against the set it was told to run, is its verdict.

A device has taken the set when it reports every declared workload's drift part (it
supervises exactly that verified version) and none of them has failed since it started.
It has failed when a declared workload was refused (unverifiable artifact, bad entry) or
stopped for any reason but a clean exit since that version started (crashes, limits,
crash loops); the failure is also its health, which a baking wave must keep.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from edgefleet.protocol.hashing import config_hash, declared_workloads, workload_part
from edgefleet.protocol.workloads import failed_run

PREFIX = "workloads-"
EMPTY: dict[str, Any] = {"manifests": [], "wasm": [], "microvm": [], "native": []}


def revision(workloads: Mapping[str, Any] | None) -> str:
    """The name a workload set goes by in rollouts (it stands where a release would)."""
    return PREFIX + config_hash({"workloads": workloads or EMPTY})[:12]


@dataclass(frozen=True)
class Verdict:
    phase: Literal["installing", "committed", "failed"]
    reason: str | None = None


def _refusal(status: Mapping[str, Any]) -> str | None:
    """Why the declared version was refused (the device may run an older one), if it was."""
    if status.get("update_refused") or status.get("state") == "refused":
        return f"workload {status.get('name')} refused: {status.get('update_refused') or status.get('detail')}"
    return None


def _run_failure(status: Mapping[str, Any]) -> str | None:
    """How the running version's last run ended badly, if it did."""
    last, code = status.get("last_exit"), status.get("exit_code")
    if last is None or not failed_run(str(last), code):
        return None
    detail = status.get("detail")
    return (f"workload {status.get('name')} {last}{f' with code {code}' if code is not None else ''}"
            f"{f': {detail}' if detail else ''} (restarts: {status.get('restarts', 0)})")


def judge(workloads: Mapping[str, Any] | None, parts: Mapping[str, Any] | None,
          statuses: Sequence[Any] | None) -> Verdict:
    """Where a device stands with workload set ``workloads``, from its last status report:
    its drift ``parts`` and its workload ``statuses``."""
    by_name = {s.get("name"): s for s in statuses or [] if isinstance(s, Mapping)}
    waiting = False
    for entry in declared_workloads({"workloads": workloads or EMPTY}):
        part, digest = workload_part(entry)
        status = by_name.get(entry.get("name"))
        if status is None:
            waiting = True
            continue
        if (refused := _refusal(status)) is not None:
            return Verdict("failed", refused)
        if (parts or {}).get(part) != digest:
            waiting = True  # an older version still runs: the new one is on its way
            continue
        if (failure := _run_failure(status)) is not None:
            return Verdict("failed", failure)
        if status.get("healthy") is False or status.get("state") == "starting":
            waiting = True
    return Verdict("installing") if waiting else Verdict("committed")
