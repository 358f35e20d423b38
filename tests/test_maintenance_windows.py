"""Maintenance windows across DST in both directions, and an install that is ready outside
its window: it waits, and reboots only when the window opens or the operator forces it."""

from __future__ import annotations

import hashlib
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from edgefleet.agent.abupdate import Action, Offer, UpdateRunner
from edgefleet.agent.download import fetch_target, target_url
from edgefleet.agent.hardware import VirtualDevice, vimage
from edgefleet.agent.update_flow import Phase, UpdateJob
from edgefleet.errors import InvalidRequest
from edgefleet.protocol.windows import MaintenancePolicy, Schedule, Window
from edgefleet.releases.image import describe
from tests.test_download_resume import FlakyRangeMirror


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def window(cron: str, zone: str, minutes: int) -> Window:
    return Window.parse({"cron": cron, "timezone": zone, "duration_minutes": minutes})


def test_window_in_the_hour_skipped_in_spring_opens_when_clocks_move_on() -> None:
    # Europe/Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00 UTC). 02:30 does not exist.
    w = window("30 2 * * *", "Europe/Berlin", 60)
    assert not w.is_open(utc(2026, 3, 29, 0, 59))
    assert w.next_open(utc(2026, 3, 29, 0, 0)) == utc(2026, 3, 29, 1, 0)  # 03:00 CEST
    assert w.is_open(utc(2026, 3, 29, 1, 59))
    assert not w.is_open(utc(2026, 3, 29, 2, 0))  # an hour of real time, not of wall clock
    assert w.next_open(utc(2026, 3, 29, 2, 0)) == utc(2026, 3, 30, 0, 30)  # 02:30 CEST the next night


def test_window_in_the_hour_repeated_in_autumn_opens_once_and_lasts_its_real_duration() -> None:
    # Europe/Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00 UTC). 02:30 happens twice.
    w = window("30 2 * * *", "Europe/Berlin", 60)
    assert w.next_open(utc(2026, 10, 25, 0, 0)) == utc(2026, 10, 25, 0, 30)  # the first 02:30 (CEST)
    assert w.is_open(utc(2026, 10, 25, 1, 0))  # 02:00 CET: still inside the first window
    assert w.is_open(utc(2026, 10, 25, 1, 29))
    assert not w.is_open(utc(2026, 10, 25, 1, 30))  # the second 02:30 (CET) opens no window
    assert w.next_open(utc(2026, 10, 25, 1, 30)) == utc(2026, 10, 26, 1, 30)


def test_window_in_new_york_follows_local_time_across_both_changes() -> None:
    w = window("0 1 * * 0", "America/New_York", 180)  # Sundays 01:00 local, three hours
    assert w.next_open(utc(2026, 3, 7, 12, 0)) == utc(2026, 3, 8, 6, 0)  # EST, the spring-forward night
    assert w.is_open(utc(2026, 3, 8, 8, 59))
    assert not w.is_open(utc(2026, 3, 8, 9, 0))
    assert w.next_open(utc(2026, 10, 31, 12, 0)) == utc(2026, 11, 1, 5, 0)  # EDT, the fall-back night
    assert w.is_open(utc(2026, 11, 1, 7, 59))
    assert not w.is_open(utc(2026, 11, 1, 8, 0))


def test_no_windows_means_always_open_and_bad_windows_are_refused() -> None:
    assert Schedule().is_open(utc(2026, 1, 1))
    for bad in ({"cron": "61 * * * *", "duration_minutes": 5}, {"cron": "0 2 * * *", "timezone": "Mars/Olympus",
                 "duration_minutes": 5}, {"cron": "0 2 * * *", "duration_minutes": 0},
                {"cron": "0 2 * * *", "duration_minutes": 60 * 24 * 8}, {"duration_minutes": 5}):
        with pytest.raises(InvalidRequest):
            Window.parse(bad)
    with pytest.raises(InvalidRequest):
        MaintenancePolicy.parse({"reboot": []})


class SteppedClock:
    def __init__(self, now: datetime) -> None:
        self.current = now

    def now(self) -> datetime:
        return self.current

    def monotonic(self) -> float:
        return self.current.timestamp()


def ready_to_install(tmp_path: Path, clock: SteppedClock | TickingClock, policy: MaintenancePolicy,
                     size: int = 65536) -> tuple[UpdateRunner, VirtualDevice]:
    device = VirtualDevice.create(tmp_path / "dev", hardware_id="hw", site="s", os_version="1.0", slot_bytes=size)
    image = tmp_path / "2.0.img"
    image.write_bytes(vimage.build("2.0", 2, size=size))
    saved: list[UpdateJob] = []
    runner = UpdateRunner(device, clock, lambda job, failed: saved.append(job), policy=policy)
    assert runner.offer(Offer("2.0", 2, hashlib.sha256(image.read_bytes()).hexdigest(), size), "1.0", False) is None
    return runner, device


