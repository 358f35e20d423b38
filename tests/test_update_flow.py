"""The A/B update machine and its runner on an emulated device, without a server: what a
restart concludes, refusals, and verification of what was written."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edgefleet.agent.abupdate import Action, Offer, UpdateRunner, write_slot
from edgefleet.agent.hardware import VirtualDevice, vimage
from edgefleet.agent.hardware.firmware import power_on
from edgefleet.agent.health import parse_checks, run_checks, verdict
from edgefleet.agent.slotenv import TRIAL_TRIES, SlotEnv
from edgefleet.agent.update_flow import Phase, UpdateJob, after_start
from edgefleet.clock import SystemClock
from edgefleet.errors import InstallError, InvalidRequest, PersistError

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SIZE = 65536


def runner_for(tmp_path: Path, **kwargs: object) -> tuple[UpdateRunner, VirtualDevice, Path, Offer]:
    device = VirtualDevice.create(tmp_path / "dev", hardware_id="hw", site="s", os_version="1.0", slot_bytes=SIZE)
    image = tmp_path / "2.0.img"
    image.write_bytes(vimage.build("2.0", 2, size=SIZE, **kwargs))  # type: ignore[arg-type]
    offer = Offer("2.0", 2, hashlib.sha256(image.read_bytes()).hexdigest(), SIZE)
    return UpdateRunner(device, SystemClock(), lambda job, failed: None), device, image, offer


def drive(runner: UpdateRunner, image: Path) -> Action:
    while (action := runner.step(lambda: image)) is Action.CONTINUE:
        pass
    return action


def test_second_update_while_one_is_uncommitted_is_refused_with_the_reason(tmp_path: Path) -> None:
    runner, device, image, offer = runner_for(tmp_path)
    assert runner.offer(offer, "1.0", False) is None
    assert drive(runner, image) is Action.REBOOTING
    power_on(device)
    runner.resume()
    assert runner.job.phase is Phase.TRIAL_BOOT
    refusal = runner.offer(Offer("3.0", 3, "0" * 64, SIZE), "2.0", False)
    assert refusal is not None
    assert refusal.code == "update_in_progress"
    assert "2.0 is trial_boot and not committed" in refusal.message
    assert runner.job.version == "2.0"


def test_new_assignment_before_the_reboot_supersedes_the_pending_one(tmp_path: Path) -> None:
    runner, _, _, offer = runner_for(tmp_path)
    runner.offer(offer, "1.0", False)
    assert runner.offer(Offer("3.0", 3, "1" * 64, SIZE), "1.0", False) is None
    assert [e["phase"] for e in runner.job.history] == ["downloading", "failed", "downloading"]
    assert runner.job.version == "3.0"
    assert "superseded" in runner.job.history[1]["reason"]


def test_slot_that_does_not_hash_to_the_release_fails_the_install_and_is_never_armed(tmp_path: Path) -> None:
    runner, device, image, offer = runner_for(tmp_path)
    offer.sha256 = "f" * 64
    runner.offer(offer, "1.0", False)
    assert drive(runner, image) is Action.WAIT
    assert runner.job.phase is Phase.FAILED
    assert "does not hash" in (runner.job.reason or "")
    env = SlotEnv.parse(device.bootenv.read())
    assert env.order == ("a",)
    assert env.good == frozenset({"a"})
    assert runner.failed == {"2.0": 0}


def test_write_slot_refuses_images_larger_than_the_slot_or_shorter_than_signed(tmp_path: Path) -> None:
    image, slot = tmp_path / "img", tmp_path / "slot"
    image.write_bytes(b"x" * 100)
    slot.write_bytes(b"\0" * 50)
    with pytest.raises(InstallError, match="does not fit"):
        write_slot(image, slot, 100, hashlib.sha256(b"x" * 100).hexdigest(), 50)
    slot.write_bytes(b"\0" * 200)
    with pytest.raises(InstallError, match="release says 120"):
        write_slot(image, slot, 120, "0" * 64, 200)


def trial_job(**changes: object) -> UpdateJob:
    job = UpdateJob(phase=Phase.HEALTH_CHECKING, version="2.0", from_slot="a", to_slot="b", boot_id="boot-1",
                    trial_deadline=(NOW + timedelta(minutes=5)).isoformat())
    return UpdateJob(**{**job.__dict__, **changes})  # type: ignore[arg-type]


ARMED = SlotEnv.factory().mark_bad("b").start_trial("b")


def test_restart_conclusions_for_every_situation_a_power_cut_can_leave() -> None:
    rebooting = trial_job(phase=Phase.REBOOTING)
    tried = ARMED.select()[1]
    assert after_start(rebooting, "b", "boot-2", tried, NOW).phase is Phase.TRIAL_BOOT
    assert after_start(rebooting, "a", "boot-1", ARMED, NOW).phase is None  # armed, reboot pending
    used_up = ARMED
    for _ in range(TRIAL_TRIES):
        assert used_up.select()[0] == "b"
        used_up = used_up.select()[1]
    assert used_up.select()[0] == "a"  # every try used: the firmware falls back
    exhausted = after_start(rebooting, "a", "boot-3", used_up, NOW)
    assert exhausted.phase is Phase.ROLLED_BACK
    assert exhausted.failed_counts
    assert after_start(rebooting, "a", "boot-1", SlotEnv.factory(), NOW).rearm  # cut before arming
    again = after_start(trial_job(), "b", "boot-2", tried.select()[1], NOW)  # cut during the trial: b again
    assert again.phase is Phase.TRIAL_BOOT
    assert "again" in str(again.reason)
    fell_back = after_start(trial_job(), "a", "boot-4", used_up, NOW)  # every trial boot cut short
    assert fell_back.phase is Phase.ROLLED_BACK
    assert fell_back.failed_counts
    assert after_start(trial_job(), "b", "boot-1", tried, NOW).phase is None  # the agent alone restarted
    late = after_start(trial_job(), "b", "boot-1", tried, NOW + timedelta(minutes=6))
    assert late.phase is Phase.ROLLING_BACK
    assert late.reason == "trial deadline passed"
    assert after_start(trial_job(), "b", "boot-2", tried.commit("b"), NOW).phase is Phase.COMMITTED
    rolling = trial_job(phase=Phase.ROLLING_BACK, reason="health")
    assert after_start(rolling, "a", "boot-2", SlotEnv.factory(), NOW).phase is Phase.ROLLED_BACK
    assert after_start(rolling, "b", "boot-1", SlotEnv.factory(), NOW).phase is None


def test_transitions_outside_the_machine_are_refused_and_history_is_bounded() -> None:
    with pytest.raises(PersistError, match="cannot go from idle to committed"):
        UpdateJob().to(Phase.COMMITTED, NOW)
    job = UpdateJob()
    for _ in range(40):
        job = job.to(Phase.DOWNLOADING, NOW).to(Phase.FAILED, NOW)
    assert len(job.history) == 32
    assert job.history[-1]["seq"] == 80
    assert UpdateJob.load(job.dump()) == job
    with pytest.raises(PersistError):
        UpdateJob.load({"phase": "exploded"})


@pytest.fixture
def endpoint() -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/healthz" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_health_checks_of_every_kind_with_required_wanted_and_hung(endpoint: str) -> None:
    checks = parse_checks([
        {"name": "ok", "kind": "command", "command": ["true"]},
        {"name": "http-ok", "kind": "http", "url": f"{endpoint}/healthz", "timeout_seconds": 5},
        {"name": "http-503", "kind": "http", "url": f"{endpoint}/broken", "required": False},
        {"name": "hung", "kind": "command", "command": ["sleep", "30"], "timeout_seconds": 0.5},
        {"name": "unit", "kind": "systemd", "unit": "edgefleet-no-such.service", "required": False},
    ])
    results = {r.name: r for r in run_checks(checks)}
    assert results["ok"].passed
    assert results["http-ok"].passed
    assert results["http-503"].detail == "HTTP 503"
    assert not results["hung"].passed
    assert results["hung"].detail.startswith("hung")
    assert results["hung"].seconds < 5
    assert not results["unit"].passed  # no systemd here, or no such unit: either way not active
    assert verdict(results.values()) == "required health check failed: hung (hung: still running after 0.5s, killed)"


def test_malformed_health_checks_are_refused_by_name() -> None:
    with pytest.raises(InvalidRequest, match="'web'"):
        parse_checks([{"name": "web", "kind": "http"}])
    with pytest.raises(InvalidRequest):
        parse_checks([{"name": "x", "kind": "workload", "command": ["true"]}])


def test_a_download_that_fills_the_disk_fails_the_job_and_the_next_offer_starts_again(tmp_path: Path) -> None:
    runner, device, image, offer = runner_for(tmp_path)
    runner.offer(offer, "1.0", False)

    def full_disk() -> Path:
        raise PersistError("cannot write downloads/image.assembling: No space left on device")

    assert runner.step(full_disk) is Action.WAIT
    assert runner.job.phase is Phase.FAILED
    assert runner.job.reason is not None
    assert "No space left on device" in runner.job.reason
    assert "2.0" not in runner.failed  # not the release's fault: it is tried again
    assert device.booted() == "a"
    assert runner.offer(offer, "1.0", False) is None
    assert drive(runner, image) is Action.REBOOTING
