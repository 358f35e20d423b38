"""The A/B update as a pure state machine: phases, the transitions allowed between them,
and what a (re)started agent must conclude from the slot it finds itself booted in.

    downloading -> downloaded -> installing -> installed -> waiting_window -> rebooting
      -> trial_boot -> health_checking -> attesting -> committed
                    \\-> rolling_back -> rolled_back       (any trial phase)
    downloading / installing / installed / waiting_window -> failed   (never left the slot)
    rebooting -> rolled_back                              (tries exhausted: never reached us)
    trial phase -> trial_boot                             (booted again after a cut: start over)
    committed -> reverting -> reverted                    (the operator sends it back to the
                                                           previous release, still in the other slot)

Nothing here touches a disk or a clock: the agent persists the job after every transition
(``UpdateRunner``) and acts on it afterwards, so a power cut at any instant resumes from a
state that is true.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from edgefleet.agent.hardware.interfaces import SlotName
from edgefleet.agent.slotenv import SlotEnv
from edgefleet.errors import PersistError

HISTORY = 32  # transitions kept on the device and sent with each status report


class Phase(StrEnum):
    IDLE = "idle"
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    INSTALLING = "installing"
    INSTALLED = "installed"
    WAITING_WINDOW = "waiting_window"
    REBOOTING = "rebooting"
    TRIAL_BOOT = "trial_boot"
    HEALTH_CHECKING = "health_checking"
    ATTESTING = "attesting"
    COMMITTED = "committed"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    REVERTING = "reverting"
    REVERTED = "reverted"


P = Phase
TRIAL = frozenset({P.TRIAL_BOOT, P.HEALTH_CHECKING, P.ATTESTING})
DONE = frozenset({P.IDLE, P.COMMITTED, P.ROLLED_BACK, P.FAILED, P.REVERTED})
_BEFORE_SWITCH = frozenset({P.DOWNLOADING, P.DOWNLOADED, P.INSTALLING, P.INSTALLED, P.WAITING_WINDOW})
TRANSITIONS: dict[Phase, frozenset[Phase]] = {
    **{done: frozenset({P.DOWNLOADING}) for done in DONE},
    P.COMMITTED: frozenset({P.DOWNLOADING, P.REVERTING}),
    P.REVERTING: frozenset({P.REVERTED}),
    P.DOWNLOADING: frozenset({P.DOWNLOADED, P.FAILED}),
    P.DOWNLOADED: frozenset({P.INSTALLING, P.FAILED}),
    P.INSTALLING: frozenset({P.INSTALLED, P.FAILED}),
    P.INSTALLED: frozenset({P.WAITING_WINDOW, P.REBOOTING, P.FAILED}),
    P.WAITING_WINDOW: frozenset({P.REBOOTING, P.FAILED}),
    P.REBOOTING: frozenset({P.TRIAL_BOOT, P.WAITING_WINDOW, P.ROLLED_BACK}),
    P.TRIAL_BOOT: frozenset({P.TRIAL_BOOT, P.HEALTH_CHECKING, P.ROLLING_BACK, P.ROLLED_BACK, P.COMMITTED}),
    P.HEALTH_CHECKING: frozenset({P.TRIAL_BOOT, P.ATTESTING, P.ROLLING_BACK, P.ROLLED_BACK, P.COMMITTED}),
    P.ATTESTING: frozenset({P.TRIAL_BOOT, P.COMMITTED, P.ROLLING_BACK, P.ROLLED_BACK}),
    P.ROLLING_BACK: frozenset({P.ROLLED_BACK}),
}


@dataclass(frozen=True)
class UpdateJob:
    phase: Phase = P.IDLE
    version: str | None = None
    counter: int = 0
    sha256: str = ""
    length: int = 0
    download: str | None = None  # the verified image file
    delivery: dict[str, Any] | None = None  # how it came: method, bytes downloaded and saved
    from_slot: SlotName | None = None
    to_slot: SlotName | None = None
    previous_version: str | None = None  # what ran before: the release a revert goes back to
    boot_id: str | None = None  # boot in which the trial started
    trial_deadline: str | None = None  # ISO time after which the trial rolls back
    reason: str | None = None
    failed_counts: bool = False  # whether the version goes on the do-not-retry list
    seq: int = 0
    history: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def active(self) -> bool:
        return self.phase not in DONE

    def to(self, phase: Phase, now: datetime, reason: str | None = None, **changes: Any) -> UpdateJob:
        """The job after one transition, with the event appended to its history."""
        if phase not in TRANSITIONS.get(self.phase, frozenset()):
            raise PersistError(f"update cannot go from {self.phase} to {phase}", code="illegal_transition")
        seq = self.seq + 1
        event = {"seq": seq, "phase": str(phase), "at": now.isoformat(),
                 "release": changes.get("version", self.version), "reason": reason}
        return replace(self, phase=phase, reason=reason, seq=seq, history=(*self.history, event)[-HISTORY:],
                       **changes)

    def start(self, version: str, counter: int, sha256: str, length: int, now: datetime,
              previous: str | None = None) -> UpdateJob:
        """A new update; the history and sequence carry on from the last one."""
        fresh = replace(self, phase=P.IDLE if self.phase in DONE else self.phase, version=version, counter=counter,
                        sha256=sha256, length=length, download=None, delivery=None, from_slot=None, to_slot=None,
                        boot_id=None, trial_deadline=None, failed_counts=False, previous_version=previous)
        return fresh.to(P.DOWNLOADING, now, version=version)

    def dump(self) -> dict[str, Any]:
        value = asdict(self)
        value["phase"] = str(self.phase)
        value["history"] = list(self.history)
        return value

    @classmethod
    def load(cls, value: dict[str, Any]) -> UpdateJob:
        """Raises PersistError when ``value`` is not a job this agent wrote."""
        try:
            return cls(**{**value, "phase": Phase(value.get("phase", "idle")),
                          "history": tuple(value.get("history", ()))})
        except (TypeError, ValueError) as exc:
            raise PersistError(f"update job in agent state is corrupt: {exc}") from exc


@dataclass(frozen=True)
class Resume:
    """What to do with a job found after a (re)start."""

    phase: Phase | None  # transition to make, None to carry on in the current phase
    reason: str | None = None
    failed_counts: bool = False
    rearm: bool = False  # put the trial back in the environment and reboot


def after_start(job: UpdateJob, booted: SlotName, boot_id: str, env: SlotEnv, now: datetime) -> Resume:
    """Decide how a job continues when the agent starts (after a reboot or a crash)."""
    if job.phase in _BEFORE_SWITCH or job.phase in DONE or job.to_slot is None:
        return Resume(None)
    if job.phase is P.REBOOTING:
        if booted == job.to_slot:
            return Resume(P.TRIAL_BOOT, "trial boot of the new slot")
        if env.order[:1] == (job.to_slot,) and env.tries_left(job.to_slot) > 0:
            return Resume(None)  # armed, but the reboot itself never happened: reboot again
        if env.order[:1] == (job.to_slot,):
            return Resume(P.ROLLED_BACK, "tries exhausted: the new slot never started the agent", failed_counts=True)
        return Resume(None, rearm=True)  # cut before the trial was armed
    if job.phase is P.REVERTING:
        if booted == job.to_slot:
            return Resume(P.REVERTED, job.reason)
        return Resume(None)  # the switch has not happened yet: do it
    if job.phase is P.ROLLING_BACK:
        if booted == job.from_slot:
            return Resume(P.ROLLED_BACK, job.reason, failed_counts=job.failed_counts)
        return Resume(None)  # the rollback reboot has not happened yet: do it
    # A trial phase.
    if job.to_slot in env.good:
        return Resume(P.COMMITTED, "committed (confirmed after restart)")
    if booted != job.to_slot:
        # The new slot started the agent, then used up its tries without a commit: the
        # boot loader fell back (crashes or resets in every trial boot, not one power cut).
        return Resume(P.ROLLED_BACK, "the new slot's trial boots all ended before a commit (crash or reset); "
                      "the boot loader fell back", failed_counts=True)
    if job.boot_id != boot_id:
        # The trial slot booted again (the last trial boot was cut short and the boot
        # loader's counter allowed another): the trial starts over in this boot.
        return Resume(P.TRIAL_BOOT, "trial boot of the new slot, again (the previous one was cut short)")
    if job.trial_deadline is not None and now >= datetime.fromisoformat(job.trial_deadline):
        return Resume(P.ROLLING_BACK, "trial deadline passed", failed_counts=True)
    return Resume(None)
