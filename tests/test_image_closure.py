"""What a device image carries of edgefleet: the closure of the modules its units run,
found from their import statements, and nothing of the control plane; the image's cache
key follows those files (and the builder's own), not the whole source tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from edgefleet.image import closure, rootfs

SOURCE = rootfs.source_tree()
OFF_THE_DEVICE = ("server", "hub", "store", "gitops", "rollouts", "cli", "image", "vm", "sim", "demo")


def test_the_device_closure_holds_the_agent_and_its_data_files_and_no_control_plane_code() -> None:
    files = {str(path) for path in closure.closure_files(SOURCE, closure.DEVICE_MODULES)}
    assert {"__init__.py", "agent/__init__.py", "agent/__main__.py", "agent/evidence.py",
            "protocol/__init__.py", "agent/boot/uboot-ab.cmd"} <= files
    assert any(name.startswith("localpage/templates/") for name in files)  # the device's local page
    assert not [name for name in files if name.split("/")[0] in OFF_THE_DEVICE]


def test_the_agent_runs_from_its_closure_alone(tmp_path: Path) -> None:
    files = closure.closure_files(SOURCE, closure.DEVICE_MODULES)
    for relative in files:
        (tmp_path / "edgefleet" / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SOURCE / relative, tmp_path / "edgefleet" / relative)
    modules = [".".join(("edgefleet", *p.with_suffix("").parts)).removesuffix(".__init__")
               for p in files if p.suffix == ".py"]
    script = ("import importlib, sys, edgefleet\n"
              f"assert edgefleet.__file__.startswith({str(tmp_path)!r}), edgefleet.__file__\n"
              f"for name in {modules!r}:\n    importlib.import_module(name)\n"
              "assert not [m for m in sys.modules if m.startswith(('edgefleet.server', 'edgefleet.cli'))]\n")
    environment = {**os.environ, "PYTHONPATH": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script], check=True, env=environment, cwd=tmp_path)
    shown = subprocess.run([sys.executable, "-m", "edgefleet.agent", "--help"], check=True, env=environment,
                           cwd=tmp_path, capture_output=True, text=True)
    assert "--config" in shown.stdout


def _digests(source: Path) -> tuple[str, str]:
    return (closure.files_digest(source, closure.closure_files(source, closure.DEVICE_MODULES)),
            closure.files_digest(source, closure.closure_files(source, closure.BUILDER_MODULES)))


def test_a_server_change_keeps_the_image_key_and_an_agent_or_builder_change_moves_it(tmp_path: Path) -> None:
    source = tmp_path / "edgefleet"
    shutil.copytree(SOURCE, source, ignore=shutil.ignore_patterns("__pycache__"))
    before = _digests(source)
    with open(source / "server" / "app.py", "a") as handle:
        handle.write("\n# a server-only change\n")
    assert _digests(source) == before
    with open(source / "agent" / "__main__.py", "a") as handle:
        handle.write("\n# an agent change\n")
    device, builder = _digests(source)
    assert device != before[0]
    assert builder == before[1]
    with open(source / "image" / "init.sh", "a") as handle:
        handle.write("\n# a change to the initramfs script\n")
    assert _digests(source)[1] != builder
