"""What an operator sees when a command fails: one line with the cause (the file, the field,
the unknown id as not found) and an exit code, never a traceback (``--debug`` shows it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.credentials import Role
from tests.cli_helpers import server_args
from tests.conftest import Fleet


def edgefleet(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The installed command as a user runs it (through ``main``, which owns the error path)."""
    return subprocess.run([sys.executable, "-m", "edgefleet", *args], capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})}, timeout=120)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_an_unknown_rollout_id_is_not_found_in_one_line(fleet: Fleet) -> None:
    shown = edgefleet("rollout", "status", "ro-nope", *server_args(fleet))
    assert shown.returncode == 1
    line = one_line(shown)
    assert "404" in line
    assert "ro-nope" in line


def test_a_refused_field_is_named_in_the_one_line(fleet: Fleet) -> None:
    shown = edgefleet("rollout", "start", "--release", "not a release!", "-l", "fleet=x", *server_args(fleet))
    assert shown.returncode == 1
    line = one_line(shown)
    assert "422" in line
    assert "body.release" in line  # the field, with the server's reason


def test_a_malformed_wave_is_a_usage_error_naming_the_option() -> None:
    shown = edgefleet("rollout", "start", "--release", "2026.12.0", "--wave", "banana", "--server",
                      "https://127.0.0.1:9", "--token", "x", "--ca-file", "/dev/null")
    assert shown.returncode == 2
    assert "Traceback" not in shown.stderr
    assert "--wave" in shown.stderr
    assert "banana" in shown.stderr


@pytest.mark.parametrize("command", [["devices", "ls"], ["rollout", "ls"], ["tokens", "list"]])
def test_a_missing_ca_file_is_one_line_naming_the_path(command: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ca.pem"
    shown = edgefleet(*command, "--server", "https://127.0.0.1:9", "--token", "x", "--ca-file", str(missing))
    assert shown.returncode == 2
    assert str(missing) in one_line(shown)


def test_a_rollout_spec_that_is_not_json_is_one_line_naming_the_file(tmp_path: Path) -> None:
    spec = tmp_path / "rollout.json"
    spec.write_text("{not json")
    shown = edgefleet("rollout", "start", "--release", "x", "--spec", str(spec), "--server", "https://127.0.0.1:9",
                      "--token", "x", "--ca-file", "/dev/null")
    assert shown.returncode == 2
    assert str(spec) in one_line(shown)


def test_the_rollout_list_shows_one_line_per_rollout(fleet: Fleet) -> None:
    shown = edgefleet("rollout", "ls", *server_args(fleet))
    assert shown.returncode == 0, shown.stderr
    assert "release" in shown.stdout


def test_login_keeps_a_context_that_later_commands_use_and_logout_forgets_it(fleet: Fleet, tmp_path: Path) -> None:
    contexts = tmp_path / "config" / "contexts.json"
    bare = {k: v for k, v in os.environ.items() if k not in ("EDGEFLEET_SERVER_URL", "EDGEFLEET_ADMIN_TOKEN",
                                                             "EDGEFLEET_CA_FILE")}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "edgefleet", *args], capture_output=True, text=True,
                              check=False, env={**bare, "EDGEFLEET_CONTEXTS": str(contexts)}, timeout=120)

    ca = str(fleet.settings.pki.ca_cert)
    refused = run("login", fleet.url, "--ca-file", ca, "--token", "efa_" + "0" * 16 + "_" + "A" * 43)
    assert refused.returncode == 1
    assert "401" in one_line(refused)
    assert not contexts.exists()  # nothing kept for a token the server refused
    assert run("login", fleet.url, "--ca-file", ca, "--token", fleet.tokens[Role.VIEWER],
               "--name", "lab").returncode == 0
    assert contexts.stat().st_mode & 0o777 == 0o600  # it holds a token
    listed = run("devices", "ls")  # no --server, --token or --ca-file: the current context
    assert listed.returncode == 0, listed.stderr
    assert "devices" in listed.stdout
    assert "* " in run("contexts", "ls").stdout
    assert run("logout").returncode == 0
    assert run("devices", "ls").returncode == 2  # the flags are needed again
