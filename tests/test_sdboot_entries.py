"""systemd-boot's boot counting as the A/B environment: the agent's slot variables become
entry names on the ESP, and the entry systemd-boot would start is always the slot the
slot rule (``SlotEnv.select``) picks. The real boot loader runs in test_real_boot.py;
here a model of its choice (systemd-boot 252's config_entry_compare and its counter
rename) runs every sequence of agent writes, firmware boots and power cuts quickly."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from edgefleet import bootchain
from edgefleet.agent.hardware.sdboot import SdBootEntries
from edgefleet.agent.slotenv import TRIAL_TRIES, SlotEnv
from edgefleet.errors import InstallError, PersistError


def slot_image(path: Path, uki: bytes, body: int = 3 * bootchain.BLOCK) -> int:
    path.write_bytes(os.urandom(body))
    source = path.with_suffix(".uki")
    source.write_bytes(uki)
    bootchain.append_uki(path, source)
    return path.stat().st_size


def firmware_boot(esp: Path) -> str | None:
    """What systemd-boot 252 does with ``default edgefleet-*``: sort our entries (no tries
    left last, then by id, highest first), start the first, and rename a counted entry to
    one try fewer before it does. Returns the slot it started."""
    directory = esp / bootchain.ENTRY_DIR
    ours = [(name, e) for name in os.listdir(directory) if (e := bootchain.Entry.parse(name)) is not None]
    if not ours:
        return None
    ours.sort(key=lambda item: item[0], reverse=True)  # by id, highest first (ranks are one digit)
    ours.sort(key=lambda item: item[1].left == 0)  # stable: no tries left goes last
    name, entry = ours[0]
    if entry.left is not None and entry.left > 0:
        renamed = bootchain.Entry(entry.rank, entry.slot, entry.left - 1, entry.done + 1)
        os.replace(directory / name, directory / renamed.name)
    return entry.slot


def test_a_slot_carries_its_uki_and_a_changed_byte_is_refused(tmp_path: Path) -> None:
    uki = b"MZ" + os.urandom(10_000)
    length = slot_image(tmp_path / "slot", uki)
    assert bootchain.read_uki(tmp_path / "slot", length) == uki
    data = bytearray((tmp_path / "slot").read_bytes())
    data[3 * bootchain.BLOCK + 100] ^= 1
    (tmp_path / "changed").write_bytes(bytes(data))
    with pytest.raises(InstallError, match="does not match"):
        bootchain.read_uki(tmp_path / "changed", length)
    (tmp_path / "plain").write_bytes(bytes(4 * bootchain.BLOCK))
    with pytest.raises(InstallError, match="no slot trailer"):
        bootchain.read_uki(tmp_path / "plain", 4 * bootchain.BLOCK)


def test_a_trailer_pointing_outside_the_image_is_refused(tmp_path: Path) -> None:
    length = slot_image(tmp_path / "slot", b"MZ" * 100)
    data = bytearray((tmp_path / "slot").read_bytes())
    trailer = length - bootchain.BLOCK
    data[trailer + 24:trailer + 32] = (10 << 30).to_bytes(8, "little")  # the UKI's length
    (tmp_path / "slot").write_bytes(bytes(data))
    with pytest.raises(InstallError, match="outside the image"):
        bootchain.read_uki(tmp_path / "slot", length)


def test_entry_names_follow_the_boot_loader_specification_counters() -> None:
    assert bootchain.Entry.parse("edgefleet-2-b+1.efi") == bootchain.Entry(2, "b", 1, 0)
    assert bootchain.Entry.parse("edgefleet-2-b+0-1.efi") == bootchain.Entry(2, "b", 0, 1)
    assert bootchain.Entry.parse("edgefleet-1-a.efi") == bootchain.Entry(1, "a")
    assert bootchain.Entry(2, "b", 0, 1).name == "edgefleet-2-b+0-1.efi"
    for other in ("edgefleet-1-c.efi", "debian.efi", ".edgefleet-a.staged", "edgefleet-1-a+x.efi"):
        assert bootchain.Entry.parse(other) is None


@pytest.fixture
def esp(tmp_path: Path) -> tuple[Path, SdBootEntries, dict[str, Path]]:
    esp = tmp_path / "esp"
    (esp / bootchain.ENTRY_DIR).mkdir(parents=True)
    slots = {s: tmp_path / f"root-{s}" for s in "ab"}
    for slot, path in slots.items():
        slot_image(path, f"UKI of slot {slot}".encode())
    (esp / bootchain.ENTRY_DIR / bootchain.Entry(1, "a").name).write_bytes(b"UKI of slot a")
    return esp, SdBootEntries(esp), slots


def test_a_new_disk_reads_as_slot_a_good_and_alone(esp: tuple[Path, SdBootEntries, dict[str, Path]]) -> None:
    _, entries, _ = esp
    assert SlotEnv.parse(entries.read()) == SlotEnv.factory("a")


def test_a_trial_boots_for_its_tries_and_falls_back_when_not_committed(
        esp: tuple[Path, SdBootEntries, dict[str, Path]]) -> None:
    path, entries, slots = esp
    env = SlotEnv.parse(entries.read())
    entries.write(env.mark_bad("b").render())
    entries.stage("b", slots["b"], slots["b"].stat().st_size)
    entries.write(SlotEnv.parse(entries.read()).start_trial("b").render())
    assert (path / bootchain.ENTRY_DIR / f"edgefleet-2-b+{TRIAL_TRIES}.efi").exists()
    for done in range(1, TRIAL_TRIES + 1):
        assert firmware_boot(path) == "b"
        assert SlotEnv.parse(entries.read()).tries_left("b") == TRIAL_TRIES - done
    assert (path / bootchain.ENTRY_DIR / f"edgefleet-2-b+0-{TRIAL_TRIES}.efi").read_bytes() == b"UKI of slot b"
    assert firmware_boot(path) == "a"  # never committed: the boot loader falls back by itself
    assert SlotEnv.parse(entries.read()).select()[0] == "a"


def test_a_committed_trial_is_blessed_and_stays(esp: tuple[Path, SdBootEntries, dict[str, Path]]) -> None:
    path, entries, slots = esp
    entries.write(SlotEnv.parse(entries.read()).mark_bad("b").render())
    entries.stage("b", slots["b"], slots["b"].stat().st_size)
    entries.write(SlotEnv.parse(entries.read()).start_trial("b").render())
    assert firmware_boot(path) == "b"
    entries.write(SlotEnv.parse(entries.read()).commit("b").render())
    assert sorted(os.listdir(path / bootchain.ENTRY_DIR)) == ["edgefleet-1-a.efi", "edgefleet-2-b.efi"]
    assert [firmware_boot(path) for _ in range(3)] == ["b", "b", "b"]


def test_arming_a_trial_with_nothing_staged_is_refused_and_changes_nothing(
        esp: tuple[Path, SdBootEntries, dict[str, Path]]) -> None:
    path, entries, _ = esp
    before = sorted(os.listdir(path / bootchain.ENTRY_DIR))
    with pytest.raises(InstallError, match="no kernel image staged"):
        entries.write(SlotEnv.parse(entries.read()).start_trial("b").render())
    assert sorted(os.listdir(path / bootchain.ENTRY_DIR)) == before


def test_the_boot_loader_always_starts_the_slot_the_slot_rule_picks(
        esp: tuple[Path, SdBootEntries, dict[str, Path]]) -> None:
    # Random agent actions and boots, as the update runner takes them; after each, the
    # model of systemd-boot and SlotEnv.select agree, and a good slot is always bootable.
    path, entries, slots = esp
    rng = random.Random(int(hashlib.sha256(b"sdboot").hexdigest()[:8], 16))
    running, on_trial = "a", False
    seen = {"trial boots": 0, "commits": 0, "fallbacks": 0}
    for _ in range(400):
        env = SlotEnv.parse(entries.read())
        other = "b" if running == "a" else "a"
        action = rng.choice(["update", "commit", "boot", "revert"])
        if action == "update" and not on_trial:
            entries.write(env.mark_bad(other).render())
            entries.stage(other, slots[other], slots[other].stat().st_size)
            entries.write(SlotEnv.parse(entries.read()).start_trial(other).render())
        elif action == "commit" and on_trial:
            entries.write(env.commit(running).render())
            on_trial = False
            seen["commits"] += 1
        elif action == "revert" and not on_trial and {"a", "b"} <= env.good:
            entries.write(env.commit(other).render())
        else:
            expected, _ = env.select()
            started = firmware_boot(path)
            assert started == expected
            seen["trial boots"] += started not in env.good
            seen["fallbacks"] += on_trial and started != running
            running, on_trial = started, started not in env.good
        assert SlotEnv.parse(entries.read()).has_bootable_good_slot()
    assert min(seen.values()) >= 10, seen


def test_an_esp_that_is_not_mounted_or_not_ours_is_a_typed_error_not_an_empty_order(tmp_path: Path) -> None:
    with pytest.raises(PersistError, match="is it mounted at"):
        SdBootEntries(tmp_path / "not-mounted").read()
    (tmp_path / "esp" / bootchain.ENTRY_DIR).mkdir(parents=True)
    (tmp_path / "esp" / bootchain.ENTRY_DIR / "debian-6.1.efi").write_bytes(b"MZ")
    with pytest.raises(PersistError, match="does not boot our slots"):
        SdBootEntries(tmp_path / "esp").read()
