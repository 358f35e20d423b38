"""The scenario's expectations, checked against the outcome of a run: one line each,
saying what was expected, what was seen, and whether it held."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgefleet.sim.scenario import Expectations


@dataclass(frozen=True)
class Check:
    name: str
    expected: str
    seen: str
    held: bool


def comparable(outcome: dict[str, Any]) -> dict[str, Any]:
    """The parts of an outcome that must not depend on timing or on which process answered:
    what runs where, the rollout's verdict and counts, why devices failed (without their
    random ids), and whether telemetry was lost. Runs of one scenario against 1, 2 or 4
    server processes must agree on these."""
    rollout = outcome.get("rollout")
    if rollout is not None:
        reasons = sorted(str(f.get("reason")) for f in rollout.get("failed", []))
        rollout = {"status": rollout["status"], "wave": rollout["wave"], "reason": rollout["reason"],
                   "waves": rollout["waves"], "failure_reasons": reasons}
    return {"devices": outcome["devices"], "versions": outcome["versions"], "quarantined": outcome["quarantined"],
            "attested": outcome["attested"], "silent_at_end": outcome["silent_at_end"], "rollout": rollout,
            "telemetry_lost": outcome["telemetry"]["lost"]}


def check_expectations(expect: Expectations, outcome: dict[str, Any]) -> list[Check]:
    checks: list[Check] = []
    rollout = outcome.get("rollout") or {}
    versions: dict[str, int] = outcome["versions"]
    if expect.rollout_status is not None:
        seen = str(rollout.get("status"))
        checks.append(Check("rollout status", expect.rollout_status, seen, seen == expect.rollout_status))
    if expect.halted_in_wave is not None:
        seen_wave = rollout.get("wave") if rollout.get("status") == "halted" else None
        checks.append(Check("halted in wave", str(expect.halted_in_wave), str(seen_wave),
                            seen_wave == expect.halted_in_wave))
    for version, count in expect.devices_on_release.items():
        want = outcome["devices"] if count == "all" else count
        have = versions.get(version, 0)
        checks.append(Check(f"devices on {version}", str(count), str(have), have == want))
    for version, most in expect.max_devices_on_release.items():
        have = versions.get(version, 0)
        checks.append(Check(f"devices on {version} at most", str(most), str(have), have <= most))
    if expect.telemetry_lost is not None:
        lost = outcome["telemetry"]["lost"]
        checks.append(Check("telemetry records lost", str(expect.telemetry_lost), str(lost),
                            lost <= expect.telemetry_lost))
    if expect.all_checked_in_at_end is not None:
        silent = outcome["silent_at_end"]
        checks.append(Check("every device checking in at the end", str(expect.all_checked_in_at_end),
                            f"{silent} silent", (silent == 0) == expect.all_checked_in_at_end))
    if expect.quarantined is not None:
        have = outcome["quarantined"]
        checks.append(Check("devices quarantined", str(expect.quarantined), str(have), have == expect.quarantined))
    if expect.attested is not None:
        want = (outcome["devices"] - outcome["quarantined"] if expect.attested == "all_but_quarantined"
                else expect.attested)
        have = outcome["attested"]
        checks.append(Check("devices attested", str(expect.attested), str(have), have == want))
    return checks
