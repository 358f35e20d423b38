"""Real power cuts during A/B updates, shared by the CI test (test_real_updates_power_cuts.py)
and the long loop (bench/powercut_vm.py).

A round is one cut. Before an update starts, a seeded generator plans its rounds: for
each, a moment of the update (a phase the device reports, or for ``rebooting`` the guest
firmware starting the next boot) and a delay after it. When the moment comes, QEMU is
killed with SIGKILL, as pulling the plug would, and powered on again with the same disk,
the same firmware variables and the same TPM state. The round passes when a slot verified
and mounted (not bricked, not both slots bad) and the device attested again, after the
cut, on the release that slot holds. Once its rounds are done the update is left alone
and must converge: committed on the release the control plane assigned and attested on
that release's predicted reference values.

At most ``TRIAL_TRIES - 1`` rounds of one update fall in the trial (from the reboot into
the new slot to its commit): a cut there uses up one of the boot loader's tries, and a
device whose every trial boot loses power falls back to the old slot by design (the
counter cannot tell a power cut from a crash; test_real_updates shows that fallback).
Every seed is printed with its round, so a failing round can be replayed.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from edgefleet.agent.slotenv import TRIAL_TRIES
from edgefleet.vm import Machine
from tests.real_boot import VmDevice

PHASES = ("downloading", "installing", "rebooting", "trial_boot", "health_checking", "attesting")
TRIAL = frozenset(PHASES[2:])
MAX_DELAY_S = 20.0
_FIRMWARE_BOOT = "BdsDxe: starting"  # OVMF hands over to the boot loader: the next boot has begun
_MOUNTED = re.compile(r"edgefleet-initrd: slot (.) verified and mounted")
_BOTH_BAD = "refused slot a and slot b"


@dataclass(frozen=True)
class Plan:
    seed: int
    phase: str
    delay_s: float


def plan_rounds(seed: int, rounds: int) -> list[Plan]:
    """``rounds`` cuts for one update, in the order the update reaches them; round i draws
    from ``seed + i`` (one round is replayed alone with its own seed)."""
    plans: list[Plan] = []
    in_trial = 0
    for i in range(rounds):
        rng = random.Random(seed + i)
        choices = PHASES if in_trial < TRIAL_TRIES - 1 else PHASES[:2]
        plan = Plan(seed + i, rng.choice(choices), round(rng.uniform(0.0, MAX_DELAY_S), 1))
        in_trial += plan.phase in TRIAL
        plans.append(plan)
    return sorted(plans, key=lambda p: (PHASES.index(p.phase), p.delay_s))


@dataclass
class Round:
    seed: int
    phase: str
    delay_s: float
    release: str
    cut_after: str | None = None  # the last phase the control plane had seen at the cut
    booted_slot: str | None = None
    attested_release: str | None = None
    bricked: bool = False
    both_slots_bad: bool = False
    passed: bool = False
    error: str | None = None
    seconds: float = 0.0

    def line(self) -> str:
        outcome = (f"slot {self.booted_slot}, attested on {self.attested_release}" if self.passed
                   else f"FAILED: {self.error}")
        return (f"seed {self.seed}: {self.release}, cut {self.delay_s} s into {self.phase} (device at "
                f"{self.cut_after}): {outcome}" + (", BRICKED" if self.bricked else "")
                + (", BOTH SLOTS BAD" if self.both_slots_bad else "") + f" [{self.seconds:.0f} s]")


@dataclass
class Update:
    release: str
    rounds: list[Round] = field(default_factory=list)
    converged: bool = False
    error: str | None = None
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"release": self.release, "converged": self.converged, "error": self.error,
                "seconds": round(self.seconds, 1), "rounds": [asdict(r) for r in self.rounds]}


class PowerCuts:
    """Cuts the power of ``device`` (a running VM enrolled at the plane) during updates."""

    def __init__(self, device: VmDevice, deadline: float) -> None:
        self.device = device
        self.deadline = deadline

    @property
    def machine(self) -> Machine:
        return self.device.machine

    def phases(self, release: str) -> list[str]:
        return [str(e["phase"]) for e in reversed(self.device.history()) if e["release"] == release]

    def update(self, release: str, plans: list[Plan], report: Any = None) -> Update:
        """Assign ``release``, cut the power as ``plans`` say, then wait for convergence."""
        report = report or (lambda line: print(line, flush=True))
        started = time.monotonic()
        outcome = Update(release)
        self.device.assign(release)
        for plan in plans:  # a moment the update passed already comes at once (a cut after the commit, say)
            result = self.cut(release, plan)
            outcome.rounds.append(result)
            report(f"  round {result.line()}")
            if not result.passed:
                break
        if all(r.passed for r in outcome.rounds):
            try:
                self.device.wait(f"convergence on {release}", self._converged(release), self.deadline)
                outcome.converged = True
            except AssertionError as exc:
                outcome.error = str(exc).splitlines()[0][:300]
        outcome.seconds = time.monotonic() - started
        return outcome

    def _converged(self, release: str) -> Any:
        def check() -> bool:
            record = self.device.record()
            attestation = record.get("attestation") or {}
            return bool(record["update_state"] == "committed" and record["running_version"] == release
                        and attestation.get("release") == release and attestation.get("passed"))
        return check

    def _moment(self, release: str, plan: Plan, boots_before: int) -> Any:
        later = set(PHASES[PHASES.index(plan.phase):]) | {"committed", "rolled_back"}

        def reached() -> bool:
            if plan.phase == "rebooting" and self.machine.console_text().count(_FIRMWARE_BOOT) > boots_before:
                return True
            return bool(later & set(self.phases(release)))
        return reached

    def cut(self, release: str, plan: Plan) -> Round:
        started = time.monotonic()
        result = Round(plan.seed, plan.phase, plan.delay_s, release)
        try:
            boots_before = self.machine.console_text().count(_FIRMWARE_BOOT)
            self.device.wait(f"the moment of round {plan.seed}", self._moment(release, plan, boots_before),
                             self.deadline, every=0.2)
            time.sleep(plan.delay_s)
            seen = self.phases(release)
            result.cut_after = seen[-1] if seen else None
            cut_at = datetime.now(UTC)
            self.machine.cut_power()
            self.machine.start()
            console = self.device.wait("a slot mounted or refused", lambda: (
                (text := self.machine.console_text()) and (_MOUNTED.search(text) or _BOTH_BAD in text) and text),
                self.deadline)
            result.both_slots_bad = _BOTH_BAD in console
            found = _MOUNTED.search(console)
            result.booted_slot = found.group(1) if found else None
            result.bricked = found is None
            if found is None:
                raise AssertionError("no slot mounted after the cut")

            def attested_again() -> dict[str, Any] | None:
                verdict = self.device.record().get("attestation") or {}
                fresh = verdict.get("attested_at") and datetime.fromisoformat(verdict["attested_at"]) > cut_at
                return verdict if fresh and verdict.get("passed") else None

            verdict = self.device.wait("a passed quote after the cut", attested_again, self.deadline)
            result.attested_release = str(verdict["release"])
            result.passed = True
        except AssertionError as exc:
            result.error = str(exc).splitlines()[0][:300]
            console = self.machine.console_text()
            result.both_slots_bad = result.both_slots_bad or _BOTH_BAD in console
            result.bricked = result.bricked or not _MOUNTED.search(console)
        result.seconds = time.monotonic() - started
        return result


def figures(updates: list[Update], hours: float) -> dict[str, Any]:
    """The figures bench/powercut_vm.py prints (its last line) and the CI test checks."""
    rounds = [r for u in updates for r in u.rounds]
    return {
        "rounds": len(rounds), "bricked": sum(r.bricked for r in rounds),
        "both_slots_bad": sum(r.both_slots_bad for r in rounds),
        "attested_after_cut": sum(r.passed for r in rounds),
        "updates": len(updates), "converged": sum(u.converged for u in updates),
        "rounds_per_hour": round(len(rounds) / hours, 1) if hours else 0.0,
        "failing_seeds": [r.seed for r in rounds if not r.passed]
        + [u.rounds[-1].seed for u in updates if u.rounds and u.rounds[-1].passed and not u.converged],
    }
