"""Delta updates end to end: releases made with the real CLI (content index, pieces and
known-base deltas as signed TUF targets), published to a real control plane, and emulated
devices that pick the way to get the image by themselves. Each ends on the new release
with its slot holding exactly the signed image, and reports what it downloaded."""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from edgefleet.agent.hardware import vimage
from edgefleet.credentials import Role
from tests.ab_world import AbWorld, assign_until, run, sqlite_plane
from tests.cli_helpers import cli
from tests.conftest import Fleet

IMAGE_BYTES = 1 << 20
BLOCK = 4096
VERSIONS = ["2026.08.0", "2026.09.0", "2026.10.0", "2026.11.0", "2026.12.0"]  # N-3 .. N+1


def image_bytes(version: str, counter: int) -> bytes:
    """An emulated OS image whose releases differ as real ones do: most 4 KiB blocks stay,
    some are rewritten, some change a few bytes (a rebuilt library), a few are new."""
    rng = random.Random(0)
    blocks = [bytearray(rng.randbytes(BLOCK)) for _ in range(IMAGE_BYTES // BLOCK - 1)]
    for step in range(counter):
        change = random.Random(step + 1)
        for i in change.sample(range(len(blocks)), 6):
            blocks[i] = bytearray(change.randbytes(BLOCK))
        for i in change.sample(range(len(blocks)), 12):
            for _ in range(8):
                blocks[i][change.randrange(BLOCK)] ^= 0xFF
    header = vimage.build(version, counter, size=BLOCK)
    return header + b"".join(bytes(b) for b in blocks)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    yield from sqlite_plane(tmp_path_factory, "delta-plane")


@pytest.fixture(scope="module")
def world(plane: Fleet, tmp_path_factory: pytest.TempPathFactory) -> AbWorld:
    world = AbWorld(plane, tmp_path_factory.mktemp("delta"))
    for counter, version in enumerate(VERSIONS, start=1):
        image = world.tmp / f"{version}.img"
        image.write_bytes(image_bytes(version, counter))
        world.publish(version, counter, image=image, extra=["--chunking", "blocks", "--deltas", "2"])
    return world


def update(world: AbWorld, name: str, running: str, *, tamper: bool = False) -> dict[str, object]:
    """A device flashed with ``running`` updates to the newest release; returns its record."""
    device = world.device(name, slot_a=world.tmp / f"{running}.img", slot_bytes=IMAGE_BYTES)
    if tamper:  # an implant in the active slot, after the factory flashed it
        slot = device.device.slot_image("a")
        slot.unlink()  # the factory image is shared by hard link: this device gets its own copy
        data = bytearray((world.tmp / f"{running}.img").read_bytes())
        data[200_000:200_010] = b"implant!!!"
        slot.write_bytes(bytes(data))

    async def steps() -> None:
        await assign_until(world, device, VERSIONS[-1], "committed", timeout=60)

    run(world, device, steps, timeout=90)
    record = world.record(device)
    assert record.running_version == VERSIONS[-1]
    slot = device.device.slot_image(device.device.booted())
    assert slot.read_bytes()[:IMAGE_BYTES] == (world.tmp / f"{VERSIONS[-1]}.img").read_bytes()
    assert record.update is not None
    delivery = record.update["delivery"]
    assert isinstance(delivery, dict)
    return delivery


def test_a_device_on_the_previous_release_downloads_only_the_known_base_delta(world: AbWorld) -> None:
    delivery = update(world, "on-n", VERSIONS[-2])
    assert delivery["method"] == "delta"
    assert delivery["image_bytes"] == IMAGE_BYTES
    assert int(str(delivery["downloaded_bytes"])) < IMAGE_BYTES // 10
    assert delivery["saved_bytes"] == IMAGE_BYTES - int(str(delivery["downloaded_bytes"]))


def test_a_device_three_releases_behind_fetches_only_the_pieces_it_lacks(world: AbWorld) -> None:
    delivery = update(world, "on-n-3", VERSIONS[0])
    assert delivery["method"] == "index"
    # 4 releases x (6 new + 12 patched blocks) of incompressible data are missing: 288 KiB at most.
    assert int(str(delivery["downloaded_bytes"])) < 310_000


def test_a_device_whose_active_slot_was_tampered_with_downloads_the_full_image(world: AbWorld) -> None:
    delivery = update(world, "tampered", VERSIONS[-2], tamper=True)
    assert delivery["method"] == "full"
    assert delivery["downloaded_bytes"] == IMAGE_BYTES


def test_the_server_and_release_ls_show_delta_and_index_sizes(world: AbWorld, plane: Fleet) -> None:
    rows = plane.client(role=Role.VIEWER).get("/api/v1/admin/repository/releases").json()["releases"]
    newest = next(r for r in rows if r.get("kind") == "os-image" and r["version"] == VERSIONS[-1])
    sizes = newest["delivery"]
    assert set(sizes["deltas"]) == {VERSIONS[-2], VERSIONS[-3]}
    assert all(0 < n < IMAGE_BYTES // 10 for n in sizes["deltas"].values())
    assert 0 < sizes["index_bytes"] < IMAGE_BYTES // 10
    assert sizes["pieces_bytes"] > 0
    shown = cli("release", "ls", "-w", world.ws)
    assert f"{VERSIONS[-3]}: {sizes['deltas'][VERSIONS[-3]]:,}" in shown


def test_publishing_again_uploads_no_piece_twice(world: AbWorld, plane: Fleet) -> None:
    shown = cli("release", "publish", "-w", world.ws, *world.server)
    assert "0 pieces uploaded" in shown


def test_release_create_builds_no_delta_or_index_when_asked_not_to(world: AbWorld, plane: Fleet) -> None:
    image = world.tmp / "plain.img"
    image.write_bytes(image_bytes("2027.01.0", 6))
    shown = cli("release", "create", "-w", world.ws, "--version", "2027.01.0", "--image", str(image), "--counter",
                "6", "--hardware-id", "hw-x86", "--deltas", "0", "--no-index")
    assert "delta" not in shown
    assert "index" not in shown
