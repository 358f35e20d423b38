"""The shipped Packer post-processor records a built image as an edgefleet release when run
the way Packer's shell-local post-processor runs it (environment variables, bash)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

from edgefleet.releases.image import release_fields
from edgefleet.releases.keys import Keystore
from edgefleet.releases.workspace import Workspace, load_online_keys
from tests.conftest import start_fleet

SCRIPT = Path(__file__).parent.parent / "examples" / "packer" / "edgefleet-release.sh"


def test_packer_post_processor_records_the_built_image_as_a_release(tmp_path: Path) -> None:
    plane = start_fleet(tmp_path / "plane", None)
    try:
        workspace = Workspace(tmp_path / "ws")
        online = load_online_keys(plane.settings.data_dir / "keys" / "online-keys.json")
        workspace.init(Keystore(tmp_path / "keys"), online, datetime.now(UTC))
    finally:
        plane.close()
    image = tmp_path / "output-2026.12.0" / "edge-2026.12.0.raw"
    image.parent.mkdir()
    image.write_bytes(b"\0" * 65536)
    env = {
        **os.environ,
        "IMAGE": str(image), "VERSION": "2026.12.0", "COUNTER": "12", "HARDWARE_IDS": "hw-x86,hw-x86-v2",
        "EDGEFLEET_RELEASE_WORKSPACE": str(tmp_path / "ws"), "MEASUREMENTS": f"4={'c' * 64} 7={'d' * 64}",
        "EDGEFLEET": f"{sys.executable} -m edgefleet",
    }
    result = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    [release] = [t for t in workspace.releases() if release_fields(t).get("kind") == "os-image"]
    fields = release_fields(release)
    assert (fields["version"], fields["release_counter"]) == ("2026.12.0", 12)
    assert fields["hardware_ids"] == ["hw-x86", "hw-x86-v2"]
    assert fields["measurements"] == {"4": "c" * 64, "7": "d" * 64}
    assert release.length == 65536


def test_packer_post_processor_fails_clearly_without_its_inputs(tmp_path: Path) -> None:
    result = subprocess.run(["bash", str(SCRIPT)], env={"PATH": os.environ["PATH"]}, capture_output=True, text=True,
                            timeout=30, check=False)
    assert result.returncode != 0
    assert "IMAGE is the built image" in result.stderr
