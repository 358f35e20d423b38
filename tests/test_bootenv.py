"""Bootloader environments in their real formats, read and written by the real tools
(grub-editenv, fw_printenv/fw_setenv), the A/B slot rules, and the shipped boot scripts."""

from __future__ import annotations

import random
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pytest

from edgefleet.agent.hardware.grubenv import GrubEnvFile
from edgefleet.agent.hardware.ubootenv import EnvCopy, UBootEnv, UBootEnvFile, from_fw_env_config
from edgefleet.agent.slotenv import TRIAL_TRIES, SlotEnv
from edgefleet.errors import ConfigError
from tests.conftest import need

SLOT_VARS = SlotEnv.factory().render()


def tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        need(name, f"package {package} is not installed")
    assert found is not None
    return found


def fw_printenv(config: Path) -> dict[str, str]:
    out = subprocess.run([tool("fw_printenv", "u-boot-tools"), "-c", str(config)], capture_output=True, text=True,
                         check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def uboot(tmp_path: Path) -> tuple[UBootEnvFile, Path]:
    env = UBootEnvFile(tmp_path / "uboot.env")
    config = tmp_path / "fw_env.config"
    config.write_text(env.fw_env_config())
    return env, config


def test_redundant_uboot_env_we_write_is_what_fw_printenv_reads(tmp_path: Path) -> None:
    env, config = uboot(tmp_path)
    env.write({"bootcmd": "run edgefleet", **SLOT_VARS})
    env.write({"bootcmd": "run edgefleet", **SlotEnv.factory().start_trial("b").render()})
    assert fw_printenv(config)["BOOT_ORDER"] == "B A"
    assert fw_printenv(config) == env.read()


def test_uboot_env_fw_setenv_writes_is_what_we_read(tmp_path: Path) -> None:
    env, config = uboot(tmp_path)
    env.write(SLOT_VARS)
    for value in ("1", "2", "3"):  # each write goes to the other copy with a higher flag
        subprocess.run([tool("fw_setenv", "u-boot-tools"), "-c", str(config), "BOOT_B_LEFT", value], check=True)
        assert env.read() == {**SLOT_VARS, "BOOT_B_LEFT": value}
    env.write({**env.read(), "BOOT_ORDER": "B A"})
    assert fw_printenv(config)["BOOT_ORDER"] == "B A"


def test_single_copy_uboot_env_at_an_offset_interoperates(tmp_path: Path) -> None:
    device = tmp_path / "mmcblk0boot1"
    device.write_bytes(b"\xff" * 0x10000)
    env = UBootEnv([EnvCopy(device, 0x8000, 0x2000)])
    env.write(SLOT_VARS)
    (tmp_path / "fw_env.config").write_text(env.fw_env_config())
    assert fw_printenv(tmp_path / "fw_env.config") == SLOT_VARS
    assert device.read_bytes()[:0x8000] == b"\xff" * 0x8000  # nothing outside the copy was touched


def test_torn_uboot_write_falls_back_to_the_previous_copy_for_us_and_for_fw_printenv(tmp_path: Path) -> None:
    env, config = uboot(tmp_path)
    env.write(SLOT_VARS)
    old = env.read()
    env.write(SlotEnv.factory().start_trial("b").render())
    rng = random.Random(5)
    raw = bytearray((tmp_path / "uboot.env").read_bytes())
    newer = 1  # the second write went to copy 1
    for _ in range(20):
        torn = bytearray(raw)
        cut = rng.randrange(1, 0x4000)  # power lost after `cut` bytes of the new copy
        start = newer * 0x4000
        torn[start + cut:start + 0x4000] = raw[start + cut:start + 0x4000][::-1] if cut % 2 else \
            b"\xff" * (0x4000 - cut)
        torn[start + 4] = raw[start + 4]  # flags written, data incomplete
        (tmp_path / "uboot.env").write_bytes(bytes(torn))
        if torn == raw:
            continue
        assert env.read() == old
        assert fw_printenv(config) == old


def test_fw_env_config_is_parsed_and_bad_lines_are_config_errors(tmp_path: Path) -> None:
    (tmp_path / "fw_env.config").write_text("# comment\n/dev/mmcblk0 0x3c0000 0x20000\n/dev/mmcblk0 0x3e0000 0x20000\n")
    env = from_fw_env_config(tmp_path / "fw_env.config")
    assert env.redundant
    assert env.copies[1] == EnvCopy(Path("/dev/mmcblk0"), 0x3E0000, 0x20000)
    (tmp_path / "bad.config").write_text("/dev/mmcblk0 zero\n")
    with pytest.raises(ConfigError, match="bad line"):
        from_fw_env_config(tmp_path / "bad.config")


def test_slot_variables_we_write_are_what_grub_editenv_lists_and_back(tmp_path: Path) -> None:
    editenv = tool("grub-editenv", "grub-common")
    path = tmp_path / "grubenv"
    GrubEnvFile(path).write({"saved_entry": "0", **SlotEnv.factory().start_trial("b").render()})
    listed = subprocess.run([editenv, str(path), "list"], capture_output=True, text=True, check=True).stdout
    assert dict(line.split("=", 1) for line in listed.splitlines()) == GrubEnvFile(path).read()
    subprocess.run([editenv, str(path), "set", "BOOT_B_LEFT=0"], check=True)  # what GRUB's save_env does
    slot, _ = SlotEnv.parse(GrubEnvFile(path).read()).select()
    assert slot == "a"


def test_firmware_rule_boots_a_trial_for_its_tries_then_falls_back_to_the_good_slot() -> None:
    env = SlotEnv.factory().mark_bad("b").start_trial("b")
    for left in reversed(range(TRIAL_TRIES)):
        slot, env = env.select()
        assert slot == "b"
        assert env.tries_left("b") == left
    assert env.select()[0] == "a"
    committed = env.commit("b")
    assert [committed.select()[0] for _ in range(3)] == ["b", "b", "b"]
    assert committed.order == ("b", "a")


def test_damaged_environment_boots_the_first_good_slot_or_a() -> None:
    assert SlotEnv.parse({}).select()[0] == "a"
    assert SlotEnv.parse({"BOOT_B_GOOD": "1", "BOOT_ORDER": "garbage"}).select()[0] == "b"
    assert SlotEnv.parse({"BOOT_ORDER": "B", "BOOT_B_LEFT": "7"}).select()[0] == "a"  # GRUB counts to 3 only


def test_no_sequence_of_agent_writes_leaves_no_good_slot_to_boot() -> None:
    """The agent installs only while running a committed slot, commits only the slot it
    runs on trial, and the firmware boots in between at any moment."""
    rng = random.Random(7)
    for _ in range(500):
        env = SlotEnv.factory(rng.choice(["a", "b"]))
        for _ in range(12):
            booted, _ = env.select()
            other = "b" if booted == "a" else "a"
            op = rng.choice(["mark_bad", "start_trial", "commit", "boot"])
            if op == "boot":
                _, env = env.select()
            elif op == "commit" and booted not in env.good:
                env = env.commit(booted)
            elif op in ("mark_bad", "start_trial") and booted in env.good:
                env = getattr(env.mark_bad(other), op)(other)
            assert env.has_bootable_good_slot(), env


def test_shipped_uboot_script_compiles_with_mkimage_and_uses_the_slot_variables(tmp_path: Path) -> None:
    script = resources.files("edgefleet.agent") / "boot" / "uboot-ab.cmd"
    text = script.read_text()
    for name in SLOT_VARS:
        assert name in text
    source = tmp_path / "boot.cmd"
    source.write_text(text)
    mkimage = tool("mkimage", "u-boot-tools")
    subprocess.run([mkimage, "-A", "arm64", "-T", "script", "-C", "none", "-d", str(source),
                    str(tmp_path / "boot.scr")], check=True, capture_output=True)
    assert text.encode() in (tmp_path / "boot.scr").read_bytes()
