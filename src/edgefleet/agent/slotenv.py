"""A/B slot selection in the bootloader environment, RAUC-style, as pure functions.

Variables (the same names in GRUB's env block and U-Boot's environment):

    BOOT_ORDER     slots the firmware may boot, in preference order, e.g. "B A"
    BOOT_x_GOOD    "1": slot x is committed (known good); "0": bad or on trial
    BOOT_x_LEFT    boot tries left for slot x while it is not good

The firmware rule (``select``), implemented identically by the U-Boot script
(``boot/uboot-ab.cmd``), the emulated device's firmware, and, through entry names instead
of variables, systemd-boot's boot counting (``hardware/sdboot.py``): take the first slot
in BOOT_ORDER that is good, or that has tries left, in which case one try is used up and
saved *before* the slot boots. A slot on trial is booted at most TRIAL_TRIES times (three,
systemd-boot's default): a power cut or a crash during one trial boot leaves tries for the
next, and if its OS never commits it, the boot after the last try falls through to the
good slot. If no slot
qualifies (a damaged environment), the first good slot, else A. Tries are 0 to 3 (boot
scripts without arithmetic spell them out); any other value counts as 0.

The agent's writes keep one invariant: at every instant at least one slot is good and in
BOOT_ORDER. The slot about to be written is first taken out of BOOT_ORDER and marked bad;
a trial puts it first with TRIAL_TRIES tries; a commit marks it good; a rollback takes it out again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import cast

from edgefleet.agent.hardware.interfaces import SlotName

SLOTS: tuple[SlotName, SlotName] = ("a", "b")
TRIAL_TRIES = 3  # boots of a slot on trial before the firmware falls back (systemd-boot's default)
_TRIES = ("0", "1", "2", "3")  # GRUB cannot count, so its script spells out 3, 2, 1


def _var(slot: SlotName, what: str) -> str:
    return f"BOOT_{slot.upper()}_{what}"


@dataclass(frozen=True)
class SlotEnv:
    order: tuple[SlotName, ...]
    good: frozenset[SlotName]
    left: tuple[tuple[SlotName, int], ...]  # tries left per slot, for both slots

    @classmethod
    def factory(cls, booted: SlotName = "a") -> SlotEnv:
        """A freshly flashed device: ``booted`` good and alone in the order."""
        return cls((booted,), frozenset({booted}), (("a", 0), ("b", 0)))

    @classmethod
    def parse(cls, values: Mapping[str, str]) -> SlotEnv:
        """Lenient as firmware is: unknown slot names and non-numbers are ignored."""
        order = tuple(dict.fromkeys(cast(SlotName, s.lower()) for s in values.get("BOOT_ORDER", "").split()
                                    if s.lower() in SLOTS))
        good = frozenset(s for s in SLOTS if values.get(_var(s, "GOOD")) == "1")
        left = tuple((s, int(v) if (v := values.get(_var(s, "LEFT"), "0")) in _TRIES else 0) for s in SLOTS)
        return cls(order, good, left)

    def tries_left(self, slot: SlotName) -> int:
        return dict(self.left)[slot]

    def render(self) -> dict[str, str]:
        values = {"BOOT_ORDER": " ".join(s.upper() for s in self.order)}
        for slot in SLOTS:
            values[_var(slot, "GOOD")] = "1" if slot in self.good else "0"
            values[_var(slot, "LEFT")] = str(self.tries_left(slot))
        return values

    def merged_into(self, values: Mapping[str, str]) -> dict[str, str]:
        """``values`` (the whole environment) with our variables replaced, others kept."""
        return {**values, **self.render()}

    def _with_left(self, slot: SlotName, tries: int) -> tuple[tuple[SlotName, int], ...]:
        return tuple((s, tries if s == slot else n) for s, n in self.left)

    # What the agent does
    def mark_bad(self, slot: SlotName) -> SlotEnv:
        """Before a slot is written: out of the order, not good, no tries."""
        return SlotEnv(tuple(s for s in self.order if s != slot), self.good - {slot}, self._with_left(slot, 0))

    def start_trial(self, slot: SlotName) -> SlotEnv:
        """Boot ``slot`` next, at most TRIAL_TRIES times; the good slots stay behind it in the order."""
        rest = tuple(s for s in self.order if s != slot and s in self.good)
        return SlotEnv((slot, *rest), self.good - {slot}, self._with_left(slot, TRIAL_TRIES))

    def commit(self, slot: SlotName) -> SlotEnv:
        """The trial passed: ``slot`` is good and first; the previous good slot stays as fallback."""
        rest = tuple(s for s in self.order if s != slot and s in self.good)
        return SlotEnv((slot, *rest), self.good | {slot}, self._with_left(slot, 0))

    def has_bootable_good_slot(self) -> bool:
        return any(s in self.good for s in self.order)

    # What the firmware does
    def select(self) -> tuple[SlotName, SlotEnv]:
        """The slot to boot and the environment to save before booting it."""
        for slot in self.order:
            if slot in self.good:
                return slot, self
            tries = self.tries_left(slot)
            if tries > 0:
                return slot, replace(self, left=self._with_left(slot, tries - 1))
        fallback: SlotName = next((s for s in SLOTS if s in self.good), "a")
        return fallback, self
