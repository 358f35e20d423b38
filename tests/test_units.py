"""Pure parts: backoff, the GRUB environment block, atomic persistence, public names."""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

import edgefleet.errors
from edgefleet.agent.configuration import usable
from edgefleet.agent.hardware.grubenv import BLOCK_SIZE, GrubEnvFile, decode, encode
from edgefleet.agent.hardware.vdevice import VirtualDevice
from edgefleet.agent.state import StateDir
from edgefleet.errors import ConfigError, EdgefleetError, InvalidRequest, PersistError
from edgefleet.server.errors import OverloadLog
from edgefleet.util.atomic import atomic_write_bytes
from edgefleet.util.backoff import Backoff, jittered
from tests.conftest import need


def test_backoff_doubles_with_jitter_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(initial=1, maximum=8, rng=random.Random(7))
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, ceiling in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert ceiling / 2 <= delay <= ceiling
    backoff.reset()
    assert backoff.next_delay() <= 1


def test_jittered_interval_stays_within_twenty_percent() -> None:
    rng = random.Random(1)
    samples = [jittered(10, rng) for _ in range(200)]
    assert min(samples) >= 8
    assert max(samples) <= 12
    assert max(samples) - min(samples) > 2  # it really spreads


def test_grub_env_block_is_exactly_1024_bytes_and_round_trips() -> None:
    values = {"ORDER": "A B", "A_TRY": "0", "B_OK": "1"}
    block = encode(values)
    assert len(block) == BLOCK_SIZE
    assert block.startswith(b"# GRUB Environment Block\n")
    assert block.endswith(b"#")
    assert decode(block) == values


@pytest.mark.parametrize("values", [{"A": "x\ny"}, {"A": "back\\slash"}, {"bad-name": "1"}, {"A": "x" * 1100}])
def test_grub_env_refuses_what_grub_cannot_hold(values: dict[str, str]) -> None:
    with pytest.raises(InvalidRequest):
        encode(values)


def test_truncated_grub_env_block_is_refused() -> None:
    with pytest.raises(InvalidRequest):
        decode(encode({"A": "1"})[:1000])


def test_grub_env_interoperates_with_grub_editenv(tmp_path: Path) -> None:
    tool = shutil.which("grub-editenv")
    if tool is None:
        need("grub-editenv", "package grub-common is not installed")
    path = tmp_path / "grubenv"
    GrubEnvFile(path).write({"ORDER": "A B", "A_OK": "1"})
    listed = subprocess.run([tool, str(path), "list"], capture_output=True, text=True, check=True).stdout
    assert listed.splitlines() == ["ORDER=A B", "A_OK=1"]
    subprocess.run([tool, str(path), "set", "B_TRY=1"], check=True)
    assert GrubEnvFile(path).read() == {"ORDER": "A B", "A_OK": "1", "B_TRY": "1"}


def test_failed_atomic_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "state.json"
    atomic_write_bytes(target, b"old")

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(PersistError, match="No space left"):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_corrupt_agent_state_is_a_persist_error_not_a_fresh_start(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path)
    state_dir.state_file.write_text('{"device_id": "dev-1", "desired_vers')
    with pytest.raises(PersistError, match="unreadable"):
        state_dir.load()


def test_vdevice_reports_the_version_of_its_booted_slot(tmp_path: Path) -> None:
    device = VirtualDevice.create(tmp_path / "d", hardware_id="hw-1", site="s", os_version="7.1")
    assert (device.booted(), device.other(), device.os_version()) == ("a", "b", "7.1")
    assert device.bootenv.read()["BOOT_ORDER"] == "A"
    device.reboot("test")
    assert "test" in (device.path / "reboots.log").read_text()


def test_error_module_exports_exactly_the_documented_hierarchy() -> None:
    exported = {getattr(edgefleet.errors, name) for name in edgefleet.errors.__all__}
    declared = {obj for obj in vars(edgefleet.errors).values()
                if isinstance(obj, type) and issubclass(obj, EdgefleetError)}
    assert exported == declared
    for cls in declared:
        assert cls.__name__ in (edgefleet.errors.__doc__ or "")


def test_linux_ab_system_reads_the_slot_from_the_kernel_command_line(tmp_path: Path) -> None:
    from edgefleet.agent.hardware import LinuxABSystem

    (tmp_path / "proc/sys/kernel/random").mkdir(parents=True)
    (tmp_path / "proc/cmdline").write_text("BOOT_IMAGE=/boot/vmlinuz root=PARTLABEL=root-b ro edgefleet.slot=b quiet\n")
    (tmp_path / "proc/sys/kernel/random/boot_id").write_text("5f1c\n")
    (tmp_path / "etc/edgefleet/health.d").mkdir(parents=True)
    (tmp_path / "etc/edgefleet/health.d/10-app.json").write_text('[{"name": "app", "kind": "command", '
                                                                 '"command": ["true"]}]')
    slot_a, slot_b = tmp_path / "root-a", tmp_path / "root-b"
    slot_a.write_bytes(b"\0" * 4096)
    slot_b.write_bytes(b"\0" * 8192)
    system = LinuxABSystem({"a": slot_a, "b": slot_b}, GrubEnvFile(tmp_path / "grubenv"), root=tmp_path)
    assert (system.booted(), system.boot_id(), system.slot_size("a")) == ("b", "5f1c", 4096)
    assert system.image_health_checks() == [{"name": "app", "kind": "command", "command": ["true"]}]
    (tmp_path / "proc/cmdline").write_text("root=/dev/sda2 ro\n")
    with pytest.raises(ConfigError, match=r"edgefleet\.slot"):
        system.booted()


def test_agent_state_from_an_older_agent_loads_without_its_retired_keys(tmp_path: Path) -> None:
    state_dir = StateDir(tmp_path)
    state_dir.state_file.write_text('{"device_id": "dev-1", "downloaded": {"version": "1"}, "status_seq": 4}')
    state = state_dir.load()
    assert (state.device_id, state.status_seq, state.update) == ("dev-1", 4, {})


def test_overload_refusals_are_logged_once_per_window_with_the_count_left_out() -> None:
    now = [100.0]
    log = OverloadLog(window=5, monotonic=lambda: now[0])
    assert log.should_log("store_error") == (True, 0)
    assert [log.should_log("store_error") for _ in range(3)] == [(False, 0)] * 3
    assert log.should_log("store_unreachable") == (True, 0)  # each kind has its own window
    now[0] += 5
    assert log.should_log("store_error") == (True, 3)


def test_the_agent_keeps_no_configuration_that_is_not_a_valid_desired_state() -> None:
    good = {"release": "2026.12.0", "config": {"group": "tills", "os": {"cloud_init": "#cloud-config\n"}}}
    assert usable(good) == (good, None)
    kept, why = usable({"release": "2026.12.0", "config": {"group": "tills", "os": {"cloud_init": 7}},
                        "update": {"force_reboot": True}})
    assert kept == {"update": {"force_reboot": True}}  # reported as ignored, never acted on
    assert why is not None
    assert why.startswith("config.os.cloud_init:")
