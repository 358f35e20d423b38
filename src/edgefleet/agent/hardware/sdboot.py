"""systemd-boot with boot counting as the A/B bootloader environment (``BootEnv``).

The slot variables of ``agent/slotenv.py`` live in the names of the boot entries on the
ESP (``bootchain``): a slot in BOOT_ORDER has an entry, ranked by its place in the order;
a good slot's entry has no counter; a slot on trial has ``+LEFT``. systemd-boot, not the
agent, uses up a try: it renames ``+1`` to ``+0-1`` before it starts the entry and sorts an
entry with no tries left after every other, so a trial that never commits falls back to
the good slot on the next boot whatever happened to the agent. Committing drops the
counter, which is what ``systemd-bless-boot good`` does to the booted entry.

A slot's entry is the UKI its release carries (``bootchain.read_uki``), staged beside the
entries under a name systemd-boot ignores before the trial is armed, so arming is one
rename. Every write keeps a good slot bootable at each step: the entries of slots that
leave the order go first, then good slots are renamed, then the slot on trial.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

from edgefleet import bootchain
from edgefleet.agent.hardware.interfaces import SlotName
from edgefleet.agent.slotenv import SLOTS, SlotEnv
from edgefleet.errors import InstallError, PersistError
from edgefleet.util.atomic import atomic_write_bytes, fsync_dir, fsync_file

log = logging.getLogger("edgefleet.agent.sdboot")


def _staged(slot: SlotName) -> str:
    return f".edgefleet-{slot}.staged"


class SdBootEntries:
    """The entries of both slots in ``esp``/EFI/Linux (``esp`` is the mounted ESP)."""

    def __init__(self, esp: Path) -> None:
        self.esp = esp
        self.directory = esp / bootchain.ENTRY_DIR

    def _entries(self) -> dict[SlotName, tuple[bootchain.Entry, Path]]:
        """Each slot's entry (the highest ranked if a crash left two).

        Raises PersistError when there is none: the ESP is not mounted, or is not an
        edgefleet image's (the agent must not guess the boot order of a disk it cannot read).
        """
        found: dict[SlotName, tuple[bootchain.Entry, Path]] = {}
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError as exc:
            raise PersistError(f"no {bootchain.ENTRY_DIR} on the ESP: is it mounted at {self.esp}?",
                               code="no_boot_entries") from exc
        except OSError as exc:
            raise PersistError(f"cannot read the boot entries in {self.directory}: {exc.strerror or exc}") from exc
        for name in names:
            entry = bootchain.Entry.parse(name)
            if entry is None:
                continue
            slot: SlotName = "a" if entry.slot == "a" else "b"
            if slot not in found or entry.rank > found[slot][0].rank:
                found[slot] = (entry, self.directory / name)
        if not found:
            raise PersistError(f"no edgefleet boot entry in {self.directory}: this ESP does not boot our slots",
                               code="no_boot_entries")
        return found

    def read(self) -> dict[str, str]:
        entries = self._entries()
        order = tuple(sorted(entries, key=lambda s: -entries[s][0].rank))
        good = frozenset(s for s in order if entries[s][0].left is None)
        left = tuple((s, min(entries[s][0].left or 0, 3) if s in entries else 0) for s in SLOTS)
        return SlotEnv(order, good, left).render()

    def write(self, values: Mapping[str, str]) -> None:
        """Rename, add and remove entries until they say what ``values`` says.

        Raises InstallError (a slot to boot has no entry and nothing staged) or
        PersistError (the ESP refused a change).
        """
        env = SlotEnv.parse(values)
        entries = self._entries()
        wanted = {slot: bootchain.Entry(len(env.order) - i, slot,
                                        None if slot in env.good else env.tries_left(slot))
                  for i, slot in enumerate(env.order)}
        try:
            for slot, (_, path) in entries.items():
                if slot not in wanted:
                    path.unlink()
            for slot in sorted(wanted, key=lambda s: s not in env.good):  # good slots first
                target = wanted[slot]
                current = entries.get(slot)
                if current is not None and (current[0].rank, current[0].left) == (target.rank, target.left):
                    continue
                if current is None and target.left is not None:
                    source = self.directory / _staged(slot)
                    if not source.exists():
                        raise InstallError(f"slot {slot} has no kernel image staged on the ESP to boot it with")
                elif current is None:
                    raise InstallError(f"slot {slot} cannot be marked good: it has no boot entry")
                else:
                    source = current[1]
                os.replace(source, self.directory / target.name)
                # vfat writes a renamed file's directory entry with cluster 0 and size 0 and
                # fills them in when the inode is written back: without this fsync, a power
                # cut after a commit left an empty entry, and systemd-boot started the old slot.
                fsync_file(self.directory / target.name)
                log.info("boot entry of slot %s: %s", slot, target.name)
            fsync_dir(self.directory)
        except OSError as exc:
            raise PersistError(f"cannot change the boot entries in {self.directory}: {exc.strerror or exc}") from exc

    def stage(self, slot: SlotName, image: Path, length: int) -> None:
        """Put the UKI that ``image`` (a written slot of ``length`` bytes) carries beside the
        entries, invisible to systemd-boot until ``write`` arms it.

        Raises InstallError (the image carries no valid UKI) or PersistError (the ESP is full).
        """
        # The temporary file's name starts with a dot too (systemd-boot skips it); vfat
        # ignores the file mode atomic_write_bytes sets.
        staged = self.directory / _staged(slot)
        atomic_write_bytes(staged, bootchain.read_uki(image, length))
        try:
            fsync_file(staged)  # its renamed directory entry, as in write()
        except OSError as exc:
            raise PersistError(f"cannot flush {staged}: {exc.strerror or exc}") from exc
