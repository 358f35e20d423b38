"""Power-loss safety of the A/B update: hundreds of SIGKILLs at random instants of the
whole flow (download, slot write, every bootloader environment write, the firmware's own
try-count write, the trial, commit and rollback), each either a power cut (the device
boots again) or a crash of the agent alone. After every cut the device would boot a slot
that is good (or the armed trial), never with both slots bad; every episode ends committed
or rolled back; torn environment copies are observed and survived."""

from __future__ import annotations

import hashlib
import multiprocessing
import random
import time
from pathlib import Path

import pytest

from edgefleet.agent.hardware import VirtualDevice, vimage
from edgefleet.agent.hardware.ubootenv import UBootEnvFile, decode
from edgefleet.agent.slotenv import SlotEnv
from edgefleet.agent.state import StateDir
from tests.power_cut_device import live

SIZE = 512 * 1024
CUTS = 200  # per bootloader
SECTOR_DELAY = 0.0005  # emulated flash: a 16 KiB U-Boot copy takes 16 ms to program
FAILING = [{"name": "app", "kind": "command", "command": ["false"], "timeout_seconds": 5}]


def images(tmp: Path, episode: int, rng: random.Random) -> tuple[str, Path, str]:
    kind = rng.choices(["good", "unhealthy", "panics"], weights=[6, 2, 1])[0]
    version = f"ep{episode:03d}-{kind}"
    path = tmp / f"{version}.img"
    path.write_bytes(vimage.build(version, episode + 2, size=SIZE, boots=kind != "panics",
                                  health_checks=FAILING if kind == "unhealthy" else (),
                                  filler=rng.randbytes(64)))
    return version, path, kind


def torn_copies(device: VirtualDevice) -> int:
    """Environment copies a cut left half-written (bad CRC, or a GRUB temp file)."""
    if isinstance(device.bootenv, UBootEnvFile):
        raw = (device.path / "uboot.env").read_bytes()
        return sum(decode(raw[i:i + 0x4000], redundant=True) is None for i in (0, 0x4000))
    return len(list(device.path.glob(".grubenv.*.tmp")))


def check_bootable(device: VirtualDevice, digests: dict[str, str]) -> None:
    """What the firmware would boot now must be a good slot holding an intact release, or
    the armed trial slot holding the verified new one."""
    env = SlotEnv.parse(device.bootenv.read())
    assert env.has_bootable_good_slot(), f"no good slot in the order: {env}"
    slot, _ = env.select()
    data = device.slot_image(slot).read_bytes()
    header = vimage.parse_header(data[:4096]) or {}
    size = header.get("size", len(data))
    assert hashlib.sha256(data[:size]).hexdigest() == digests.get(str(header.get("version"))), \
        f"slot {slot} would boot but does not hold an intact release ({env})"


def run_child(ctx: multiprocessing.context.BaseContext, device: VirtualDevice, version: str, image: Path,
              counter: int, power_on_first: bool, kill_after: float | None,
              aim: random.Random | None = None) -> tuple[bool, bool]:
    """Returns (finished, whether it ended inside the emulated firmware). With ``aim``, the
    kill lands inside the first bootloader environment write that starts."""
    receive, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=live, args=(str(device.path), str(image), version, counter, power_on_first, send,
                                           SECTOR_DELAY))
    child.start()
    send.close()
    last, in_firmware = "start", power_on_first
    deadline = time.monotonic() + (kill_after if kill_after is not None else 60)
    while time.monotonic() < deadline and child.is_alive():
        if receive.poll(min(0.002, max(deadline - time.monotonic(), 0))):
            try:
                last = receive.recv()
            except EOFError:
                break
            in_firmware = (in_firmware or last == "firmware") and last != "os"
            if last == "env" and aim is not None:
                deadline = time.monotonic() + aim.uniform(0, SECTOR_DELAY * 32)
                aim = None
    if child.is_alive():
        child.kill()
    child.join(10)
    while receive.poll():
        try:
            last = receive.recv()
        except EOFError:
            break
        in_firmware = (in_firmware or last == "firmware") and last != "os"
    receive.close()
    assert kill_after is not None or child.exitcode == 0, f"device process failed ({child.exitcode})"
    return last == "done", in_firmware


@pytest.mark.parametrize("bootloader", ["uboot", "grub"])
def test_update_survives_random_power_cuts_and_agent_kills(tmp_path: Path, bootloader: str) -> None:
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tests.power_cut_device"])
    rng = random.Random(2026 if bootloader == "uboot" else 11)
    device = VirtualDevice.create(tmp_path / "device", hardware_id="hw", site="s", os_version="factory",
                                  slot_bytes=SIZE, bootloader=bootloader)  # type: ignore[arg-type]
    digests = {"factory": hashlib.sha256(device.slot_image("a").read_bytes()).hexdigest()}
    cuts = power_cuts = torn = episodes = 0
    outcomes: dict[str, int] = {}
    typical = 0.5
    while cuts < CUTS:
        episodes += 1
        version, image, kind = images(tmp_path, episodes, rng)
        digests[version] = hashlib.sha256(image.read_bytes()).hexdigest()
        power_on_first = False
        for _ in range(rng.choice([0, 1, 2, 3])):
            started = time.monotonic()
            aim = rng if rng.random() < 0.4 else None
            finished, in_firmware = run_child(ctx, device, version, image, episodes + 2, power_on_first,
                                       rng.uniform(0, typical * (3 if aim else 1)), aim)
            if finished:
                break
            cuts += 1
            # A kill while the firmware runs is a power cut whatever we chose; otherwise choose.
            power_on_first = in_firmware or rng.random() < 0.6
            power_cuts += power_on_first
            torn += torn_copies(device)
            check_bootable(device, digests)
            typical = max(typical * 0.9 + (time.monotonic() - started) * 0.1, 0.05)
        started = time.monotonic()
        finished, _ = run_child(ctx, device, version, image, episodes + 2, power_on_first, None)
        typical = typical * 0.8 + (time.monotonic() - started) * 0.2
        assert finished
        check_bootable(device, digests)
        job = StateDir(device.agent_dir).load().update
        outcome = job["phase"]
        outcomes[f"{kind}:{outcome}"] = outcomes.get(f"{kind}:{outcome}", 0) + 1
        assert outcome in ("committed", "rolled_back"), job
        if outcome == "committed":
            assert kind == "good"
            assert device.os_version() == version
            assert device.booted() == job["to_slot"]
        else:
            assert device.booted() == job["from_slot"]
            assert device.os_version() != version
    print(f"{bootloader}: {cuts} cuts ({power_cuts} power cuts) over {episodes} episodes, {torn} torn env copies, "
          f"outcomes {outcomes}")
    assert outcomes.get("good:committed", 0) > 0
    assert torn > 0  # cuts did land inside environment writes
    assert not any(k.startswith(("unhealthy:committed", "panics:committed")) for k in outcomes)
