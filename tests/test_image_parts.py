"""The image builder's pure parts, without building an image: the spec, the stage cache,
symlinks resolved inside the image's root, and the GPT measurement."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edgefleet.errors import BuildError, ConfigError
from edgefleet.image import cache, disk, predict
from edgefleet.image.initramfs import inside
from edgefleet.image.spec import load_spec
from tests.conftest import need


def test_a_spec_with_a_bad_package_name_or_builder_owned_cmdline_is_refused(tmp_path: Path) -> None:
    spec = tmp_path / "edge.toml"
    spec.write_text('version = "1"\npackages = ["ok-package", "rm -rf /"]\n')
    with pytest.raises(ConfigError, match="packages"):
        load_spec(spec)
    spec.write_text('version = "1"\nkernel_cmdline = "console=ttyS0 edgefleet.slot=b"\n')
    with pytest.raises(ConfigError, match="kernel_cmdline"):
        load_spec(spec)
    spec.write_text('version = "1"\nunknown = 1\n')
    with pytest.raises(ConfigError, match="unknown"):
        load_spec(spec)


def test_a_stage_that_fails_leaves_nothing_and_one_that_finishes_is_found_again(tmp_path: Path) -> None:
    def broken(work: Path) -> None:
        (work / "half").write_text("half-built")
        raise BuildError("tool failed")

    with pytest.raises(BuildError):
        cache.cached("image", "k1", broken, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [".lock"]  # no half-built entry, no temporary left
    built = []

    def good(work: Path) -> None:
        built.append(work)
        (work / "disk.raw").write_bytes(b"disk")

    first, hit = cache.cached("image", "k1", good, tmp_path)
    again, hit_again = cache.cached("image", "k1", good, tmp_path)
    assert (hit, hit_again, len(built)) == (False, True, 1)
    assert first == again
    assert (first / "disk.raw").read_bytes() == b"disk"


def test_the_cache_keeps_only_the_most_recent_entries_of_a_stage(tmp_path: Path) -> None:
    for n in range(cache.KEEP + 2):
        cache.cached("image", f"k{n}", lambda work: None, tmp_path)
    kept = sorted(p.name for p in tmp_path.glob("image-*"))
    assert len(kept) == cache.KEEP
    assert "image-k0" not in kept


def test_an_absolute_symlink_in_the_image_resolves_inside_the_image(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "usr/lib/x86_64-linux-gnu").mkdir(parents=True)
    (root / "usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2").write_bytes(b"image loader")
    (root / "lib64").symlink_to("usr/lib64")
    (root / "usr/lib64").mkdir()
    (root / "usr/lib64/ld-linux-x86-64.so.2").symlink_to("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    (root / "lib").symlink_to("usr/lib")
    resolved = inside(root, root / "lib64/ld-linux-x86-64.so.2")
    assert resolved.read_bytes() == b"image loader"  # never the build host's /lib
    (root / "escape").symlink_to("../../../../etc/passwd")
    assert inside(root, root / "escape").is_relative_to(root)


def test_the_gpt_measurement_covers_the_header_and_the_used_entries(tmp_path: Path) -> None:
    if subprocess.run(["which", "sgdisk"], capture_output=True, check=False).returncode != 0:
        need("sgdisk", "Debian's gdisk is not installed")
    out = tmp_path / "disk.raw"
    disk.assemble(out, "edgefleet-test", disk.layout(34, 2, 2), {})
    data = predict.gpt_data(out)
    assert data.startswith(b"EFI PART")
    header_size = int.from_bytes(data[12:16], "little")
    assert int.from_bytes(data[header_size:header_size + 8], "little") == 4  # esp, root-a, root-b, data
    assert len(data) == header_size + 8 + 4 * 128
    again = tmp_path / "again.raw"
    disk.assemble(again, "edgefleet-test", disk.layout(34, 2, 2), {})
    assert predict.gpt_data(again) == data  # GUIDs follow from the product name
