"""Packaging: the systemd units pass `systemd-analyze verify` with no finding, and each
unit's command line is one our CLI accepts."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import need

UNITS = sorted((Path(__file__).resolve().parent.parent / "deploy" / "systemd").glob("*.service"))


@pytest.mark.parametrize("unit", UNITS, ids=[u.name for u in UNITS])
def test_the_systemd_unit_verifies_cleanly_and_its_command_line_is_ours(unit: Path, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        need("systemd-analyze", "Debian's systemd is not installed")
    edgefleet = Path(sys.executable).parent / "edgefleet"
    local = tmp_path / unit.name
    local.write_text(unit.read_text().replace("/usr/local/bin/edgefleet", str(edgefleet)))
    result = subprocess.run(["systemd-analyze", "verify", str(local)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).strip() == ""  # not even a warning
    command = next(line for line in local.read_text().splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(command.removeprefix("ExecStart="))
    helped = subprocess.run([*argv, "--help"], capture_output=True, text=True)
    assert helped.returncode == 0, helped.stdout + helped.stderr  # every flag the unit passes exists
