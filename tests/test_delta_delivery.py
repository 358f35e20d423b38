"""The device's choice of how to get an image, against a real HTTP mirror (Python's own
file server: it ignores Range requests, like many dumb mirrors): corrupt, truncated or
wrong deltas, indexes and pieces are refused and the next way is taken, an interrupted
attempt resumes, a full disk is refused, and nothing half-made is ever left behind."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from tuf.api.metadata import TargetFile

from edgefleet.agent.delivery import Deliverer, Running
from edgefleet.agent.download import target_url
from edgefleet.delta.assemble import IN_FLIGHT
from edgefleet.delta.index import piece_path
from edgefleet.errors import PersistError, TransportError
from edgefleet.releases.deltas import Base, build_delta_targets
from edgefleet.releases.image import describe
from tests.conftest import need
from tests.releases_world import StaticMirror

BLOCK = 4096


def _scratch(tmp: Path) -> Path:
    """Where build_delta_targets writes its files (the release workspace passes a temporary directory)."""
    work = tmp / "scratch"
    work.mkdir(exist_ok=True)
    return work


def images(tmp: Path) -> tuple[Path, Path]:
    """v1 and v2 of a 2 MiB block-aligned image: some blocks rewritten, some patched."""
    rng = random.Random(7)
    blocks = [bytearray(rng.randbytes(BLOCK)) for _ in range(512)]
    v1 = tmp / "v1.img"
    v1.write_bytes(b"".join(blocks))
    for i in rng.sample(range(512), 20):
        blocks[i] = bytearray(rng.randbytes(BLOCK))
    for i in rng.sample(range(512), 30):
        blocks[i][rng.randrange(BLOCK)] ^= 0x5A
    v2 = tmp / "v2.img"
    v2.write_bytes(b"".join(blocks))
    return v1, v2


@dataclass
class Release:
    image: TargetFile
    base: TargetFile
    published: list[TargetFile]
    root: Path  # the mirror's document root
    slot: Path  # the device's active slot (v1)
    v2: bytes

    def file(self, kind: str) -> Path:
        target = next(t for t in self.published if t.custom["edgefleet"]["kind"] == kind)  # type: ignore[index]
        return Path(target_url(str(self.root), target))


@pytest.fixture
def release(tmp_path: Path) -> Release:
    v1, v2 = images(tmp_path)
    root = tmp_path / "mirror"
    image = describe(v2, "os/v2/img", {"edgefleet": {"kind": "os-image", "version": "v2"}})
    base = describe(v1, "os/v1/img", {"edgefleet": {"kind": "os-image", "version": "v1"}})
    made = build_delta_targets(v2, image, "v2", [Base("v1", v1)], root / "pieces", _scratch(tmp_path),
                               chunking="blocks")
    published = [image, base]
    for path, target in [*made, (v2, image)]:
        destination = Path(target_url(str(root), target))
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)
        if target is not image:
            published.append(target)
    slot = tmp_path / "slot-a"
    shutil.copyfile(v1, slot)
    return Release(image, base, published, root, slot, v2.read_bytes())


@pytest.fixture
def mirror(release: Release) -> Iterator[str]:
    served = StaticMirror(release.root)  # Python's file server: no Range requests
    yield served.url
    served.close()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as http:
        yield http


def deliver(release: Release, mirror: str, client: httpx.Client, downloads: Path, **kwargs: object) -> tuple[
        str, int]:
    got = Deliverer(client, [mirror], downloads).deliver(release.image, release.published,
                                                         Running(release.slot, release.base), **kwargs)  # type: ignore[arg-type]
    assert got.path.read_bytes() == release.v2
    return got.method, got.downloaded_bytes


def leftovers(downloads: Path) -> list[str]:
    return sorted(p.name for p in downloads.rglob("*") if p.is_file() and len(p.name) != 64)


def test_the_known_base_delta_is_chosen_and_the_active_slot_is_only_read(release: Release, mirror: str,
                                                                         client: httpx.Client, tmp_path: Path) -> None:
    before = release.slot.read_bytes()
    method, downloaded = deliver(release, mirror, client, tmp_path / "dl")
    assert method == "delta"
    assert downloaded < len(release.v2) // 10
    assert release.slot.read_bytes() == before
    assert leftovers(tmp_path / "dl") == []


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_a_damaged_delta_is_refused_and_the_index_rebuilds_the_image(damage: str, release: Release, mirror: str,
                                                                     client: httpx.Client, tmp_path: Path) -> None:
    delta = release.file("os-delta")
    data = bytearray(delta.read_bytes())
    if damage == "corrupt":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[len(data) // 2:]
    delta.write_bytes(bytes(data))
    method, _ = deliver(release, mirror, client, tmp_path / "dl")
    assert method == "index"
    assert leftovers(tmp_path / "dl") == []


def test_a_signed_delta_made_from_another_base_is_refused_and_the_index_rebuilds_the_image(
        release: Release, mirror: str, client: httpx.Client, tmp_path: Path) -> None:
    other = tmp_path / "other.img"  # like v1, but not v1: the delta copies bytes v1 does not have
    data = bytearray(release.slot.read_bytes())
    for offset in range(0, len(data), 8 * BLOCK):
        data[offset:offset + 64] = bytes(64)
    other.write_bytes(bytes(data))
    wrong = build_delta_targets(Path(target_url(str(release.root), release.image)), release.image, "v2",
                                [Base("v1", other)], tmp_path / "unused", _scratch(tmp_path), index=False)[0]
    # Signed as if it were from v1 (a release tool bug): only the rebuilt image's hash can tell.
    fields = dict(wrong[1].custom["edgefleet"])  # type: ignore[index]
    fields["base_sha256"] = release.base.hashes["sha256"]
    forged = describe(wrong[0], wrong[1].path, {"edgefleet": fields})
    Path(target_url(str(release.root), forged)).write_bytes(wrong[0].read_bytes())
    release.published = [t for t in release.published if t.custom["edgefleet"]["kind"] != "os-delta"]  # type: ignore[index]
    release.published.append(forged)
    method, _ = deliver(release, mirror, client, tmp_path / "dl")
    assert method == "index"
    assert leftovers(tmp_path / "dl") == []


@pytest.mark.parametrize("damage", ["corrupt", "truncated"])
def test_a_damaged_index_is_refused_and_the_full_image_is_downloaded(damage: str, release: Release, mirror: str,
                                                                     client: httpx.Client, tmp_path: Path) -> None:
    release.published = [t for t in release.published if t.custom["edgefleet"]["kind"] != "os-delta"]  # type: ignore[index]
    index = release.file("os-index")
    data = index.read_bytes()
    index.write_bytes(data[:len(data) // 2] if damage == "truncated" else data[:40] + b"\xff" + data[41:])
    method, downloaded = deliver(release, mirror, client, tmp_path / "dl")
    assert (method, downloaded) == ("full", len(release.v2))
    assert leftovers(tmp_path / "dl") == []


@pytest.mark.parametrize("damage", ["swapped", "garbage", "missing"])
def test_a_bad_piece_is_refused_and_the_full_image_is_downloaded(damage: str, release: Release, mirror: str,
                                                                 client: httpx.Client, tmp_path: Path) -> None:
    release.published = [t for t in release.published if t.custom["edgefleet"]["kind"] != "os-delta"]  # type: ignore[index]
    pieces = sorted(p for p in (release.root / "pieces").rglob("*") if p.is_file())
    # Make every piece bad: the device needs only some, and each must be refused.
    contents = [p.read_bytes() for p in pieces]
    for piece, other in zip(pieces, [*contents[1:], contents[0]], strict=True):
        if damage == "missing":
            piece.unlink()
        elif damage == "garbage":
            piece.write_bytes(b"\x28\xb5\x2f\xfd" + os.urandom(100))
        else:  # a valid piece, under another piece's name
            piece.write_bytes(other)
    method, _ = deliver(release, mirror, client, tmp_path / "dl")
    assert method == "full"
    assert leftovers(tmp_path / "dl") == []


def test_a_mirror_without_range_requests_restarts_an_interrupted_download(release: Release, mirror: str,
                                                                         client: httpx.Client, tmp_path: Path) -> None:
    delta = next(t for t in release.published if t.custom["edgefleet"]["kind"] == "os-delta")  # type: ignore[index]
    kept = tmp_path / "dl" / "deltas" / f"{delta.hashes['sha256']}.partial"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(release.file("os-delta").read_bytes()[:delta.length // 2])
    method, downloaded = deliver(release, mirror, client, tmp_path / "dl")
    assert (method, downloaded) == ("delta", delta.length)
    assert leftovers(tmp_path / "dl") == []


def test_an_interrupted_assembly_resumes_without_fetching_again_what_it_wrote(
        release: Release, mirror: str, tmp_path: Path) -> None:
    release.published = [t for t in release.published if t.custom["edgefleet"]["kind"] != "os-delta"]  # type: ignore[index]
    stop = threading.Event()
    fetched: list[str] = []
    cut_after = 10**9

    class Cutting(httpx.Client):
        def stream(self, method: str, url: httpx.URL | str, **kwargs: object):  # type: ignore[no-untyped-def,override]
            if "/pieces/" in str(url):
                fetched.append(str(url))
                if len(fetched) == cut_after:
                    stop.set()  # the link goes down
            return super().stream(method, url, **kwargs)  # type: ignore[arg-type]

    def attempt(downloads: Path) -> str:
        with Cutting(timeout=10) as cutting:
            got = Deliverer(cutting, [mirror], downloads).deliver(release.image, release.published,
                                                                  Running(release.slot, release.base), stop)
        assert got.path.read_bytes() == release.v2
        return got.method

    assert attempt(tmp_path / "uncut") == "index"
    needed = len(fetched)
    fetched.clear()
    cut_after = half = needed // 2
    with pytest.raises(TransportError, match="interrupted"):
        attempt(tmp_path / "dl")
    assert (tmp_path / "dl" / f"{release.image.hashes['sha256']}.assembling").exists()
    stop.clear()
    fetched.clear()
    cut_after = 10**9
    assert attempt(tmp_path / "dl") == "index"
    assert len(fetched) <= needed - half + IN_FLIGHT  # only pieces that were in flight come again
    assert leftovers(tmp_path / "dl") == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real filesystem with 1 MiB free: tmpfs, mounted for the test (needs root)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        need("root", "mounting a small tmpfs needs root")
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
    yield where
    subprocess.run(["umount", str(where)], check=False)


def test_a_full_disk_is_refused_leaves_nothing_behind_and_a_later_attempt_succeeds(
        release: Release, mirror: str, client: httpx.Client, small_disk: Path, tmp_path: Path) -> None:
    release.published = [t for t in release.published if t.custom["edgefleet"]["kind"] != "os-delta"]  # type: ignore[index]
    before = release.slot.read_bytes()
    with pytest.raises(PersistError):
        deliver(release, mirror, client, small_disk / "dl")
    assert leftovers(small_disk / "dl") == []
    assert release.slot.read_bytes() == before
    method, _ = deliver(release, mirror, client, tmp_path / "roomy")
    assert method == "index"


def test_pieces_are_named_by_their_content_so_two_releases_share_them(release: Release, tmp_path: Path) -> None:
    again = build_delta_targets(Path(target_url(str(release.root), release.image)), release.image, "v2", [],
                                release.root / "pieces", _scratch(tmp_path), chunking="blocks")
    assert len(again) == 1
    count = sum(1 for p in (release.root / "pieces").rglob("*") if p.is_file())
    index = release.file("os-index")
    assert again[0][0].read_bytes() == index.read_bytes()
    assert count == len({p.name for p in (release.root / "pieces").rglob("*") if p.is_file()})
    assert piece_path(release.root / "pieces", "raw", "00" * 16).parent.name == "00"
