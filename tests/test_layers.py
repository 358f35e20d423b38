"""The package layers hold: the hub and the agent load no control-plane code, the shared
HTTP layer and the wire contract depend on none of their users (the contracts are in
pyproject.toml, checked by import-linter), and a command loads only what it runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_in_pyproject_hold() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"], cwd=ROOT,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def imported_modules(*argv: str) -> set[str]:
    """The modules ``python -X importtime -m edgefleet ARGV`` imports."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "edgefleet", *argv], capture_output=True,
                            text=True, check=True)
    return {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")
            and "|" in line}


def test_the_hub_command_loads_neither_the_control_plane_nor_sqlalchemy() -> None:
    modules = imported_modules("hub", "--help")
    assert "edgefleet.hub.loop" in modules  # the hub command was loaded
    assert not {m for m in modules if m.split(".")[0] in ("sqlalchemy", "alembic")}
    assert not {m for m in modules if m.startswith(("edgefleet.server", "edgefleet.store", "edgefleet.agent"))}


def test_the_version_flag_loads_no_subcommand() -> None:
    modules = imported_modules("--version")
    assert "edgefleet.cli.app" in modules
    assert not {m for m in modules if m.startswith(("edgefleet.cli.common", "edgefleet.server", "edgefleet.hub",
                                                    "edgefleet.agent", "edgefleet.demo", "sqlalchemy"))}