class TickingClock(SteppedClock):
    """A second passes each time the device reads its clock (a download reads it per chunk)."""

    def now(self) -> datetime:
        self.current += timedelta(seconds=1)
        return self.current


def test_a_download_window_closing_mid_download_keeps_a_resumable_partial_and_writes_no_slot(
        tmp_path: Path) -> None:
    policy = MaintenancePolicy.parse({"download": [{"cron": "0 1 * * *", "timezone": "UTC", "duration_minutes": 60}]})
    clock = TickingClock(utc(2026, 11, 27, 1, 59, 45))  # 15 s of the window left
    runner, device = ready_to_install(tmp_path, clock, policy, size=4 << 20)
    image = tmp_path / "2.0.img"
    target = describe(image, "os/2/image.img")
    downloads = tmp_path / "downloads"
    partial = downloads / f"{target.hashes['sha256']}.partial"
    mirror = FlakyRangeMirror(target_url("", target), image.read_bytes(), None)
    stopped = threading.Event()  # the agent's own stop: never set here
    fetched: list[int] = []
    try:
        with httpx.Client(timeout=10) as client:
            def download() -> Path:
                path, count = fetch_target(client, [mirror.url], target, downloads, runner.download_stop(stopped))
                fetched.append(count)
                return path

            assert runner.step(download) is Action.WAIT  # the window closed after a few chunks
            kept = partial.stat().st_size
            assert 0 < kept < target.length
            assert runner.job.phase is Phase.DOWNLOADING  # nothing is installed from a partial
            assert (vimage.read_header(device.slot_image("b")) or {}).get("version") != "2.0"
            assert runner.step(download) is Action.WAIT  # outside the window: no request at all
            assert mirror.ranges == [None]
            clock.current = utc(2026, 11, 28, 1, 0)  # the next night's window
            assert runner.step(download) is Action.CONTINUE
    finally:
        mirror.close()
    assert runner.job.phase is Phase.DOWNLOADED
    assert mirror.ranges == [None, f"bytes={kept}-"]  # resumed where it stopped
    assert fetched == [target.length - kept]  # nothing that had arrived was fetched twice
    assert not partial.exists()


def test_reboot_requested_outside_the_window_waits_for_it(tmp_path: Path) -> None:
    nightly = {"cron": "0 2 * * *", "timezone": "Europe/Berlin", "duration_minutes": 120}
    policy = MaintenancePolicy.parse({"install": [nightly]})
    clock = SteppedClock(utc(2026, 11, 26, 12, 0))  # 13:00 in Berlin
    runner, device = ready_to_install(tmp_path, clock, policy)
    image = tmp_path / "2.0.img"
    assert runner.step(lambda: image) is Action.CONTINUE  # downloading is allowed at any time
    assert runner.step(lambda: image) is Action.WAIT  # installing waits for the window
    assert runner.job.phase is Phase.DOWNLOADED
    clock.current = utc(2026, 11, 27, 1, 0)  # 02:00 in Berlin: the window opens
    while (action := runner.step(lambda: image)) is Action.CONTINUE:
        pass
    assert action is Action.REBOOTING
    assert device.reboot_requested


def test_window_that_closes_during_install_makes_the_reboot_wait_and_force_overrides(tmp_path: Path) -> None:
    policy = MaintenancePolicy.parse({"install": [{"cron": "0 2 * * *", "timezone": "UTC", "duration_minutes": 60}]})
    clock = SteppedClock(utc(2026, 11, 27, 2, 30))
    runner, device = ready_to_install(tmp_path, clock, policy)
    image = tmp_path / "2.0.img"
    runner.step(lambda: image)
    runner.step(lambda: image)
    clock.current = utc(2026, 11, 27, 3, 5)  # the install took past the window
    assert runner.step(lambda: image) is Action.CONTINUE  # installing
    assert runner.step(lambda: image) is Action.WAIT
    assert runner.job.phase is Phase.WAITING_WINDOW
    assert runner.job.reason is not None
    assert "2026-11-28T02:00:00+00:00" in runner.job.reason
    assert not device.reboot_requested
    clock.current += timedelta(hours=5)
    assert runner.step(lambda: image) is Action.WAIT  # still outside: no reboot
    runner.force_reboot = True  # what `edgefleet assign --force-reboot` sets
    assert runner.step(lambda: image) is Action.CONTINUE
    assert runner.step(lambda: image) is Action.REBOOTING
    assert runner.job.history[-1]["reason"] == "forced by the operator"
